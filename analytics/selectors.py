"""Reads over the call log: the summary behind /api/stats/summary and the dashboard series.

A window [start, end) is read from the rollups (`analytics.rollups`) where they cover it, and
from the calls for the rest (`window_plan`): whole hours from HourRollup, whole minutes up to
the last run's cutoff from MinuteRollup (the current minute's row holds its calls up to the
cutoff), and the calls since the cutoff (and of a partial minute at the window's start: the
summary and the series start on a whole minute, so they have none). Each part is one grouped
query, histograms included (`analytics.aggregates`), and the parts are added: counts, tokens
and dollars are exact sums (Decimals) whichever part they come from.

Percentiles are nearest-rank (the smallest value with at least p % of values at or below it),
estimated from log-spaced histogram buckets within 2 % (`analytics.histogram`). A call written
after the last run into a minute it already rolled up counts from the next run on (15 s).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet
from django.db.models.functions import TruncMinute
from django.utils import timezone

from analytics import histogram
from analytics.aggregates import CALL_HISTOGRAMS, CALL_SUMS, HISTOGRAMS, ROLLUP_SUMS
from analytics.models import Call, HourRollup, MinuteRollup, RollupState

CAUSES = ("cache_exact", "cache_semantic", "routing", "compression", "selfhost", "batch")
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
Range = tuple[datetime, datetime]  # [start, end)


@dataclass(frozen=True, slots=True)
class Filters:
    """The dimensions a read may be narrowed to; None: any. `api_key_id=0`: calls without a
    key (as the rollups store them)."""

    route: str | None = None
    served_model: str | None = None
    backend: str | None = None
    api_key_id: int | None = None

    def _given(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__
                if getattr(self, name) is not None}

    def rollups(self) -> Q:
        return Q(**self._given())

    def calls(self) -> Q:
        given = self._given()
        if given.get("api_key_id") == 0:
            del given["api_key_id"]
            given["api_key_id__isnull"] = True
        return Q(**given)


ANY = Filters()


@dataclass(slots=True)
class Totals:
    """Additive figures of a set of calls: CALL_SUMS by name, and the two histograms."""

    sums: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(CALL_SUMS, 0))
    latency: histogram.Counts = field(default_factory=histogram.empty)
    ttft: histogram.Counts = field(default_factory=histogram.empty)

    def add_sums(self, row: dict[str, Any]) -> None:
        for name in CALL_SUMS:
            self.sums[name] += row[name] or 0

    def add(self, other: Totals) -> None:
        self.add_sums(other.sums)
        self.latency += other.latency
        self.ttft += other.ttft


@dataclass(frozen=True, slots=True)
class Plan:
    """Where each part of a window is read from."""

    raw: tuple[Range, ...] = ()
    minutes: tuple[Range, ...] = ()
    hours: tuple[Range, ...] = ()


def _floor(t: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return t - (t - epoch) % step


def _ceil(t: datetime, step: timedelta) -> datetime:
    floor = _floor(t, step)
    return floor if floor == t else floor + step


def window_plan(*, start: datetime, end: datetime, rolled_through: datetime | None,
                hours_through: datetime | None, hours: bool = True) -> Plan:
    """Split [start, end) into rollup rows and raw calls. Rollups cover from the first whole
    minute to the cutoff (when the window reaches it: the current minute's and hour's rows
    hold their calls up to it) or to the window's last whole minute; hour rows replace the
    minute rows of the hours in between."""
    first = _ceil(start, MINUTE)
    if rolled_through is None:
        return Plan(raw=((start, end),))
    covered = rolled_through if rolled_through <= end else _floor(end, MINUTE)
    if covered <= first:
        return Plan(raw=((start, end),))
    raw = tuple(r for r in ((start, first), (covered, end)) if r[0] < r[1])
    if hours and hours_through is not None:
        hour_a = _ceil(first, HOUR)
        hour_b = (covered if covered == rolled_through
                  else min(_floor(covered, HOUR), hours_through))
        if hour_a < hour_b:
            minutes = tuple(r for r in ((first, hour_a), (hour_b, covered)) if r[0] < r[1])
            return Plan(raw=raw, minutes=minutes, hours=((hour_a, hour_b),))
    return Plan(raw=raw, minutes=((first, covered),))


def _state() -> tuple[datetime | None, datetime | None]:
    row = RollupState.objects.filter(pk=1).values_list("rolled_through", "hours_through").first()
    return row or (None, None)


def _ranges(name: str, ranges: Iterable[Range]) -> Q:
    q = Q(pk__in=[])
    for lo, hi in ranges:
        q |= Q(**{f"{name}__gte": lo, f"{name}__lt": hi})
    return q


def window_totals(*, start: datetime, end: datetime, by: str,
                  filters: Filters = ANY) -> dict[Any, Totals]:
    """Totals of the calls in [start, end) per `by`: "route", or "minute" (the minute's start).
    Hour rows are used only by route (they cannot be split into minutes) and for all keys
    (they do not keep them)."""
    rolled_through, hours_through = _state()
    plan = window_plan(start=start, end=end, rolled_through=rolled_through,
                       hours_through=hours_through,
                       hours=by == "route" and filters.api_key_id is None)
    groups: dict[Any, Totals] = defaultdict(Totals)
    key = "start" if by == "minute" else by
    for model, ranges in ((HourRollup, plan.hours), (MinuteRollup, plan.minutes)):
        if ranges:
            rows = model.objects.filter(_ranges("start", ranges), filters.rollups()).order_by()
            _rollups_add(groups, rows, key=key)
    if plan.raw:
        calls = Call.objects.filter(_ranges("created_at", plan.raw), filters.calls()).order_by()
        if by == "minute":
            calls = calls.annotate(start=TruncMinute("created_at"))
        _calls_add(groups, calls, key=key)
    return groups


def _rollups_add(groups: dict[Any, Totals], rows: QuerySet, *, key: str) -> None:
    """Sums by the database, and each histogram as one concatenated string per group."""
    for row in rows.values(key).annotate(**ROLLUP_SUMS, **HISTOGRAMS):
        totals = groups[row[key]]
        totals.add_sums(row)
        totals.latency += histogram.decode(row["latency"] or "")
        totals.ttft += histogram.decode(row["ttft"] or "")


def _calls_add(groups: dict[Any, Totals], calls: QuerySet, *, key: str) -> None:
    """The raw part: sums and histograms in one pass of the database over the calls."""
    for row in calls.values(key).annotate(**CALL_SUMS, **CALL_HISTOGRAMS):
        totals = groups[row[key]]
        totals.add_sums(row)
        totals.latency += histogram.decode(row["latency"] or "")
        totals.ttft += histogram.decode(row["ttft"] or "")


def _total(parts: Iterable[Totals]) -> Totals:
    total = Totals()
    for part in parts:
        total.add(part)
    return total


def _money(t: Totals) -> dict[str, Any]:
    """Baseline, cost and savings by cause, as the exact Decimals the database summed."""
    s = t.sums
    return {
        "baseline_cost_usd": Decimal(s["baseline_cost_usd"]),
        "cost_usd": Decimal(s["cost_usd"]),
        "savings_by_cause": {
            "cache_exact": Decimal(s["saved_cache_exact_usd"]),
            "cache_semantic": Decimal(s["saved_cache_semantic_usd"]),
            "routing": Decimal(s["saved_routing_usd"]),
            "compression": Decimal(s["saved_compression_usd"]),
            "selfhost": Decimal(s["saved_selfhost_usd"]),
            "batch": Decimal(s["saved_batch_usd"]),
        },
    }


def savings_by_route(since: datetime, *, filters: Filters = ANY) -> dict[str, dict[str, Any]]:
    """Per route: baseline, cost and savings by cause (Decimals) since `since`."""
    groups = window_totals(start=since, end=timezone.now(), by="route", filters=filters)
    return {route: _money(t) for route, t in groups.items()}


def savings_total(since: datetime, *, filters: Filters = ANY) -> dict[str, Any]:
    """The whole pool's baseline, cost and savings by cause since `since` (Decimals)."""
    groups = window_totals(start=since, end=timezone.now(), by="route", filters=filters)
    return _money(_total(groups.values()))


def _rate(count: int, n: int) -> float:
    return count / n if n else 0.0


def stats_compute(t: Totals, *, seconds: float) -> dict[str, Any]:
    """Traffic, latency, errors, cache and tokens of `t`, which spans `seconds`."""
    s, n = t.sums, int(t.sums["requests"])
    return {
        "requests": n,
        "qps": n / seconds if seconds > 0 else 0.0,
        "p50_ms": histogram.percentile(t.latency, 50),
        "p95_ms": histogram.percentile(t.latency, 95),
        "p99_ms": histogram.percentile(t.latency, 99),
        "ttft_p50_ms": histogram.percentile(t.ttft, 50),
        "ttft_p99_ms": histogram.percentile(t.ttft, 99),
        "error_rate": _rate(s["errors"], n),
        "cache_hit_rate": _rate(s["cache_exact"] + s["cache_semantic"], n),
        "prompt_tokens": int(s["prompt_tokens"]),
        "completion_tokens": int(s["completion_tokens"]),
    }


def _money_out(t: Totals) -> dict[str, Any]:
    """The money fields as floats, like the other figures; from the exact sums, so that
    `savings_usd` is the sum of `savings_by_cause`."""
    money = _money(t)
    return {
        "cost_usd": float(money["cost_usd"]),
        "baseline_cost_usd": float(money["baseline_cost_usd"]),
        "savings_usd": float(money["baseline_cost_usd"] - money["cost_usd"]),
        "savings_by_cause": {c: float(v) for c, v in money["savings_by_cause"].items()},
    }


def summary_compute(*, minutes: int, now: datetime | None = None,
                    filters: Filters = ANY) -> dict[str, Any]:
    """The whole pool and each route over the last `minutes` whole minutes and the current
    one so far. Whole minutes, so that only the calls since the last rollup run are read raw
    (a window cut mid-minute would read up to a minute of calls more: 37,000 at full
    traffic); `qps` divides by the seconds the window covers."""
    now = now or timezone.now()
    start = _floor(now, MINUTE) - minutes * MINUTE
    seconds = (now - start).total_seconds()
    groups = window_totals(start=start, end=now, by="route", filters=filters)
    total = _total(groups.values())
    summary = {**stats_compute(total, seconds=seconds), **_money_out(total), "minutes": minutes}
    summary["by_route"] = [
        {"route": route, **stats_compute(t, seconds=seconds), **_money_out(t)}
        for route, t in sorted(groups.items())
    ]
    return summary


def series_compute(*, minutes: int = 15, bucket_s: int = 60, now: datetime | None = None,
                   filters: Filters = ANY) -> list[dict[str, Any]]:
    """Stats per time bucket over the last `minutes`, oldest first, empty buckets included;
    the last bucket is the current one so far. Buckets are whole minutes (the rollups')."""
    if bucket_s % 60:
        raise ValueError("series buckets are whole minutes")
    now = now or timezone.now()
    start_ts = (int(now.timestamp()) // bucket_s + 1) * bucket_s - minutes * 60
    start = datetime.fromtimestamp(start_ts, tz=UTC)
    buckets = [Totals() for _ in range(minutes * 60 // bucket_s)]
    groups = window_totals(start=start, end=now, by="minute", filters=filters)
    for minute, t in groups.items():
        index = int((minute.timestamp() - start_ts) // bucket_s)
        if 0 <= index < len(buckets):
            buckets[index].add(t)
    return [
        {"t": start + timedelta(seconds=i * bucket_s), **stats_compute(t, seconds=bucket_s),
         **_money_out(t)}
        for i, t in enumerate(buckets)
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
