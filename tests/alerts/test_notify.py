"""Notifications: the log lines, the webhook's JSON (a real HTTP server on 127.0.0.1), its
retries with backoff, and that a dead webhook never stops an evaluation."""
from __future__ import annotations

import logging

import pytest

from alerts.evaluate import notifications_send
from alerts.models import AlertEvent, EventKind, NotifyStatus, State
from alerts.notify import webhook_post
from tests.alerts.support import at, evaluate_at, rule_create
from tests.factories import calls_create


def bad_then_good(rule) -> None:
    """Fire at BASE, resolve at BASE + 75 s (the rule's window: 1 minute)."""
    calls_create(5, created_at=at(-10), latency_ms=5000.0)
    evaluate_at(0)
    calls_create(5, created_at=at(70), latency_ms=100.0)
    evaluate_at(75)


def test_the_webhook_receives_json_on_fire_and_on_resolve(no_rules, http_server):
    rule = rule_create(for_s=0, window_minutes=1, route="chat-default",
                       webhook_url=http_server.url + "/hook")
    bad_then_good(rule)

    fired, resolved = (r["json"] for r in http_server.requests)
    assert {r["path"] for r in http_server.requests} == {"/hook"}
    assert {r["content_type"] for r in http_server.requests} == {"application/json"}
    assert fired["rule"] == rule.name and fired["metric"] == "p99_latency"
    assert fired["value"] == pytest.approx(5000, rel=0.02) and fired["threshold"] == 1000
    assert (fired["state"], fired["started_at"], fired["resolved_at"]) == (
        "firing", at(0).isoformat(), None)
    assert (fired["route"], fired["backend"], fired["window_minutes"]) == ("chat-default", None, 1)
    assert fired["url"] == "https://sluice.example.com/dashboard/alerts/"
    assert fired["text"].startswith(f"[FIRING] {rule.name}: P99 latency (ms) > 1000")
    assert (resolved["state"], resolved["started_at"], resolved["resolved_at"]) == (
        "resolved", at(0).isoformat(), at(75).isoformat())
    assert resolved["value"] == pytest.approx(100, rel=0.02)
    assert set(rule.events.values_list("notify_status", "notify_attempts")) == {
        (NotifyStatus.SENT, 1)}


def test_a_rule_without_a_webhook_uses_the_global_one(no_rules, http_server, settings):
    settings.SLUICE_ALERT_WEBHOOK_URL = http_server.url
    rule_create(for_s=0)
    calls_create(5, created_at=at(-10), latency_ms=5000.0)
    evaluate_at(0)
    assert [r["json"]["state"] for r in http_server.requests] == ["firing"]


def test_the_webhook_is_retried_with_backoff_after_a_500(no_rules, http_server, settings):
    settings.SLUICE_ALERT_WEBHOOK_BACKOFF_S = 0.2
    http_server.statuses = [500, 200]
    rule = rule_create(for_s=0, webhook_url=http_server.url)
    calls_create(5, created_at=at(-10), latency_ms=5000.0)
    evaluate_at(0)

    first, second = http_server.requests
    assert first["json"] == second["json"]
    assert second["at"] - first["at"] >= 0.2
    event = rule.events.get()
    assert (event.notify_status, event.notify_attempts, event.notify_error) == (
        NotifyStatus.SENT, 2, "")


def test_backoff_doubles_between_attempts(http_server, settings):
    settings.SLUICE_ALERT_WEBHOOK_BACKOFF_S = 0.1
    http_server.statuses = [503, 503, 200]
    assert webhook_post(http_server.url, {"a": 1}).attempts == 3
    first, second, third = (r["at"] for r in http_server.requests)
    assert second - first >= 0.1 and third - second >= 0.2


def test_a_webhook_that_keeps_failing_is_given_up_after_its_attempts(http_server):
    http_server.statuses = [500, 502, 503, 500]
    delivery = webhook_post(http_server.url, {"a": 1})
    assert (delivery.ok, delivery.attempts, delivery.error) == (False, 3, "HTTP 503")
    assert len(http_server.requests) == 3


def test_a_4xx_answer_is_not_retried(http_server):
    http_server.statuses = [404]
    delivery = webhook_post(http_server.url, {"a": 1})
    assert (delivery.ok, delivery.attempts, delivery.error) == (False, 1, "HTTP 404")


def test_a_url_that_is_not_http_fails_without_raising():
    delivery = webhook_post("nope://x", {"a": 1})
    assert (delivery.ok, delivery.attempts, delivery.error) == (False, 0, "not an http(s) URL")


def test_a_dead_webhook_never_breaks_evaluation(no_rules, dead_url, caplog):
    dead = rule_create(for_s=0, webhook_url=dead_url + "/hook")
    logged = rule_create(for_s=0, metric="qps", threshold=0)
    calls_create(5, created_at=at(-10), latency_ms=5000.0)

    result = evaluate_at(0)

    assert (result.evaluated, result.fired, result.notified) == (2, 2, 2)
    for rule in (dead, logged):
        rule.refresh_from_db()
        assert rule.state == State.FIRING
    event = dead.events.get()
    assert (event.notify_status, event.notify_attempts) == (NotifyStatus.FAILED, 3)
    assert "ConnectionRefusedError" in event.notify_error
    assert logged.events.get().notify_status == NotifyStatus.LOGGED
    assert "failed after 3 attempt(s)" in caplog.text


def test_it_logs_a_warning_on_fire_and_info_on_resolve(no_rules, caplog):
    caplog.set_level(logging.INFO, logger="sluice.alerts")
    rule = rule_create(for_s=0, window_minutes=1)
    bad_then_good(rule)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "sluice.alerts"]
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert lines[0][1].startswith(f"[FIRING] {rule.name}")
    assert lines[1][1].startswith(f"[RESOLVED] {rule.name}")


def test_an_event_is_sent_once_even_when_two_runs_see_it_pending(no_rules, http_server):
    rule = rule_create(webhook_url=http_server.url)
    AlertEvent.objects.create(rule=rule, kind=EventKind.FIRED, at=at(0), started_at=at(0),
                              value=2.0, threshold=1.0, condition="x")
    assert notifications_send(now=at(0)) == 1
    assert notifications_send(now=at(1)) == 0
    assert len(http_server.requests) == 1
