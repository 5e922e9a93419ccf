"""Alert rules over the call log's windows, their state, and the history of their firings.

A rule's state moves ok → pending (its condition holds) → firing (it has held for `for_s`)
→ ok (it stopped holding: one "resolved" event). Each fire and each resolve is one
AlertEvent row, which also records how its notification went (`alerts.notify`)."""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models


class Metric(models.TextChoices):
    """What a rule watches, each in the unit of the ops API's summary (`value` and
    `threshold` are in it too)."""

    P99_LATENCY = "p99_latency", "P99 latency (ms)"
    TTFT_P99 = "ttft_p99", "TTFT P99 (ms)"
    ERROR_RATE = "error_rate", "Error rate (5xx / requests, 0-1)"
    QPS = "qps", "Requests per second"
    COST_PER_HOUR = "cost_per_hour", "Cost ($ per hour)"
    BACKEND_DOWN = "backend_down", "Backends down (GET /health fails)"


class Comparison(models.TextChoices):
    ABOVE = "gt", ">"
    BELOW = "lt", "<"


class State(models.TextChoices):
    OK = "ok"
    PENDING = "pending"  # the condition holds, not yet for `for_s`
    FIRING = "firing"


class AlertRule(models.Model):
    name = models.CharField(max_length=100, unique=True)
    metric = models.CharField(max_length=32, choices=Metric.choices)
    comparison = models.CharField(max_length=2, choices=Comparison.choices,
                                  default=Comparison.ABOVE)
    threshold = models.FloatField(
        help_text="In the metric's unit: ms for latency and TTFT, 0.01 for a 1 % error rate, "
        "requests per second, $ per hour, backends down (0 with '>': any).")
    window_minutes = models.PositiveIntegerField(
        default=5, validators=[MinValueValidator(1)],
        help_text="The last N whole minutes and the current one so far, as "
        "/api/stats/summary?minutes=N reads them. Not used by 'backends down'.")
    for_s = models.PositiveIntegerField(
        "for (seconds)", default=60,
        help_text="How long the condition must hold before the rule fires (0: at once).")
    route = models.CharField(max_length=100, blank=True,
                             help_text="Only this route's calls (blank: all routes).")
    backend = models.CharField(
        max_length=100, blank=True,
        help_text="Only this backend: its calls, or for 'backends down' its /health "
        "(blank: all backends; for 'backends down', every enabled one).")
    enabled = models.BooleanField(default=True)
    webhook_url = models.URLField(
        blank=True, help_text="JSON POST on fire and resolve (blank: SLUICE_ALERT_WEBHOOK_URL).")

    # State, written by the evaluator (`alerts.evaluate`) only.
    state = models.CharField(max_length=16, choices=State.choices, default=State.OK)
    since = models.DateTimeField(
        null=True, blank=True,
        help_text="Pending: since the condition began to hold. Firing: since it fired.")
    last_value = models.FloatField(null=True, blank=True,
                                   help_text="Blank: no calls in the window (no data).")
    evaluated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.metric == Metric.BACKEND_DOWN and self.route:
            raise ValidationError({"route": "'Backends down' probes backends: pick a backend, "
                                            "or leave both blank for all of them."})

    @property
    def condition_text(self) -> str:
        return f"{self.get_metric_display()} {self.get_comparison_display()} {self.threshold:g}"


class EventKind(models.TextChoices):
    FIRED = "fired"
    RESOLVED = "resolved"


class NotifyStatus(models.TextChoices):
    PENDING = "pending"  # committed, not yet sent: the next evaluation sends it
    SENDING = "sending"  # claimed by one worker
    SENT = "sent"  # the webhook answered 2xx
    FAILED = "failed"  # every attempt failed (`notify_error` says why)
    LOGGED = "logged"  # no webhook configured: the log line only


class AlertEvent(models.Model):
    """One fire or one resolve of a rule, with what the rule said at that moment."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    at = models.DateTimeField(db_index=True)
    started_at = models.DateTimeField(help_text="When the rule fired (for a resolve: the "
                                                "fire it ends).")
    value = models.FloatField(null=True, blank=True, help_text="Blank: no data in the window.")
    threshold = models.FloatField()
    condition = models.CharField(max_length=200, help_text="The rule's condition then.")
    notify_status = models.CharField(max_length=16, choices=NotifyStatus.choices,
                                     default=NotifyStatus.PENDING)
    notify_attempts = models.PositiveSmallIntegerField(default=0)
    notify_error = models.CharField(max_length=500, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["notify_status"])]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.rule} {self.kind}"

    @property
    def resolved_at(self):
        return self.at if self.kind == EventKind.RESOLVED else None
