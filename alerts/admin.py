"""Admin for alert rules (state read-only: the evaluator writes it) and their history."""
from django.contrib import admin
from django.db import models

from alerts.models import AlertEvent, AlertRule

STATE_FIELDS = ["state", "since", "last_value", "evaluated_at"]


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "condition_text", "window_minutes", "for_s", "route", "backend",
                    "enabled", "state", "since", "last_value"]
    list_filter = ["state", "metric", "enabled"]
    list_editable = ["enabled"]
    search_fields = ["name", "route", "backend"]
    readonly_fields = STATE_FIELDS
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    fieldsets = [
        (None, {"fields": ["name", "enabled"]}),
        ("Condition", {"fields": ["metric", "comparison", "threshold", "window_minutes",
                                  "for_s"]}),
        ("Scope (blank: everything)", {"fields": ["route", "backend"]}),
        ("Notification (always logged to sluice.alerts)", {"fields": ["webhook_url"]}),
        ("State (written by the evaluator)", {"fields": STATE_FIELDS}),
    ]

    @admin.display(description="condition")
    def condition_text(self, rule: AlertRule) -> str:
        return rule.condition_text


@admin.register(AlertEvent)
class AlertEventAdmin(admin.ModelAdmin):
    """Read-only: the history is what the evaluator wrote."""

    list_display = ["at", "rule", "kind", "value", "threshold", "started_at", "notify_status",
                    "notify_attempts", "notify_error"]
    list_filter = ["kind", "notify_status", "rule"]
    search_fields = ["rule__name", "notify_error"]
    date_hierarchy = "at"
    list_select_related = ["rule"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
