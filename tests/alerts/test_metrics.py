"""Each metric's value on known calls, read from the rollups as the evaluator reads it, and
'backends down' from real /health servers."""
from __future__ import annotations

from decimal import Decimal

import pytest

from alerts.evaluate import rules_evaluate
from alerts.models import State
from alerts.selectors import rule_values
from analytics.rollups import rollups_run
from proxy.models import Backend
from tests.alerts.support import BASE, at, rule_create
from tests.factories import call_create, calls_create

NOW = 30  # seconds after BASE: a 5-minute window is [BASE - 5 min, BASE + 30 s), 330 s


def value(rule, now: float = NOW):
    rollups_run(now=at(now))
    return rule_values([rule], now=at(now))[rule.pk]


def spread(values, field: str = "latency_ms", **fields) -> None:
    """One call per value of `field`, spread over the minute before BASE."""
    for i, v in enumerate(values):
        call_create(created_at=at(-60 + i * 50 / len(values)), **{**fields, field: v})


def test_p99_latency_is_the_nearest_rank_p99_of_the_window(no_rules):
    spread([100.0 * i for i in range(1, 101)])  # 100 ms … 10 s: the 99th value is 9.9 s
    assert value(rule_create(metric="p99_latency")) == pytest.approx(9900, rel=0.02)


def test_ttft_p99_reads_only_calls_with_a_ttft(no_rules):
    spread([10.0 * i for i in range(1, 101)], field="ttft_ms", stream=True)
    calls_create(20, created_at=at(-5), ttft_ms=None, latency_ms=90_000)
    assert value(rule_create(metric="ttft_p99")) == pytest.approx(990, rel=0.02)


def test_error_rate_is_5xx_over_requests(no_rules):
    calls_create(194, created_at=at(-30))
    calls_create(3, created_at=at(-20), status_code=502, error_type="upstream_error")
    calls_create(3, created_at=at(-20), status_code=429, error_type="rate_limited")  # not 5xx
    assert value(rule_create(metric="error_rate")) == pytest.approx(3 / 200)


def test_qps_is_requests_over_the_windows_seconds(no_rules):
    calls_create(66, created_at=at(-100))
    assert value(rule_create(metric="qps")) == pytest.approx(66 / 330)


def test_cost_per_hour_is_the_windows_cost_over_its_hours(no_rules):
    calls_create(66, created_at=at(-100), cost_usd=Decimal("0.01"))
    assert value(rule_create(metric="cost_per_hour")) == pytest.approx(0.66 / 330 * 3600)


def test_a_window_without_calls_has_no_latency_or_error_rate_but_zero_qps_and_cost(no_rules):
    calls_create(5, created_at=at(-600))  # before the window
    assert value(rule_create(metric="p99_latency")) is None
    assert value(rule_create(metric="ttft_p99")) is None
    assert value(rule_create(metric="error_rate")) is None
    assert value(rule_create(metric="qps")) == 0.0
    assert value(rule_create(metric="cost_per_hour")) == 0.0


def test_a_backend_filter_reads_only_that_backends_calls(no_rules):
    calls_create(10, created_at=at(-10), backend="b1", status_code=502)
    calls_create(10, created_at=at(-10), backend="b2")
    assert value(rule_create(metric="error_rate", backend="b1")) == 1.0
    assert value(rule_create(metric="error_rate", backend="b2")) == 0.0


def test_the_window_includes_calls_not_rolled_up_yet(no_rules):
    calls_create(4, created_at=at(-30), status_code=503)
    rollups_run(now=at(0))
    calls_create(4, created_at=at(20))  # after the last run's cutoff: read raw
    rule = rule_create(metric="error_rate")
    assert rule_values([rule], now=at(NOW))[rule.pk] == pytest.approx(0.5)


@pytest.fixture
def pool(no_rules, http_server, dead_url):
    """up: answers /health 200; sick: 503; gone: nothing listens; off: disabled."""
    sick = type(http_server)()
    sick.health_status = 503
    sick.thread.start()
    Backend.objects.create(name="up", base_url=http_server.url, model="m")
    Backend.objects.create(name="sick", base_url=sick.url, model="m")
    Backend.objects.create(name="gone", base_url=dead_url, model="m")
    Backend.objects.create(name="off", base_url=dead_url, model="m", enabled=False)
    yield
    sick.shutdown()
    sick.server_close()


def test_backends_down_counts_the_enabled_backends_whose_health_fails(pool):
    assert value(rule_create(metric="backend_down", threshold=0)) == 2.0


def test_backend_down_of_one_backend_is_1_when_down_and_0_when_up(pool):
    assert value(rule_create(metric="backend_down", backend="sick")) == 1.0
    assert value(rule_create(metric="backend_down", backend="gone")) == 1.0
    assert value(rule_create(metric="backend_down", backend="up")) == 0.0


def test_backend_down_of_a_disabled_or_unknown_backend_has_no_data(pool):
    assert value(rule_create(metric="backend_down", backend="off")) is None
    assert value(rule_create(metric="backend_down", backend="nope")) is None


def test_a_down_backend_fires_its_rule(pool):
    rule = rule_create(metric="backend_down", backend="sick", threshold=0, for_s=0)
    assert rules_evaluate(now=BASE).fired == 1
    rule.refresh_from_db()
    assert (rule.state, rule.last_value) == (State.FIRING, 1.0)
