"""Reads for the alerts: each rule's metric now, and the rules and events for the pages.

Metrics of calls come from `analytics.selectors.summary_compute`, the rollup-backed summary
behind /api/stats/summary: a rule with a 5-minute window sees what `?minutes=5` shows, narrowed
to its route and backend. With no calls in the window, latency, TTFT and error rate have no
value (None: "no data", under which no condition holds); QPS and cost are 0.

'Backends down' is the number of backends whose GET /health fails (2 s timeout), probed from
the worker: the breakers live inside each web process, out of its sight, and the calls cannot
say it either: once a breaker opens, a dead backend gets no calls, so its window goes quiet
rather than red.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from alerts import notify
from alerts.models import AlertEvent, AlertRule, Metric, State
from analytics.selectors import Filters, summary_compute
from proxy.models import Backend

_PROBE_THREADS = 16


def rule_values(rules: Sequence[AlertRule], *, now: datetime) -> dict[int, float | None]:
    """Each rule's metric at `now`, by rule id. A window read once for all the rules that
    share it; every backend probed at most once, all at the same time."""
    health = backends_health(_probed(rules))
    windows: dict[tuple[Any, ...], dict[str, Any]] = {}
    values = {}
    for rule in rules:
        if rule.metric == Metric.BACKEND_DOWN:
            values[rule.pk] = backends_down(rule, health)
            continue
        key = (rule.window_minutes, rule.route or None, rule.backend or None)
        if key not in windows:
            windows[key] = summary_compute(minutes=rule.window_minutes, now=now, filters=Filters(
                route=rule.route or None, backend=rule.backend or None))
        values[rule.pk] = metric_from_summary(rule.metric, windows[key])
    return values


def metric_from_summary(metric: str, summary: dict[str, Any]) -> float | None:
    requests = summary["requests"]
    if metric == Metric.P99_LATENCY:
        return summary["p99_ms"]
    if metric == Metric.TTFT_P99:
        return summary["ttft_p99_ms"]
    if metric == Metric.ERROR_RATE:
        return summary["error_rate"] if requests else None
    if metric == Metric.QPS:
        return summary["qps"]
    if metric == Metric.COST_PER_HOUR:
        # qps = requests / seconds of the window, so this is cost / seconds × 3600, over the
        # seconds that the summary itself divides by.
        return summary["cost_usd"] / requests * summary["qps"] * 3600 if requests else 0.0
    raise ValueError(f"not a metric of calls: {metric}")


def _probed(rules: Iterable[AlertRule]) -> list[Backend]:
    """The enabled backends that some 'backends down' rule watches."""
    names = {r.backend for r in rules if r.metric == Metric.BACKEND_DOWN}
    if not names:
        return []
    backends = Backend.objects.filter(enabled=True)
    return list(backends if "" in names else backends.filter(name__in=names))


def backends_health(backends: Sequence[Backend]) -> dict[str, bool]:
    """Backend name → whether its /health answered 200."""
    if not backends:
        return {}
    with ThreadPoolExecutor(max_workers=min(_PROBE_THREADS, len(backends))) as pool:
        results = pool.map(lambda b: notify.health_ok(b.base_url), backends)
        return {b.name: ok for b, ok in zip(backends, results, strict=True)}


def backends_down(rule: AlertRule, health: dict[str, bool]) -> float | None:
    """How many of the rule's backends are down; None (no data) when it watches one that is
    not an enabled backend (deleted, or taken out of the pool on purpose)."""
    if rule.backend:
        return None if rule.backend not in health else float(not health[rule.backend])
    return float(sum(not ok for ok in health.values()))


def rules_list() -> list[AlertRule]:
    """Every rule, firing first, then pending, then the rest by name."""
    order = {State.FIRING: 0, State.PENDING: 1, State.OK: 2}
    return sorted(AlertRule.objects.all(), key=lambda r: (order.get(r.state, 3), r.name))


def rules_firing() -> list[AlertRule]:
    return list(AlertRule.objects.filter(enabled=True, state=State.FIRING))


def events_recent(*, limit: int = 50, rule_id: int | None = None) -> list[AlertEvent]:
    events = AlertEvent.objects.select_related("rule")
    if rule_id is not None:
        events = events.filter(rule_id=rule_id)
    return list(events.order_by("-at", "-id")[:limit])
