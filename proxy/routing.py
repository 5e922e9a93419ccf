"""Resolve the `model` an app asked for into a route and a served model (pure)."""
from __future__ import annotations

from proxy.errors import model_not_found
from proxy.snapshot import RouteInfo, Snapshot


def route_resolve(requested: str, snapshot: Snapshot) -> RouteInfo:
    """A route alias wins; otherwise a model that some backend serves is its own route."""
    route = snapshot.routes.get(requested)
    if route is not None and route.model in snapshot.backends_by_model:
        return route
    if requested in snapshot.backends_by_model:
        return RouteInfo(name=requested, model=requested, baseline_model=requested)
    raise model_not_found(requested)


def models_listed(snapshot: Snapshot) -> list[str]:
    """What /v1/models shows: every routable alias, then every served model."""
    names = [name for name, r in snapshot.routes.items() if r.model in snapshot.backends_by_model]
    names += [m for m in snapshot.backends_by_model if m not in snapshot.routes]
    return names
