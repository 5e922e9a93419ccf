"""Reads behind the dashboard pages: any window, grouped by any rollup dimension and/or by
minute or hour, with error counts by type; the call log search; the filter choices.

Like `analytics.selectors` (whose `window_plan`, `Filters`, `Totals` and `stats_compute` this
reuses, unchanged), a window is read from HourRollup for whole rolled-up hours (when neither
the grouping nor the filters need keys or minutes), MinuteRollup for whole rolled-up minutes,
and the calls for the rest; every part is one grouped query (sums and histograms in SQL).
Error types are JSON per rollup row: only rows with errors are read for them, and merged here.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from django.db.models import Count, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce, TruncHour, TruncMinute
from django.utils import timezone

from analytics import histogram
from analytics.aggregates import CALL_HISTOGRAMS, CALL_SUMS, HISTOGRAMS, ROLLUP_SUMS
from analytics.models import CacheOutcome, Call, HourRollup, MinuteRollup, RollupState
from analytics.selectors import ANY, Filters, Totals, stats_compute, window_plan

Grain = Literal["minute", "hour"] | None
Range = tuple[datetime, datetime]
CAUSES = ("cache_exact", "cache_semantic", "routing", "compression", "selfhost", "batch")
_CAUSE_SUMS = {"cache_exact": "saved_cache_exact_usd", "cache_semantic": "saved_cache_semantic_usd",
               "routing": "saved_routing_usd", "compression": "saved_compression_usd",
               "selfhost": "saved_selfhost_usd", "batch": "saved_batch_usd"}
_TRUNC = {"minute": TruncMinute, "hour": TruncHour}


@dataclass(slots=True)
class Group:
    """One group's additive figures and its error counts by type (any status)."""

    totals: Totals = field(default_factory=Totals)
    error_types: Counter[str] = field(default_factory=Counter)


def _q(name: str, ranges: Sequence[Range]) -> Q:
    q = Q(pk__in=[])
    for lo, hi in ranges:
        q |= Q(**{f"{name}__gte": lo, f"{name}__lt": hi})
    return q


def groups_read(*, start: datetime, end: datetime, dims: Sequence[str] = (),
                grain: Grain = None, filters: Filters = ANY) -> dict[tuple[Any, ...], Group]:
    """Figures of the calls in [start, end) per (bucket?, *dims): the key is a tuple, the
    bucket's start first when `grain` is given. Dims: route, served_model, backend,
    api_key_id (0: no key)."""
    state = RollupState.objects.filter(pk=1).values_list("rolled_through", "hours_through")
    rolled_through, hours_through = state.first() or (None, None)
    hours = grain != "minute" and "api_key_id" not in dims and filters.api_key_id is None
    plan = window_plan(start=start, end=end, rolled_through=rolled_through,
                       hours_through=hours_through, hours=hours)
    groups: dict[tuple[Any, ...], Group] = defaultdict(Group)
    keys = (["bucket"] if grain else []) + list(dims)
    for model, ranges in ((HourRollup, plan.hours), (MinuteRollup, plan.minutes)):
        if ranges:
            rows = model.objects.filter(_q("start", ranges), filters.rollups()).order_by()
            if grain:
                rows = rows.annotate(bucket=_TRUNC[grain]("start"))
            _add(groups, _grouped(rows, keys, {**ROLLUP_SUMS, **HISTOGRAMS}), keys)
            for *key, types in rows.exclude(errors_by_type={}).values_list(*keys,
                                                                           "errors_by_type"):
                groups[tuple(key)].error_types.update(types)
    if plan.raw:
        calls = Call.objects.filter(_q("created_at", plan.raw), filters.calls()).order_by()
        if "api_key_id" in dims:
            calls = calls.annotate(key0=_key0())
            keys = [("key0" if k == "api_key_id" else k) for k in keys]
        if grain:
            calls = calls.annotate(bucket=_TRUNC[grain]("created_at"))
        _add(groups, _grouped(calls, keys, {**CALL_SUMS, **CALL_HISTOGRAMS}), keys)
        errors = calls.exclude(error_type="").values(*keys, "error_type").annotate(n=Count("id"))
        for row in errors:
            groups[tuple(row[k] for k in keys)].error_types[row["error_type"]] += row["n"]
    return groups


def _grouped(rows: QuerySet, keys: Sequence[str],
             aggregates: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per group of `keys`, or one for the whole set without keys."""
    if keys:
        return list(rows.values(*keys).annotate(**aggregates))
    return [rows.aggregate(**aggregates)]


def _key0() -> Coalesce:
    return Coalesce("api_key_id", Value(0))


def _add(groups: dict[tuple[Any, ...], Group], rows: list[dict[str, Any]],
         keys: Sequence[str]) -> None:
    for row in rows:
        totals = groups[tuple(row[k] for k in keys)].totals
        totals.add_sums(row)
        totals.latency += histogram.decode(row["latency"] or "")
        totals.ttft += histogram.decode(row["ttft"] or "")


def group_merge(groups: Sequence[Group]) -> Group:
    total = Group()
    for g in groups:
        total.totals.add(g.totals)
        total.error_types.update(g.error_types)
    return total


def figures_compute(group: Group, *, seconds: float) -> dict[str, Any]:
    """Everything a page shows of one group: `stats_compute`'s figures plus P95 TTFT, cache
    hits by kind, tokens per second, error rate by type, down-routed share, money by cause."""
    t, s = group.totals, group.totals.sums
    n = int(s["requests"])
    cost, baseline = float(s["cost_usd"]), float(s["baseline_cost_usd"])

    def rate(x: float) -> float:
        return x / n if n else 0.0

    return {
        **stats_compute(t, seconds=seconds),
        "ttft_p95_ms": histogram.percentile(t.ttft, 95),
        "errors": int(s["errors"]),
        "cache_exact_rate": rate(s["cache_exact"]),
        "cache_semantic_rate": rate(s["cache_semantic"]),
        "down_routed_rate": rate(s["down_routed"]),
        "prompt_tps": int(s["prompt_tokens"]) / seconds if seconds > 0 else 0.0,
        "completion_tps": int(s["completion_tokens"]) / seconds if seconds > 0 else 0.0,
        "error_rate_by_type": {k: rate(v) for k, v in sorted(group.error_types.items())},
        "cost_usd": cost,
        "baseline_cost_usd": baseline,
        "savings_usd": baseline - cost,
        "savings_by_cause": {c: float(s[col]) for c, col in _CAUSE_SUMS.items()},
    }


def window_start(*, now: datetime, minutes: int, bucket_s: int) -> datetime:
    """The first bucket's start: buckets end with the current one, so the window is
    `minutes` long up to the end of the current bucket."""
    start_ts = (int(now.timestamp()) // bucket_s + 1) * bucket_s - minutes * 60
    return datetime.fromtimestamp(start_ts, tz=UTC)


def series_read(*, minutes: int, bucket_s: int, now: datetime | None = None,
                filters: Filters = ANY) -> list[dict[str, Any]]:
    """`figures_compute` per bucket of `bucket_s` (whole minutes) over the last `minutes`,
    oldest first, empty buckets included; hour buckets read the hour rollups."""
    if bucket_s % 60:
        raise ValueError("series buckets are whole minutes")
    now = now or timezone.now()
    start = window_start(now=now, minutes=minutes, bucket_s=bucket_s)
    grain: Grain = "hour" if bucket_s % 3600 == 0 else "minute"
    buckets = [Group() for _ in range(minutes * 60 // bucket_s)]
    for (t,), group in groups_read(start=start, end=now, grain=grain, filters=filters).items():
        index = int((t - start).total_seconds() // bucket_s)
        if 0 <= index < len(buckets):
            buckets[index].totals.add(group.totals)
            buckets[index].error_types.update(group.error_types)
    return [{"t": start + timedelta(seconds=i * bucket_s),
             **figures_compute(g, seconds=bucket_s)} for i, g in enumerate(buckets)]


def window_read(*, minutes: int, bucket_s: int, dims: Sequence[str] = (),
                now: datetime | None = None, filters: Filters = ANY) -> dict[str, Any]:
    """The same window as `series_read`: the whole, and one row per value of `dims` (sorted)."""
    now = now or timezone.now()
    start = window_start(now=now, minutes=minutes, bucket_s=bucket_s)
    seconds = max((now - start).total_seconds(), 1.0)
    groups = groups_read(start=start, end=now, dims=dims, filters=filters)
    rows = [{**dict(zip(dims, key, strict=True)), **figures_compute(g, seconds=seconds)}
            for key, g in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0])))]
    total = figures_compute(group_merge(list(groups.values())), seconds=seconds)
    requests = total["requests"]
    for row in rows:
        row["share"] = row["requests"] / requests if requests else 0.0
    return {**total, "start": start, "end": now, "rows": rows}


def backend_tokens(*, start: datetime, end: datetime) -> dict[str, dict[str, int]]:
    """Prompt and completion tokens logged per backend over [start, end), calls answered from
    Sluice's cache left out (no backend saw them): raw calls, one grouped query, since the
    interval between two scrapes is any number of seconds."""
    rows = (Call.objects.filter(created_at__gte=start, created_at__lt=end)
            .exclude(backend="").exclude(cache__in=[CacheOutcome.EXACT, CacheOutcome.SEMANTIC])
            .order_by().values("backend")
            .annotate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")))
    return {r["backend"]: {"prompt": r["prompt"] or 0, "completion": r["completion"] or 0}
            for r in rows}


def filter_choices(*, since: datetime) -> dict[str, list[Any]]:
    """Routes, served models, backends and keys (id, name) seen since `since` (minute rows,
    and the calls of the last minutes, which the rollups may not hold yet)."""
    rows = MinuteRollup.objects.filter(start__gte=since).order_by()
    recent = Call.objects.filter(created_at__gte=timezone.now() - timedelta(minutes=5)).order_by()
    choices: dict[str, list[Any]] = {}
    for name in ("route", "served_model", "backend"):
        values = set(rows.values_list(name, flat=True).distinct())
        values |= set(recent.values_list(name, flat=True).distinct())
        choices[name] = sorted(v for v in values if v)
    ids = set(rows.exclude(api_key_id=0).values_list("api_key_id", flat=True).distinct())
    names = dict(Call.objects.filter(created_at__gte=since, api_key_id__isnull=False)
                 .order_by().values_list("api_key_id", "api_key_name").distinct()[:500])
    ids |= set(names)
    choices["key"] = sorted(((i, names.get(i) or f"key {i}") for i in ids),
                            key=lambda kv: kv[1])
    return choices


def calls_search(*, start: datetime, end: datetime, filters: Filters = ANY,
                 status: str = "", slow_ms: float | None = None,
                 request_id: str = "") -> QuerySet:
    """The call log, newest first. `status`: a code ("429"), a class ("5xx"), or "error"
    (≥ 400). `slow_ms`: only calls slower than it."""
    calls = Call.objects.filter(created_at__gte=start, created_at__lt=end).filter(filters.calls())
    if request_id:
        calls = calls.filter(request_id=request_id)
    if status == "error":
        calls = calls.filter(status_code__gte=400)
    elif len(status) == 3 and status[0].isdigit() and status[1:] == "xx":
        lo = int(status[0]) * 100
        calls = calls.filter(status_code__gte=lo, status_code__lt=lo + 100)
    elif status.isdigit():
        calls = calls.filter(status_code=int(status))
    if slow_ms is not None:
        calls = calls.filter(latency_ms__gt=slow_ms)
    return calls.order_by("-created_at", "-id")
