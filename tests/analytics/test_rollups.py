"""Minute and hour rollups: what a run writes, that it writes it once whatever happens twice,
that late and out-of-order rows are counted in, and that reads from rollups equal reads from
the calls."""
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from django.db import connection, transaction
from django.db.models import F, Sum
from django.utils import timezone

from analytics import histogram
from analytics.aggregates import bucket_sql
from analytics.models import Call, HourRollup, MinuteRollup, RollupState
from analytics.rollups import SPAN_MINUTES, WATERMARK_LAG_S, minute_runs, rollups_run
from analytics.selectors import Filters, Plan, summary_compute, window_plan
from analytics.tasks import rollups_update
from tests.factories import call_create

BASE = timezone.now().replace(second=0, microsecond=0)  # a minute's start
NOW = BASE + timedelta(seconds=30)


def at(minutes_ago: float, **fields) -> Call:
    """A call `minutes_ago` before BASE."""
    return call_create(created_at=BASE - timedelta(minutes=minutes_ago), **fields)


def rolled(field: str = "requests", model=MinuteRollup) -> int:
    return model.objects.aggregate(n=Sum(field))["n"] or 0


def test_a_run_writes_one_row_per_minute_and_dimensions(db):
    at(5.5, route="a", backend="b1")
    at(5.4, route="a", backend="b1")
    at(5.3, route="a", backend="b2")
    at(3.5, route="b", api_key_id=7)

    assert rollups_run(now=NOW).minutes == 2

    rows = MinuteRollup.objects.order_by("start", "backend")
    assert [(r.start, r.route, r.backend, r.api_key_id, r.requests) for r in rows] == [
        (BASE - timedelta(minutes=6), "a", "b1", 0, 2),
        (BASE - timedelta(minutes=6), "a", "b2", 0, 1),
        (BASE - timedelta(minutes=4), "b", "sim-1", 7, 1),
    ]


def test_the_row_holds_the_sums_of_its_calls(db):
    at(2.5, status_code=502, error_type="upstream_error", latency_ms=900.0, retries=2,
       fallback_used=True, cache="miss", queue_ms=40.0)
    at(2.4, status_code=200, stream=True, ttft_ms=30.0, latency_ms=300.0, cache="exact",
       cost_usd=D(0), baseline_cost_usd=D("0.02"), saved_cache_usd=D("0.02"))
    at(2.3, status_code=429, error_type="rate_limited", latency_ms=1.0, cache="bypass")
    at(2.2, decision="small", prompt_tokens=1000, completion_tokens=10, prompt_tokens_saved=80,
       cost_usd=D("0.0012345678"), baseline_cost_usd=D("0.05"), saved_routing_usd=D("0.04"),
       saved_compression_usd=D("0.0087654322"), cache="semantic", saved_cache_usd=D(0))

    rollups_run(now=NOW)

    [row] = MinuteRollup.objects.all()
    assert (row.requests, row.errors, row.errors_by_type) == (
        4, 1, {"upstream_error": 1, "rate_limited": 1})
    assert (row.cache_exact, row.cache_semantic, row.cache_miss, row.cache_bypass,
            row.cache_skipped) == (1, 1, 1, 1, 0)
    assert (row.down_routed, row.streams, row.retries, row.fallbacks) == (1, 1, 2, 1)
    assert (row.prompt_tokens, row.completion_tokens, row.prompt_tokens_saved) == (
        3 * 12 + 1000, 3 * 30 + 10, 80)
    assert row.cost_usd == D("0.0001") * 2 + D("0.0012345678")
    assert row.baseline_cost_usd == D("0.0003") * 2 + D("0.07")
    assert (row.saved_cache_exact_usd, row.saved_cache_semantic_usd) == (D("0.02"), D(0))
    assert (row.saved_routing_usd, row.saved_compression_usd) == (D("0.04"), D("0.0087654322"))
    assert (row.latency_ms_sum, row.ttft_count, row.ttft_ms_sum) == (1321.0, 1, 30.0)
    assert (row.queue_count, row.queue_ms_sum) == (1, 40.0)
    assert (histogram.decode(row.latency_hist) == histogram.from_values(
        [900.0, 300.0, 1.0, 120.0])).all()
    assert (histogram.decode(row.ttft_hist) == histogram.from_values([30.0])).all()


def _snapshot() -> list[tuple]:
    return [tuple(getattr(r, f.name) for f in MinuteRollup._meta.fields if f.name != "id")
            for r in MinuteRollup.objects.order_by("start", "route", "backend")]


def test_a_second_run_changes_nothing(db):
    for i in range(30):
        at(i / 3, route=f"r{i % 3}", latency_ms=10.0 + i)
    rollups_run(now=NOW)
    before = _snapshot()

    again = rollups_run(now=NOW + timedelta(seconds=15))

    assert again.minutes == 0  # every minute's count still matches
    assert _snapshot() == before


def test_a_minute_recomputed_twice_is_counted_once(db):
    at(3.5)
    at(3.5)
    rollups_run(now=NOW)
    MinuteRollup.objects.update(requests=F("requests") + 1)  # as if half a run had been lost

    assert rollups_run(now=NOW + timedelta(seconds=15)).minutes == 1
    assert rolled() == 2


def test_late_records_are_counted_in(db):
    at(10.5)
    rollups_run(now=NOW)
    assert summary_compute(minutes=15, now=NOW)["requests"] == 1

    # Replayed from the journal long after its minute ended: a new id in an old minute.
    at(10.5, request_id="replayed")
    rollups_run(now=NOW + timedelta(seconds=15))

    assert rolled() == 2
    assert summary_compute(minutes=15, now=NOW + timedelta(seconds=15))["requests"] == 2


def test_rows_committed_out_of_id_order_are_counted_in(transactional_db):
    inserted, release = threading.Event(), threading.Event()

    def slow_writer():
        with transaction.atomic():  # takes its id first, commits last
            at(2.5, request_id="slow")
            inserted.set()
            release.wait(10)
        connection.close()

    writer = threading.Thread(target=slow_writer)
    writer.start()
    assert inserted.wait(10)
    at(2.4, request_id="fast")
    rollups_run(now=NOW)
    rollups_run(now=NOW + timedelta(seconds=WATERMARK_LAG_S / 2))  # still open: within the lag
    assert rolled() == 1  # "slow" is not visible yet

    release.set()
    writer.join()
    later = NOW + timedelta(seconds=2 * WATERMARK_LAG_S)
    rollups_run(now=later)

    slow = Call.objects.get(request_id="slow").id
    assert slow < Call.objects.get(request_id="fast").id
    assert rolled() == 2
    assert summary_compute(minutes=15, now=later)["requests"] == 2


def test_the_watermark_trails_the_largest_id_by_the_lag(db):
    at(3)
    top = at(2).id
    lag = timedelta(seconds=WATERMARK_LAG_S)

    assert rollups_run(now=NOW).watermark_id == 0
    assert rollups_run(now=NOW + lag / 2).watermark_id == 0  # seen only half a lag ago
    assert rollups_run(now=NOW + lag).watermark_id == top


def test_the_current_minute_is_rolled_up_to_the_cutoff_and_the_rest_read_raw(db):
    call_create(created_at=NOW - timedelta(seconds=20))
    rollups_run(now=NOW)
    call_create(created_at=NOW - timedelta(seconds=1))  # after the cutoff: not rolled up

    state = RollupState.objects.get()
    assert state.rolled_through == NOW - timedelta(seconds=2)
    assert rolled() == 1
    assert summary_compute(minutes=5, now=NOW)["requests"] == 2


def test_an_ended_hour_gets_its_rows_summed_from_its_minutes(db):
    hour = BASE.replace(minute=0) - timedelta(hours=2)
    for minute in (0, 17, 59):
        call_create(created_at=hour + timedelta(minutes=minute, seconds=5), latency_ms=10.0 *
                    (minute + 1), cost_usd=D("0.0000000001"), error_type="timeout")
    call_create(created_at=hour + timedelta(minutes=59, seconds=59), route="other")

    rollups_run(now=NOW)

    rows = {r.route: r for r in HourRollup.objects.all()}
    assert set(rows) == {"chat-default", "other"}
    row = rows["chat-default"]
    assert (row.start, row.requests, row.cost_usd) == (hour, 3, D("0.0000000003"))
    assert row.errors_by_type == {"timeout": 3}
    assert (histogram.decode(row.latency_hist) ==
            histogram.from_values([10.0, 180.0, 600.0])).all()
    assert rolled(model=HourRollup) == rolled() == 4


def test_the_current_hour_is_rolled_up_to_the_cutoff(db):
    call_create(created_at=BASE - timedelta(minutes=BASE.minute), request_id="hour-start")
    call_create(created_at=NOW - timedelta(seconds=10))

    rollups_run(now=NOW)

    [row] = HourRollup.objects.all()
    assert (row.start, row.requests) == (BASE.replace(minute=0), 2)


def test_a_late_record_in_an_ended_hour_updates_the_hour(db):
    hour = BASE.replace(minute=0) - timedelta(hours=3)
    call_create(created_at=hour + timedelta(minutes=30))
    rollups_run(now=NOW)
    call_create(created_at=hour + timedelta(minutes=31))

    rollups_run(now=NOW + timedelta(seconds=15))

    assert rolled(model=HourRollup) == 2


def _spread_calls() -> None:
    """Calls over the last three hours and a bit: several routes, keys and outcomes."""
    for i in range(240):
        at(i * 0.8 - 0.3, route=("a", "b", "c")[i % 3], backend=f"b{i % 2}",
           api_key_id=None if i % 4 == 0 else i % 4, status_code=503 if i % 17 == 0 else 200,
           latency_ms=5.0 * (1 + i % 50) ** 1.5, ttft_ms=None if i % 2 else 2.0 + i,
           cache=("miss", "exact", "semantic", "bypass")[i % 4],
           cost_usd=D(i) / 10**7, baseline_cost_usd=D(3 * i) / 10**7,
           saved_cache_usd=D(2 * i) / 10**7)


@pytest.mark.parametrize("minutes", [15, 65, 200, 7 * 24 * 60])
def test_the_summary_reads_the_same_from_rollups_as_from_the_calls(db, minutes):
    _spread_calls()
    raw = summary_compute(minutes=minutes, now=NOW)

    rollups_run(now=NOW - timedelta(seconds=7))
    assert HourRollup.objects.exists()

    assert summary_compute(minutes=minutes, now=NOW) == raw


def test_filters_narrow_the_summary_by_route_model_backend_and_key(db):
    _spread_calls()
    rollups_run(now=NOW)

    def requests(**filters) -> int:
        return summary_compute(minutes=240, now=NOW, filters=Filters(**filters))["requests"]

    assert requests(route="a") == Call.objects.filter(route="a").count() == 80
    assert requests(backend="b1", route="b") == Call.objects.filter(backend="b1",
                                                                     route="b").count()
    assert requests(api_key_id=0) == Call.objects.filter(api_key_id__isnull=True).count() == 60
    assert requests(api_key_id=2, served_model="qwen2.5-7b") == 60
    assert requests(served_model="other") == 0


def test_a_run_is_skipped_while_another_holds_the_lock(transactional_db):
    RollupState.objects.create(pk=1)
    locked, release = threading.Event(), threading.Event()

    def other_run():
        with transaction.atomic():
            RollupState.objects.select_for_update().get(pk=1)
            locked.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=other_run)
    holder.start()
    assert locked.wait(10)
    try:
        assert rollups_run(now=NOW).skipped
    finally:
        release.set()
        holder.join()
    assert not rollups_run(now=NOW).skipped


def test_minutes_past_the_calls_retention_are_left_alone(db, settings):
    settings.SLUICE_CALL_RETENTION_DAYS = 7
    at(8 * 24 * 60)  # replayed, but its day may already be purged: its minute stays as it is
    at(3)

    assert rollups_run(now=NOW).minutes == 1
    assert rolled() == 1


def test_consecutive_minutes_are_recomputed_in_runs_of_at_most_an_hour():
    minutes = [t(9, 0) + timedelta(minutes=i) for i in range(SPAN_MINUTES + 5)] + [t(12, 0)]

    runs = list(minute_runs(minutes))

    assert [(r[0], len(r)) for r in runs] == [(t(9, 0), SPAN_MINUTES),
                                              (t(10, 0), 5), (t(12, 0), 1)]


def test_the_beat_task_rolls_up(db):
    call_create()

    assert rollups_update() == 1
    assert rolled() == 1


def test_the_database_buckets_values_as_python_does(db):
    values = [0.0, 0.004, 0.01, 0.0100001, 1.0, 1.04, 52.0, 99.0, 1000.0, 3_599_999.0, 5e6]
    values += [1.013**k for k in range(-400, 1200, 7)]
    for value in values:
        call_create(latency_ms=value)

    buckets = Call.objects.annotate(b=bucket_sql("latency_ms")).values_list("latency_ms", "b")

    assert {v: b for v, b in buckets} == {v: histogram.bucket_index(v) for v in values}


T = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def t(hh: int, mm: int, ss: int = 0) -> datetime:
    return T.replace(hour=hh, minute=mm, second=ss)


def test_a_window_reads_hours_up_to_the_cutoff_then_whole_minutes_then_the_rest_raw():
    plan = window_plan(start=t(7, 14, 30), end=t(10, 20, 10), rolled_through=t(10, 19, 58),
                       hours_through=t(10, 0))

    # The 10:00 row holds the current hour's calls up to the cutoff.
    assert plan == Plan(raw=((t(7, 14, 30), t(7, 15)), (t(10, 19, 58), t(10, 20, 10))),
                        minutes=((t(7, 15), t(8, 0)),), hours=((t(8, 0), t(10, 19, 58)),))


def test_a_window_ending_before_the_cutoff_reads_only_whole_hours():
    plan = window_plan(start=t(7, 14, 30), end=t(9, 30, 10), rolled_through=t(10, 19, 58),
                       hours_through=t(10, 0))

    assert plan == Plan(raw=((t(7, 14, 30), t(7, 15)), (t(9, 30), t(9, 30, 10))),
                        minutes=((t(7, 15), t(8, 0)), (t(9, 0), t(9, 30))),
                        hours=((t(8, 0), t(9, 0)),))


def test_a_window_before_the_last_run_ends_at_its_last_whole_minute():
    plan = window_plan(start=t(9, 0), end=t(9, 10, 40), rolled_through=t(10, 19, 58),
                       hours_through=t(10, 0))

    assert plan == Plan(raw=((t(9, 10), t(9, 10, 40)),), minutes=((t(9, 0), t(9, 10)),))


def test_without_rollups_a_window_is_read_raw():
    assert window_plan(start=t(9, 0), end=t(9, 30), rolled_through=None,
                       hours_through=None) == Plan(raw=((t(9, 0), t(9, 30)),))
    assert window_plan(start=t(9, 0, 10), end=t(9, 1), rolled_through=t(9, 0, 50),
                       hours_through=t(9, 0)) == Plan(raw=((t(9, 0, 10), t(9, 1)),))
