"""Reads over the call log: the summary behind /api/stats/summary and the dashboard series.

Percentiles use the nearest-rank method (the smallest value with at least p % of values at
or below it), so that any set of calls has a hand-checkable answer.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

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
        "cache_hit_rate": sum(1 for r in rows if r.cache != CacheOutcome.MISS) / n if n else 0.0,
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
    summary = stats_compute(rows, seconds=seconds)
    summary["minutes"] = minutes
    summary["by_route"] = [
        {"route": name, **stats_compute(group, seconds=seconds)}
        for name, group in sorted(by_route.items())
    ]
    return summary


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
