"""The rule state machine over real calls and rollups: pending, firing once after `for`,
resolving once, the history it leaves, and runs that overlap."""
from __future__ import annotations

import importlib
import threading

import pytest
from django.apps import apps
from django.db import connection

from alerts.evaluate import rule_step, rules_evaluate
from alerts.models import AlertEvent, AlertRule, EventKind, NotifyStatus, State
from alerts.tasks import alerts_evaluate
from analytics.rollups import rollups_run
from config.celery import app
from tests.alerts.support import at, evaluate_at, rule_create
from tests.factories import call_create, calls_create

SLOW, FAST = 5000.0, 100.0


def slow_calls(count: int = 5, *, seconds_before_base: float = 10, **fields) -> None:
    """Calls of 5 s each just before BASE: a P99 above the rules' 1000 ms."""
    for _ in range(count):
        call_create(created_at=at(-seconds_before_base), latency_ms=SLOW, **fields)


def events(rule: AlertRule) -> list[tuple[str, object]]:
    return list(rule.events.order_by("at", "id").values_list("kind", "at"))


def test_the_default_rules_exist(db):
    rules = {r.name: r for r in AlertRule.objects.all()}
    latency, errors = rules["P99 latency above 10 s"], rules["Error rate above 1 %"]
    assert (latency.metric, latency.comparison, latency.threshold) == ("p99_latency", "gt", 10000)
    assert (errors.metric, errors.comparison, errors.threshold) == ("error_rate", "gt", 0.01)
    assert {(r.window_minutes, r.for_s, r.enabled) for r in (latency, errors)} == {(5, 60, True)}


def test_the_default_rules_migration_creates_them_once(no_rules):
    migration = importlib.import_module("alerts.migrations.0002_default_rules")
    migration.rules_create(apps, None)
    migration.rules_create(apps, None)
    assert AlertRule.objects.count() == 2


def test_it_is_pending_before_for_and_fires_after(no_rules):
    rule = rule_create(for_s=60)
    slow_calls()

    evaluate_at(0)
    rule.refresh_from_db()
    assert (rule.state, rule.since) == (State.PENDING, at(0))
    assert rule.last_value == pytest.approx(SLOW, rel=0.02)

    evaluate_at(59)
    rule.refresh_from_db()
    assert rule.state == State.PENDING and not rule.events.exists()

    evaluate_at(60)
    rule.refresh_from_db()
    assert (rule.state, rule.since) == (State.FIRING, at(60))
    assert events(rule) == [(EventKind.FIRED, at(60))]


def test_for_zero_fires_at_the_first_bad_evaluation(no_rules):
    rule = rule_create(for_s=0)
    slow_calls()
    assert evaluate_at(0).fired == 1
    rule.refresh_from_db()
    assert rule.state == State.FIRING


def test_a_condition_that_stops_before_for_never_fires(no_rules):
    rule = rule_create(for_s=60, window_minutes=1)
    slow_calls(seconds_before_base=50)
    evaluate_at(30)  # pending
    evaluate_at(61)  # the slow calls have left the 1-minute window: no data, condition false
    evaluate_at(121)
    rule.refresh_from_db()
    assert (rule.state, rule.since) == (State.OK, None)
    assert not rule.events.exists()


def test_it_fires_once_while_it_stays_bad(no_rules):
    rule = rule_create(for_s=30)
    slow_calls()
    results = [evaluate_at(s) for s in range(0, 240, 15)]
    assert sum(r.fired for r in results) == 1
    assert events(rule) == [(EventKind.FIRED, at(30))]
    rule.refresh_from_db()
    assert (rule.state, rule.since) == (State.FIRING, at(30))


def test_it_resolves_once_when_good_again(no_rules):
    rule = rule_create(for_s=0, window_minutes=1)
    slow_calls()
    evaluate_at(0)
    # From BASE + 1 min the window starts at BASE: only fast calls in it.
    calls_create(5, created_at=at(70), latency_ms=FAST)
    results = [evaluate_at(s) for s in (75, 90, 105, 120)]
    assert [r.resolved for r in results] == [1, 0, 0, 0]
    assert events(rule) == [(EventKind.FIRED, at(0)), (EventKind.RESOLVED, at(75))]
    rule.refresh_from_db()
    assert (rule.state, rule.since) == (State.OK, None)
    assert rule.last_value == pytest.approx(FAST, rel=0.02)


def test_no_data_resolves_a_firing_rule(no_rules):
    rule = rule_create(for_s=0, window_minutes=1)
    slow_calls()
    evaluate_at(0)
    evaluate_at(75)  # no calls at all in [BASE, BASE + 75 s)
    rule.refresh_from_db()
    assert rule.state == State.OK and rule.last_value is None
    assert [k for k, _ in events(rule)] == [EventKind.FIRED, EventKind.RESOLVED]


def test_history_rows_hold_value_threshold_times_and_outcome(no_rules):
    rule = rule_create(for_s=0, window_minutes=1, threshold=1000)
    slow_calls()
    evaluate_at(0)
    calls_create(3, created_at=at(70), latency_ms=FAST)
    evaluate_at(80)

    fired, resolved = rule.events.order_by("at")
    assert (fired.kind, fired.at, fired.started_at, fired.threshold) == (
        EventKind.FIRED, at(0), at(0), 1000)
    assert fired.value == pytest.approx(SLOW, rel=0.02)
    assert fired.condition == "P99 latency (ms) > 1000"
    assert (resolved.kind, resolved.at, resolved.started_at, resolved.resolved_at) == (
        EventKind.RESOLVED, at(80), at(0), at(80))
    assert resolved.value == pytest.approx(FAST, rel=0.02)
    # No webhook anywhere: logged only, and recorded so.
    assert {e.notify_status for e in (fired, resolved)} == {NotifyStatus.LOGGED}
    assert fired.notified_at == at(0)


def test_a_route_filter_reads_only_that_routes_calls(no_rules):
    quiet = rule_create(route="fast-route", for_s=0)
    loud = rule_create(route="slow-route", for_s=0)
    slow_calls(route="slow-route")
    calls_create(5, created_at=at(-10), route="fast-route", latency_ms=FAST)

    evaluate_at(0)
    quiet.refresh_from_db()
    loud.refresh_from_db()
    assert quiet.state == State.OK and quiet.last_value == pytest.approx(FAST, rel=0.02)
    assert loud.state == State.FIRING and loud.last_value == pytest.approx(SLOW, rel=0.02)


def test_a_below_comparison_fires_under_the_threshold(no_rules):
    rule = rule_create(metric="qps", comparison="lt", threshold=1.0, for_s=0)
    calls_create(3, created_at=at(-10))
    evaluate_at(0)
    rule.refresh_from_db()
    assert rule.state == State.FIRING and rule.last_value < 1.0


def test_a_disabled_rule_is_not_evaluated_and_goes_quiet(no_rules):
    rule = rule_create(for_s=0)
    slow_calls()
    evaluate_at(0)
    AlertRule.objects.filter(pk=rule.pk).update(enabled=False)
    evaluate_at(15)
    rule.refresh_from_db()
    assert (rule.state, rule.evaluated_at) == (State.OK, at(0))
    assert rule.events.count() == 1


def test_a_run_with_an_older_clock_leaves_a_rule_alone(no_rules):
    rule = rule_create(for_s=0)
    slow_calls()
    evaluate_at(30)
    assert rules_evaluate(now=at(15)).evaluated == 0
    assert rule.events.count() == 1


def test_a_notification_left_pending_by_a_dead_worker_is_sent_by_the_next_run(no_rules):
    rule = rule_create()
    event = AlertEvent.objects.create(rule=rule, kind=EventKind.FIRED, at=at(0),
                                      started_at=at(0), value=1.0, threshold=1.0,
                                      condition="x", notify_status=NotifyStatus.PENDING)
    assert rules_evaluate(now=at(15)).notified == 1
    event.refresh_from_db()
    assert (event.notify_status, event.notified_at) == (NotifyStatus.LOGGED, at(15))


@pytest.mark.parametrize(("state", "holds", "elapsed", "expected"), [
    (State.OK, False, 0, (State.OK, None)),
    (State.OK, True, 0, (State.PENDING, None)),
    (State.PENDING, True, 59, (State.PENDING, None)),
    (State.PENDING, True, 60, (State.FIRING, EventKind.FIRED)),
    (State.PENDING, False, 30, (State.OK, None)),
    (State.FIRING, True, 600, (State.FIRING, None)),
    (State.FIRING, False, 600, (State.OK, EventKind.RESOLVED)),
])
def test_the_state_machine_steps(state, holds, elapsed, expected):
    step = rule_step(state=state, since=at(0), holds=holds, for_s=60, now=at(elapsed))
    assert (step.state, step.event) == expected


def test_two_workers_at_once_fire_it_once(transactional_db):
    AlertRule.objects.all().delete()
    rule = rule_create(for_s=0)
    slow_calls()
    rollups_run(now=at(0))
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker():
        try:
            barrier.wait()
            rules_evaluate(now=at(0))
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert events(rule) == [(EventKind.FIRED, at(0))]
    assert AlertEvent.objects.get().notify_status == NotifyStatus.LOGGED


def test_beat_runs_the_task_every_15_seconds_and_the_task_evaluates(no_rules):
    entry = app.conf.beat_schedule["alerts-evaluate"]
    assert (entry["task"], entry["schedule"]) == ("alerts.tasks.alerts_evaluate", 15.0)
    rule_create(metric="qps", comparison="lt", threshold=1.0, for_s=0)  # no traffic: fires
    assert alerts_evaluate() == 1
