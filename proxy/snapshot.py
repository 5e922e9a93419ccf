"""The gateway's configuration as an immutable in-memory snapshot.

The request path reads only this snapshot, never the database. `snapshot_reload()` builds a
new one from the tables and swaps it in atomically; it runs at start-up, after an admin edit
in this process (signals) and periodically in the background for edits made elsewhere.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Mapping

logger = logging.getLogger("sluice.snapshot")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int | None
    name: str


@dataclass(frozen=True, slots=True)
class RouteInfo:
    name: str
    model: str
    baseline_model: str


@dataclass(frozen=True, slots=True)
class BackendInfo:
    id: int
    name: str
    base_url: str
    model: str
    weight: int
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class PriceInfo:
    input_usd_per_1m: Decimal
    output_usd_per_1m: Decimal


@dataclass(frozen=True, slots=True)
class Snapshot:
    keys_by_hash: Mapping[str, KeyInfo] = field(default_factory=dict)
    routes: Mapping[str, RouteInfo] = field(default_factory=dict)
    backends_by_model: Mapping[str, tuple[BackendInfo, ...]] = field(default_factory=dict)
    prices: Mapping[str, PriceInfo] = field(default_factory=dict)
    loaded: bool = False

    @property
    def backends(self) -> list[BackendInfo]:
        return [b for group in self.backends_by_model.values() for b in group]


_current = Snapshot()


def snapshot_current() -> Snapshot:
    return _current


def snapshot_build() -> Snapshot:
    """Read every configuration table once (four queries)."""
    from proxy.models import ApiKey, Backend, Price, Route

    keys = {
        k.key_hash: KeyInfo(id=k.id, name=k.name) for k in ApiKey.objects.filter(is_active=True)
    }
    routes = {
        r.name: RouteInfo(name=r.name, model=r.model, baseline_model=r.baseline_model or r.model)
        for r in Route.objects.filter(enabled=True)
    }
    by_model: dict[str, list[BackendInfo]] = {}
    for b in Backend.objects.filter(enabled=True).order_by("name"):
        by_model.setdefault(b.model, []).append(
            BackendInfo(
                id=b.id,
                name=b.name,
                base_url=b.base_url.rstrip("/"),
                model=b.model,
                weight=b.weight,
                max_concurrency=b.max_concurrency,
            )
        )
    prices = {
        p.model: PriceInfo(p.input_usd_per_1m, p.output_usd_per_1m) for p in Price.objects.all()
    }
    return Snapshot(
        keys_by_hash=MappingProxyType(keys),
        routes=MappingProxyType(routes),
        backends_by_model=MappingProxyType({m: tuple(bs) for m, bs in by_model.items()}),
        prices=MappingProxyType(prices),
        loaded=True,
    )


def snapshot_reload() -> Snapshot:
    """Rebuild and swap; on a database error keep serving with the last good snapshot."""
    global _current
    from django.db import DatabaseError, close_old_connections

    try:
        _current = snapshot_build()
    except DatabaseError as exc:
        logger.warning("config reload failed, keeping the last snapshot: %s", exc)
        close_old_connections()
    return _current
