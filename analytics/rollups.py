"""Per-minute and per-hour rollups of the call log: the beat task runs `rollups_run` every
15 s, and the readers (`analytics.selectors`) sum rollup rows instead of calls.

A run, under a lock on the one RollupState row:

1. finds the minutes of the calls with an id above the watermark: new calls, and late ones (a
   stream logged when it ended, minutes after it began; records replayed from the journal
   after a database outage or a crashed process);
2. recomputes, whole and from the calls, each of those minutes whose call count no longer
   matches its rollup rows (the current one up to the cutoff, now − SETTLE_S), with idempotent
   upserts;
3. recomputes, from their minute rows, the hours that a recomputed minute belongs to (the
   current one up to the cutoff) or that ended since the last run;
4. moves `rolled_through` to the cutoff, and the watermark to the largest id that a run saw at
   least WATERMARK_LAG_S ago.

Why the lag: an id is taken when a row is inserted, but the row becomes visible when its
transaction commits, and two writers can commit out of id order. Every row with an id at or
below what a run saw had taken its id by then, so one lag later its transaction has ended and
a run with the watermark still below it has seen it. Until then its minute keeps being checked:
a count per minute, cheap next to recomputing it.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncHour, TruncMinute
from django.utils import timezone

from analytics import histogram
from analytics.aggregates import CALL_SUMS, HISTOGRAMS, ROLLUP_SUMS, bucket_sql
from analytics.models import Call, HourRollup, MinuteRollup, RollupState

SETTLE_S = 2.0  # the recorder writes every second: a younger call may still be in its buffer
WATERMARK_LAG_S = 60.0  # longer than any insert transaction of the call log (a few ms each)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
SPAN_MINUTES = 60  # the most minutes one statement recomputes: bounded work per statement
HOURS_PER_WRITE = 24  # hours recomputed by one pair of queries
HOUR_DIMENSIONS = ("route", "served_model", "backend")
MINUTE_KEY = ("start", *HOUR_DIMENSIONS, "api_key_id")
METRICS = [*CALL_SUMS, "errors_by_type", "latency_hist", "ttft_hist"]
_GROUP = ("minute", "route", "served_model", "backend", "key_id")  # MINUTE_KEY, from calls


@dataclass(frozen=True, slots=True)
class RunResult:
    skipped: bool = False  # another run held the lock
    minutes: int = 0  # minutes recomputed
    hours: int = 0  # hours recomputed
    watermark_id: int = 0


def rollups_run(*, now: datetime | None = None) -> RunResult:
    """Bring the rollups up to now − SETTLE_S; a no-op while another run holds the lock."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=SETTLE_S)
    RollupState.objects.get_or_create(pk=1)
    with transaction.atomic():
        state = RollupState.objects.select_for_update(skip_locked=True).filter(pk=1).first()
        if state is None:
            return RunResult(skipped=True)
        top = Call.objects.aggregate(top=Max("id"))["top"] or 0
        dirty = minutes_dirty(after_id=state.watermark_id, cutoff=cutoff, now=now)
        stale = minutes_stale(dirty, cutoff=cutoff)
        for run in minute_runs(stale):
            minutes_write(first=run[0], last=run[-1], cutoff=cutoff)
        hours = hours_due(stale, since=state.hours_through, cutoff=cutoff)
        for chunk in range(0, len(hours), HOURS_PER_WRITE):
            hours_write(hours[chunk:chunk + HOURS_PER_WRITE])
        _state_advance(state, top=top, now=now, cutoff=cutoff)
    return RunResult(minutes=len(stale), hours=len(hours), watermark_id=state.watermark_id)


def minutes_dirty(*, after_id: int, cutoff: datetime, now: datetime) -> list[datetime]:
    """The minutes, oldest first, of calls with an id above `after_id` created before the
    cutoff. Minutes past the calls' retention are left alone: the purge may already have taken
    some of their calls, and recomputing them would lose those."""
    oldest = now - timedelta(days=settings.SLUICE_CALL_RETENTION_DAYS)
    calls = Call.objects.filter(id__gt=after_id, created_at__lt=cutoff, created_at__gte=oldest)
    minutes = calls.annotate(minute=TruncMinute("created_at")).values_list("minute", flat=True)
    return sorted(minutes.distinct().order_by())


def minutes_stale(minutes: list[datetime], *, cutoff: datetime) -> list[datetime]:
    """Those of `minutes` whose calls up to the cutoff are not the ones their rows count."""
    stale = []
    for run in minute_runs(minutes):
        calls = Call.objects.filter(created_at__gte=run[0],
                                    created_at__lt=min(run[-1] + MINUTE, cutoff))
        counted = dict(calls.annotate(minute=TruncMinute("created_at")).values("minute")
                       .annotate(n=Count("id")).values_list("minute", "n").order_by())
        rows = MinuteRollup.objects.filter(start__gte=run[0], start__lte=run[-1])
        rolled = dict(rows.values("start").annotate(n=Sum("requests"))
                      .values_list("start", "n").order_by())
        stale += [m for m in run if counted.get(m) != rolled.get(m)]
    return stale


def minute_runs(minutes: list[datetime]) -> Iterator[list[datetime]]:
    """Runs of consecutive minutes (sorted input), at most SPAN_MINUTES each: one range query
    per run."""
    run: list[datetime] = []
    for minute in minutes:
        if run and (minute != run[-1] + MINUTE or len(run) == SPAN_MINUTES):
            yield run
            run = []
        run.append(minute)
    if run:
        yield run


def minutes_write(*, first: datetime, last: datetime, cutoff: datetime) -> int:
    """Recompute the rows of minutes first..last from their calls before the cutoff, in one
    INSERT … SELECT … ON CONFLICT DO UPDATE: the database groups, sums, counts per histogram
    bucket and encodes, and no row passes through Python (a backfill writes 100,000s)."""
    calls = (Call.objects.filter(created_at__gte=first, created_at__lt=min(last + MINUTE, cutoff))
             .annotate(minute=TruncMinute("created_at"), key_id=Coalesce("api_key_id", Value(0)))
             .order_by())
    parts = [
        calls.values(*_GROUP).annotate(**CALL_SUMS),
        calls.values(*_GROUP, bucket=bucket_sql("latency_ms")).annotate(n=Count("id")),
        calls.filter(ttft_ms__isnull=False)
        .values(*_GROUP, bucket=bucket_sql("ttft_ms")).annotate(n=Count("id")),
        calls.exclude(error_type="").values(*_GROUP, "error_type").annotate(n=Count("id")),
    ]
    compiled = [part.query.sql_with_params() for part in parts]
    sql = _upsert_sql(*(text for text, _ in compiled))
    with connection.cursor() as cursor:
        cursor.execute(sql, [param for _, params in compiled for param in params])
        return cursor.rowcount


# Per database: a group's histogram as `histogram.encode` writes it, and its error types.
_DIALECTS = {
    "postgresql": {
        "hist": "string_agg(lpad(to_hex(bucket), 4, '0') || lpad(to_hex(n), 8, '0'), '')",
        "types": "jsonb_object_agg(error_type, n)", "no_types": "'{}'::jsonb"},
    "sqlite": {
        "hist": "group_concat(printf('%%04x%%08x', bucket, n), '')",
        "types": "json_group_object(error_type, n)", "no_types": "'{}'"},
}


def _upsert_sql(sums: str, latency: str, ttft: str, errors: str) -> str:
    """The minute upsert around the four grouped SELECTs that the ORM compiled. `WHERE true`:
    SQLite would read ON CONFLICT as the last join's constraint."""
    sql = _DIALECTS[connection.vendor]
    group = ", ".join(_GROUP)

    def per_group(select: str, aggregate: str) -> str:
        return f"(SELECT {group}, {aggregate} AS agg FROM ({select}) AS x GROUP BY {group})"

    return f"""
        INSERT INTO {MinuteRollup._meta.db_table} ({", ".join(MINUTE_KEY)}, {", ".join(METRICS)})
        SELECT {", ".join(f"s.{name}" for name in _GROUP)},
               {", ".join(f"COALESCE(s.{name}, 0)" for name in CALL_SUMS)},
               COALESCE(e.agg, {sql["no_types"]}), COALESCE(l.agg, ''), COALESCE(t.agg, '')
        FROM ({sums}) AS s
        LEFT JOIN {per_group(latency, sql["hist"])} AS l USING ({group})
        LEFT JOIN {per_group(ttft, sql["hist"])} AS t USING ({group})
        LEFT JOIN {per_group(errors, sql["types"])} AS e USING ({group})
        WHERE true
        ON CONFLICT ({", ".join(MINUTE_KEY)})
        DO UPDATE SET {", ".join(f"{name} = excluded.{name}" for name in METRICS)}
    """


def hours_due(stale: Iterable[datetime], *, since: datetime | None,
              cutoff: datetime) -> list[datetime]:
    """Hours to recompute: those of recomputed minutes (the current one too: its row holds its
    calls up to the cutoff, so that readers need no minute rows for it), and those ended since
    `since` (whose last minutes may have had no call to make them stale)."""
    due = {_hour(minute) for minute in stale}
    hour = since
    while hour is not None and hour < _hour(cutoff):
        due.add(hour)
        hour += HOUR
    return sorted(due)


def hours_write(hours: list[datetime]) -> int:
    """The rows of these hours from their minute rows, all keys together: sums and histograms
    by the database (one grouped query for all of them), error types merged here."""
    minutes = (MinuteRollup.objects.filter(_hours_q(hours))
               .annotate(hour=TruncHour("start")).order_by())
    group = ("hour", *HOUR_DIMENSIONS)
    errors: dict[tuple[Any, ...], Counter[str]] = defaultdict(Counter)
    for *key, types in minutes.exclude(errors_by_type={}).values_list(*group, "errors_by_type"):
        errors[tuple(key)].update(types)
    rows = [
        HourRollup(start=row["hour"], **{name: row[name] for name in HOUR_DIMENSIONS},
                   **{name: row[name] or 0 for name in CALL_SUMS},
                   errors_by_type=dict(errors[tuple(row[name] for name in group)]),
                   latency_hist=_merged(row["latency"]), ttft_hist=_merged(row["ttft"]))
        for row in minutes.values(*group).annotate(**ROLLUP_SUMS, **HISTOGRAMS)
    ]
    # Insert or overwrite by (start, dimensions): a recomputed hour replaces itself.
    HourRollup.objects.bulk_create(rows, batch_size=500, update_conflicts=True,
                                   unique_fields=["start", *HOUR_DIMENSIONS],
                                   update_fields=METRICS)
    return len(rows)


def _hours_q(hours: list[datetime]) -> Q:
    q = Q(pk__in=[])
    for hour in hours:
        q |= Q(start__gte=hour, start__lt=hour + HOUR)
    return q


def _merged(concatenated: str | None) -> str:
    """Concatenated encodings → the canonical encoding of their sum (one pair per bucket)."""
    return histogram.encode(histogram.decode(concatenated or ""))


def _hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _state_advance(state: RollupState, *, top: int, now: datetime, cutoff: datetime) -> None:
    """The pending id (the largest a run saw) becomes the watermark once it is a lag old; the
    run's own largest id becomes the next pending one."""
    if state.pending_at is None or state.pending_at <= now - timedelta(seconds=WATERMARK_LAG_S):
        state.watermark_id = state.pending_id
        state.pending_id, state.pending_at = top, now
    state.rolled_through = cutoff
    state.hours_through = _hour(cutoff)
    state.save()


def rollups_purge_old(*, days: int, batch: int = 10_000) -> int:
    """Delete up to `batch` minute rows and as many hour rows older than `days`; return how
    many went. Bounded, as calls_purge_old is, so that one run never holds a long lock."""
    cutoff = timezone.now() - timedelta(days=days)
    deleted = 0
    for model in (MinuteRollup, HourRollup):
        ids = list(model.objects.filter(start__lt=cutoff).values_list("id", flat=True)[:batch])
        if ids:
            deleted += model.objects.filter(id__in=ids).delete()[0]
    return deleted
