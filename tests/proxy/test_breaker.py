"""The circuit breaker's state machine and the retry budget, driven by a controllable clock."""
import pytest

from proxy.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerPolicy
from proxy.window import WindowCounter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


def breaker(clock, **policy) -> Breaker:
    defaults = {"failures": 3, "error_rate": 0.5, "window_s": 10, "min_requests": 10,
                "cooldown_s": 5}
    return Breaker("b1", BreakerPolicy(**{**defaults, **policy}), clock=clock)


def test_it_opens_after_consecutive_failures(clock):
    b = breaker(clock)

    b.failure()
    b.failure()
    assert b.state == CLOSED and b.available()
    b.failure()

    assert b.state == OPEN and not b.available()


def test_a_success_resets_the_consecutive_count(clock):
    b = breaker(clock, min_requests=100)

    for _ in range(5):
        b.failure()
        b.failure()
        b.success()

    assert b.state == CLOSED


def test_it_opens_on_the_error_rate_over_the_window(clock):
    b = breaker(clock, failures=100)

    for _ in range(5):
        b.success()
        b.failure()
        clock.advance(1)

    assert b.state == OPEN
    assert "error rate 5/10" in b.reason


def test_the_error_rate_needs_the_minimum_number_of_requests(clock):
    b = breaker(clock, failures=100, min_requests=20)

    for _ in range(5):
        b.success()
        b.failure()

    assert b.state == CLOSED
    assert b.error_rate() == 0.5


def test_failures_older_than_the_window_are_forgotten(clock):
    b = breaker(clock, failures=100, min_requests=4)
    b.failure()
    b.failure()
    b.failure()
    clock.advance(11)

    b.failure()
    b.success()
    b.success()
    b.success()

    assert b.state == CLOSED
    assert b.error_rate() == 0.25


def test_open_it_waits_the_cooldown_then_lets_exactly_one_probe_through(clock):
    b = breaker(clock)
    b.trip("health probe failed")
    clock.advance(4.9)
    assert not b.available()
    assert b.retry_after_s() == pytest.approx(0.1)

    clock.advance(0.2)
    assert b.available()
    b.admit()

    assert b.state == HALF_OPEN
    assert not b.available()  # the probe is in flight: nobody else


def test_a_successful_probe_closes_it(clock):
    b = breaker(clock)
    b.trip("down")
    clock.advance(5)
    b.admit()

    b.success()

    assert b.state == CLOSED and b.available()


def test_a_failed_probe_opens_it_for_another_cooldown(clock):
    b = breaker(clock)
    b.trip("down")
    clock.advance(5)
    b.admit()

    b.failure("refused")

    assert b.state == OPEN and not b.available()
    clock.advance(5)
    assert b.available()


def test_a_probe_the_client_abandoned_frees_the_probe_slot(clock):
    b = breaker(clock)
    b.trip("down")
    clock.advance(5)
    b.admit()

    b.neutral()

    assert b.state == HALF_OPEN and b.available()


def test_state_changes_are_logged(clock, caplog):
    b = breaker(clock)
    with caplog.at_level("INFO", logger="sluice.breaker"):
        b.trip("health probe failed")
        clock.advance(5)
        b.admit()
        b.success()

    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "backend b1: breaker closed -> open (health probe failed)",
        "backend b1: breaker open -> half_open (cooldown over, letting one probe request through)",
        "backend b1: breaker half_open -> closed (probe request succeeded)",
    ]


def test_the_window_counter_sums_only_the_last_seconds(clock):
    window = WindowCounter(3, clock)
    window.add(1, 1)
    clock.advance(1)
    window.add(2, 0)
    clock.advance(1)
    window.add(3, 0)
    assert window.sums() == (6, 1)

    clock.advance(1)

    assert window.sums() == (5, 0)
    clock.advance(5)
    assert window.sums() == (0, 0)


def test_the_retry_budget_allows_a_share_of_requests_with_a_floor(settings, monkeypatch, clock):
    from proxy.failover import RetryBudget

    settings.SLUICE_RETRY_BUDGET_PERCENT = 20
    settings.SLUICE_RETRY_BUDGET_MIN = 2
    budget = RetryBudget()
    budget._window = WindowCounter(10, clock)

    budget.spend()
    budget.spend()
    assert not budget.allows()  # the floor is used up and no request gives more

    for _ in range(20):
        budget.request()
    assert budget.allows()  # 20 % of 20 requests: 4 retries
    budget.spend()
    budget.spend()
    assert not budget.allows()

    clock.advance(10)
    assert budget.allows()  # a new window


def test_a_passing_health_probe_ends_the_cooldown_for_one_probe_request(clock):
    b = breaker(clock, cooldown_s=30)
    b.trip("refused")
    assert not b.available()

    b.health_ok()

    assert b.state == OPEN and b.available()
    b.admit()
    assert b.state == HALF_OPEN and not b.available()


def test_a_passing_health_probe_leaves_a_closed_breaker_alone(clock):
    b = breaker(clock)
    b.failure()

    b.health_ok()

    assert b.state == CLOSED and b.consecutive_failures == 1
