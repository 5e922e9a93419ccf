"""The summary's numbers for a known set of calls, checked by hand: read from the raw calls,
and read from the rollups (with the calls since the last run), with the same answers."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from analytics import histogram
from analytics.models import Call
from analytics.rollups import rollups_run
from analytics.selectors import series_compute, summary_compute
from tests.factories import call_create

NOW = timezone.now()
# The summary's window: the 15 whole minutes before NOW's minute, and that minute so far.
WINDOW_S = 15 * 60 + NOW.second + NOW.microsecond / 1e6


def estimate(exact: float) -> float:
    """What the summary reports for a percentile whose exact value is `exact`: its bucket's
    estimate, within 2 % of it."""
    value = histogram.bucket_estimate(histogram.bucket_index(exact))
    assert abs(value - exact) / exact < 0.02
    return value


def make_call(*, route: str = "default", status: int = 200, latency: float = 100.0,
              ttft: float | None = None, ago_s: float = 10.0, **extra) -> Call:
    fields = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": Decimal(0),
              "baseline_cost_usd": Decimal(0), **extra}
    return call_create(created_at=NOW - timedelta(seconds=ago_s), route=route,
                       status_code=status, latency_ms=latency, ttft_ms=ttft, **fields)


@pytest.fixture(params=["raw", "rollups"])
def source(request, db):
    """Call it once the calls are written: "rollups" rolls them up first."""
    def ready():
        if request.param == "rollups":
            assert rollups_run(now=NOW).minutes > 0
    return ready


@pytest.fixture
def known_calls(source):
    # 100 calls on "default": latencies 1..100 ms, spread over the last 12 minutes; calls 1-3
    # fail with 502; the streamed half (even i) has TTFT i/2 ms; each has 10 prompt + 5
    # completion tokens.
    for i in range(1, 101):
        make_call(latency=float(i), status=502 if i <= 3 else 200, ago_s=10 + 7 * i,
                  ttft=i / 2 if i % 2 == 0 else None, stream=i % 2 == 0,
                  prompt_tokens=10, completion_tokens=5,
                  cost_usd=Decimal("0.001"), baseline_cost_usd=Decimal("0.004"),
                  cache="exact" if i > 90 else "miss")
    # 4 calls on "small": 1000 ms each, one 400 (a client error, not an error of the pool).
    for i in range(1, 5):
        make_call(route="small", latency=1000.0, status=400 if i == 1 else 200)
    # Outside the 15-minute window: must not count.
    make_call(latency=99999.0, ago_s=16 * 60)
    source()


def test_the_summary_matches_hand_computed_numbers(known_calls):
    s = summary_compute(minutes=15, now=NOW)

    assert s["requests"] == 104
    assert s["qps"] == pytest.approx(104 / WINDOW_S)
    # 104 latencies: 1..100 and four 1000s. Rank ceil(.99*104)=103 -> 1000; ceil(.5*104)=52 -> 52.
    assert s["p99_ms"] == estimate(1000.0)
    assert s["p50_ms"] == estimate(52.0)
    assert s["p95_ms"] == estimate(99.0)  # rank ceil(.95*104)=99
    # TTFTs 1..50 (i/2 for even i): P50 rank 25 -> 25, P99 rank ceil(49.5)=50 -> 50.
    assert (s["ttft_p50_ms"], s["ttft_p99_ms"]) == (estimate(25.0), estimate(50.0))
    assert s["error_rate"] == pytest.approx(3 / 104)
    assert s["cache_hit_rate"] == pytest.approx(10 / 104)
    assert (s["prompt_tokens"], s["completion_tokens"]) == (1000, 500)
    assert s["cost_usd"] == 0.1
    assert s["savings_usd"] == 0.3


def test_the_summary_splits_by_route(known_calls):
    by_route = {r["route"]: r for r in summary_compute(minutes=15, now=NOW)["by_route"]}

    assert set(by_route) == {"default", "small"}
    assert by_route["default"]["requests"] == 100
    assert by_route["default"]["p99_ms"] == estimate(99.0)
    assert by_route["default"]["error_rate"] == pytest.approx(0.03)
    assert by_route["small"]["p50_ms"] == estimate(1000.0)
    assert by_route["small"]["error_rate"] == 0.0


def test_an_empty_window_has_zero_traffic_and_no_percentiles(db):
    s = summary_compute(minutes=5, now=NOW)

    assert (s["requests"], s["qps"], s["error_rate"]) == (0, 0.0, 0.0)
    assert s["p99_ms"] is None and s["by_route"] == []


def test_the_series_puts_each_call_in_its_minute(source):
    make_call(ago_s=5, latency=10.0)
    make_call(ago_s=5, latency=30.0)
    make_call(ago_s=185, latency=20.0)
    source()

    series = series_compute(minutes=15, bucket_s=60, now=NOW)

    assert len(series) == 15
    assert sum(b["requests"] for b in series) == 3
    assert series[-1]["requests"] + series[-2]["requests"] == 2
    busiest = max(series, key=lambda b: b["requests"])
    assert busiest["requests"] == 2 and busiest["p99_ms"] == estimate(30.0)
    assert busiest["qps"] == pytest.approx(2 / 60)
    lone = next(b for b in series if b["requests"] == 1)
    assert lone["p50_ms"] == estimate(20.0)
    assert NOW - timedelta(seconds=245) < lone["t"] <= NOW - timedelta(seconds=185)


def test_the_series_wants_whole_minute_buckets(db):
    with pytest.raises(ValueError):
        series_compute(minutes=15, bucket_s=30, now=NOW)


def test_the_window_is_whole_minutes_and_the_current_one_so_far(db):
    start = NOW.replace(second=0, microsecond=0) - timedelta(minutes=15)
    call_create(created_at=start)  # the first instant of the window
    call_create(created_at=start - timedelta(microseconds=1))
    call_create(created_at=NOW - timedelta(microseconds=1))

    s = summary_compute(minutes=15, now=NOW)

    assert s["requests"] == 2
    assert s["qps"] == pytest.approx(2 / WINDOW_S)
