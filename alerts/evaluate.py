"""Alert evaluation: the beat task runs `rules_evaluate` every 15 s with the time; tests pass
their own.

A run:

1. reads every enabled rule's metric (`alerts.selectors.rule_values`), outside any
   transaction: the reads and the /health probes take a while and lock nothing;
2. in one transaction, locks the rules with SELECT … FOR UPDATE SKIP LOCKED, steps each one's
   state (`rule_step`) and writes an AlertEvent per fire or resolve, its notification
   pending. A second worker running at the same moment skips the rules the first one holds,
   and one that comes after it finds their new state, so a transition happens once; a run
   whose clock is behind a rule's last evaluation leaves that rule alone;
3. after the commit, sends the pending notifications (its own, and any that a worker which
   died after its commit left), each claimed by a conditional UPDATE so that one worker sends
   it (healthchecks' sendalerts): slow webhooks never hold a lock or a transaction.

Conditions on a metric without data (no calls in the window) are false: a pending rule goes
back to ok, a firing one resolves, since what it fired for is no longer happening.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from alerts import notify
from alerts.models import (
    AlertEvent,
    AlertRule,
    Comparison,
    EventKind,
    NotifyStatus,
    State,
)
from alerts.selectors import rule_values

logger = logging.getLogger("sluice.alerts")
NOTIFY_BATCH = 100  # the most notifications one run sends: a run stays bounded


@dataclass(frozen=True, slots=True)
class Step:
    """What one evaluation makes of a rule: its next state, since when, and the event."""

    state: str
    since: datetime | None
    event: str | None = None  # EventKind


@dataclass(frozen=True, slots=True)
class RunResult:
    evaluated: int = 0
    fired: int = 0
    resolved: int = 0
    notified: int = 0


def rule_step(*, state: str, since: datetime | None, holds: bool, for_s: float,
              now: datetime) -> Step:
    """The state machine, pure: ok → pending when the condition holds, → firing once it has
    held `for_s`; firing stays firing while it holds (no new event) and resolves when not."""
    if not holds:
        return Step(State.OK, None, EventKind.RESOLVED if state == State.FIRING else None)
    if state == State.FIRING:
        return Step(State.FIRING, since)
    began = since if state == State.PENDING and since is not None else now
    if (now - began).total_seconds() >= for_s:
        return Step(State.FIRING, now, EventKind.FIRED)
    return Step(State.PENDING, began)


def condition_holds(rule: AlertRule, value: float | None) -> bool:
    if value is None:
        return False
    return value > rule.threshold if rule.comparison == Comparison.ABOVE else value < rule.threshold


def rules_evaluate(*, now: datetime) -> RunResult:
    """Evaluate every enabled rule at `now` and send the notifications due."""
    # A rule switched off while pending or firing goes quiet without a resolve notification:
    # the operator who disabled it knows.
    AlertRule.objects.filter(enabled=False).exclude(state=State.OK).update(
        state=State.OK, since=None)
    values = rule_values(list(AlertRule.objects.filter(enabled=True)), now=now)
    fired = resolved = evaluated = 0
    with transaction.atomic():
        locked = AlertRule.objects.select_for_update(skip_locked=True).filter(
            pk__in=values, enabled=True)
        for rule in locked:
            if rule.evaluated_at is not None and rule.evaluated_at >= now:
                continue  # a run with a later clock got here first
            event = rule_apply(rule, value=values[rule.pk], now=now)
            evaluated += 1
            fired += event is not None and event.kind == EventKind.FIRED
            resolved += event is not None and event.kind == EventKind.RESOLVED
    return RunResult(evaluated=evaluated, fired=fired, resolved=resolved,
                     notified=notifications_send(now=now))


def rule_apply(rule: AlertRule, *, value: float | None, now: datetime) -> AlertEvent | None:
    """Step a locked rule, save its state, and write its event if it fired or resolved."""
    step = rule_step(state=rule.state, since=rule.since,
                     holds=condition_holds(rule, value), for_s=rule.for_s, now=now)
    started = rule.since  # for a resolve: when the firing began
    rule.state, rule.since, rule.last_value, rule.evaluated_at = step.state, step.since, value, now
    rule.save(update_fields=["state", "since", "last_value", "evaluated_at"])
    if step.event is None:
        return None
    return AlertEvent.objects.create(
        rule=rule, kind=step.event, at=now,
        started_at=now if step.event == EventKind.FIRED else started or now,
        value=value, threshold=rule.threshold, condition=rule.condition_text)


def notifications_send(*, now: datetime) -> int:
    """Send the pending notifications, oldest first; return how many were handled."""
    pending = list(AlertEvent.objects.filter(notify_status=NotifyStatus.PENDING)
                   .select_related("rule").order_by("at", "id")[:NOTIFY_BATCH])
    handled = 0
    for event in pending:
        claimed = AlertEvent.objects.filter(pk=event.pk, notify_status=NotifyStatus.PENDING)
        if not claimed.update(notify_status=NotifyStatus.SENDING):
            continue  # another worker has it
        event_deliver(event, now=now)
        handled += 1
    return handled


def event_deliver(event: AlertEvent, *, now: datetime) -> None:
    """Log and POST one claimed event, and record how that went on it."""
    try:
        delivery = notify.event_notify(event)
    except Exception as e:  # notify never raises; if it ever does, the run goes on
        logger.exception("alert notification failed")
        delivery = notify.Delivery(ok=False, attempts=0, error=f"{type(e).__name__}: {e}")
    if delivery is None:
        event.notify_status = NotifyStatus.LOGGED
    else:
        event.notify_status = NotifyStatus.SENT if delivery.ok else NotifyStatus.FAILED
        event.notify_attempts, event.notify_error = delivery.attempts, delivery.error[:500]
    event.notified_at = now
    event.save(update_fields=["notify_status", "notify_attempts", "notify_error", "notified_at"])
