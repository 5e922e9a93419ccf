"""Reads over the call log: the summary behind /api/stats/summary and the dashboard series.

Percentiles use the nearest-rank method (the smallest value with at least p % of values at
or below it), so that any set of calls has a hand-checkable answer. Money is summed by the
database (exact decimals), once per route, and split by cause from the per-call fields that
`proxy.pricing` fills in; the cache's part is split into exact and semantic by `cache`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Q, Sum
from django.utils import timezone

from analytics.models import CacheOutcome, Call

_FIELDS = (
    "created_at", "route", "status_code", "latency_ms", "ttft_ms", "prompt_tokens",
    "completion_tokens", "cache", "cost_usd", "baseline_cost_usd",
)


@dataclass(frozen=True, slots=True)
class Row:
    created_at: datetime
    route: str
    status_code: int
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cache: str
    cost_usd: Decimal
    baseline_cost_usd: Decimal


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of `values`; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


_HITS = (CacheOutcome.EXACT, CacheOutcome.SEMANTIC)
CAUSES = ("cache_exact", "cache_semantic", "routing", "compression", "selfhost", "batch")
_ZERO = Decimal(0)


def savings_by_route(since: datetime) -> dict[str, dict[str, Any]]:
    """Per route: baseline, cost and savings by cause (Decimals), one grouped query."""
    rows = (
        Call.objects.filter(created_at__gte=since).values("route").order_by()
        .annotate(
            baseline_cost_usd=Sum("baseline_cost_usd"),
            cost_usd=Sum("cost_usd"),
            cache_exact=Sum("saved_cache_usd", filter=Q(cache=CacheOutcome.EXACT)),
            cache_semantic=Sum("saved_cache_usd", filter=Q(cache=CacheOutcome.SEMANTIC)),
            routing=Sum("saved_routing_usd"),
            compression=Sum("saved_compression_usd"),
            selfhost=Sum("saved_selfhost_usd"),
            batch=Sum("saved_batch_usd"),
        )
    )
    return {row["route"]: _money(row) for row in rows}


def _money(sums: dict[str, Any]) -> dict[str, Any]:
    return {
        "baseline_cost_usd": sums["baseline_cost_usd"] or _ZERO,
        "cost_usd": sums["cost_usd"] or _ZERO,
        "savings_by_cause": {cause: sums[cause] or _ZERO for cause in CAUSES},
    }


def savings_total(since: datetime) -> dict[str, Any]:
    """The whole pool's baseline, cost and savings by cause since `since` (Decimals)."""
    return _money_total(savings_by_route(since).values())


def _money_total(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    total = {"baseline_cost_usd": _ZERO, "cost_usd": _ZERO,
             "savings_by_cause": dict.fromkeys(CAUSES, _ZERO)}
    for part in parts:
        total["baseline_cost_usd"] += part["baseline_cost_usd"]
        total["cost_usd"] += part["cost_usd"]
        for cause in CAUSES:
            total["savings_by_cause"][cause] += part["savings_by_cause"][cause]
    return total


def stats_compute(rows: Sequence[Row], *, seconds: float) -> dict[str, Any]:
    """Traffic, latency, errors, cache and cost over `rows`, which span `seconds`."""
    n = len(rows)
    latencies = [r.latency_ms for r in rows]
    ttfts = [r.ttft_ms for r in rows if r.ttft_ms is not None]
    cost = sum((r.cost_usd for r in rows), Decimal(0))
    baseline = sum((r.baseline_cost_usd for r in rows), Decimal(0))
    return {
        "requests": n,
        "qps": n / seconds if seconds > 0 else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p99_ms": percentile(ttfts, 99),
        "error_rate": sum(1 for r in rows if r.status_code >= 500) / n if n else 0.0,
        "cache_hit_rate": sum(1 for r in rows if r.cache in _HITS) / n if n else 0.0,
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "completion_tokens": sum(r.completion_tokens for r in rows),
        "cost_usd": float(cost),
        "savings_usd": float(baseline - cost),
    }


def rows_since(since: datetime) -> list[Row]:
    return [Row(*values) for values in
            Call.objects.filter(created_at__gte=since).values_list(*_FIELDS).order_by()]


def summary_compute(*, minutes: int, now: datetime | None = None) -> dict[str, Any]:
    """The whole pool and each route over the last `minutes`."""
    now = now or timezone.now()
    seconds = minutes * 60
    rows = rows_since(now - timedelta(seconds=seconds))
    by_route: dict[str, list[Row]] = {}
    for row in rows:
        by_route.setdefault(row.route, []).append(row)
    money = savings_by_route(now - timedelta(seconds=seconds))
    empty = _money_total(())
    summary = {**stats_compute(rows, seconds=seconds), **_money_out(_money_total(money.values()))}
    summary["minutes"] = minutes
    summary["by_route"] = [
        {"route": name, **stats_compute(group, seconds=seconds),
         **_money_out(money.get(name, empty))}
        for name, group in sorted(by_route.items())
    ]
    return summary


def _money_out(money: dict[str, Any]) -> dict[str, Any]:
    """The summary's money fields as floats, like its other figures; the database's exact sums
    (one query) so that `savings_usd` is the sum of `savings_by_cause`."""
    return {
        "cost_usd": float(money["cost_usd"]),
        "baseline_cost_usd": float(money["baseline_cost_usd"]),
        "savings_usd": float(money["baseline_cost_usd"] - money["cost_usd"]),
        "savings_by_cause": {c: float(v) for c, v in money["savings_by_cause"].items()},
    }


def series_compute(
    *, minutes: int = 15, bucket_s: int = 30, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Stats per time bucket over the last `minutes`, oldest first, empty buckets included."""
    now = now or timezone.now()
    start_ts = (int(now.timestamp()) // bucket_s + 1) * bucket_s - minutes * 60
    start = datetime.fromtimestamp(start_ts, tz=now.tzinfo)
    buckets: list[list[Row]] = [[] for _ in range(minutes * 60 // bucket_s)]
    for row in rows_since(start):
        index = int((row.created_at.timestamp() - start_ts) // bucket_s)
        if 0 <= index < len(buckets):
            buckets[index].append(row)
    return [
        {"t": start + timedelta(seconds=i * bucket_s), **stats_compute(rows, seconds=bucket_s)}
        for i, rows in enumerate(buckets)
    ]


def calls_recent(
    *, limit: int = 50, route: str | None = None, status: int | None = None
) -> Iterable[Call]:
    calls = Call.objects.all()
    if route:
        calls = calls.filter(route=route)
    if status is not None:
        calls = calls.filter(status_code=status)
    return calls.order_by("-created_at")[:limit]
