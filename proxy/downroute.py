"""Cost steps that change what is sent: small-model routing and prompt compression.

Small-model routing: a route may name a small model (a route or a served model) beside its
own. The classifier scores the request's difficulty from cheap features; below the route's
threshold the request goes to the small model, with the route's own model as its first
fallback (a failing small model costs a retry, not an error). `x-sluice-no-downroute: 1`
from the app forces the route's own model. The decision and the score go in the record and in
`x-sluice-decision`.

Prompt compression: over the route's prompt-token budget, a conversation keeps its system
prompt and the latest turns that fit; the tokens removed are recorded.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from proxy.accounting import CallLog
from proxy.classifier import decide
from proxy.compression import compress, prompt_tokens_estimate
from proxy.endpoints import CHAT, COMPLETIONS, Endpoint
from proxy.snapshot import RouteInfo, Snapshot

NO_DOWNROUTE_HEADER = "x-sluice-no-downroute"
_ROUTABLE = (CHAT.name, COMPLETIONS.name)


def small_model_served(route: RouteInfo, snapshot: Snapshot) -> str:
    """The served model the route's `small_model` names ('' when none has a backend)."""
    name = route.small_model
    if not name:
        return ""
    small = snapshot.routes.get(name)
    model = small.model if small is not None else name
    return model if model in snapshot.backends_by_model and model != route.model else ""


def downroute_apply(log: CallLog, body: dict[str, Any], *, endpoint: Endpoint,
                    headers: Any, snapshot: Snapshot) -> None:
    """Decide between the route's model and its small model; point `log.route` at the choice."""
    route = log.route
    if route is None or not route.small_model or endpoint.name not in _ROUTABLE:
        return
    small = small_model_served(route, snapshot)
    if not small:
        return
    forced = headers.get(NO_DOWNROUTE_HEADER, "").strip() in ("1", "true", "yes")
    decision = decide(body, endpoint=endpoint.name, threshold=route.downroute_threshold,
                      forced_primary=forced)
    log.decision = decision.choice
    log.decision_score = decision.score
    if decision.choice == "small":
        log.route = dataclasses.replace(route, model=small,
                                        fallbacks=(route.model, *route.fallbacks))


def compression_apply(log: CallLog, body: dict[str, Any], *,
                      endpoint: Endpoint) -> dict[str, Any]:
    """The body to send: compressed to the route's prompt-token budget when it has one."""
    route = log.route
    if route is None or not route.prompt_token_budget or endpoint.name not in _ROUTABLE:
        return body
    sent, removed = compress(body, endpoint=endpoint.name, budget_tokens=route.prompt_token_budget)
    if removed:
        # Both in estimated tokens; the record turns them into the backend's (accounting).
        log.prompt_tokens_saved = removed
        log.prompt_tokens_sent_estimate = prompt_tokens_estimate(sent, endpoint=endpoint.name)
    return sent
