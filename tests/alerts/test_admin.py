"""The alerts' admin pages render for staff, and a rule can be added through them."""
from __future__ import annotations

from django.urls import reverse

from alerts.models import AlertEvent, AlertRule, EventKind
from tests.alerts.support import at, rule_create


def test_the_rule_and_event_pages_render(admin_client):
    rule = rule_create(route="chat-default")
    event = AlertEvent.objects.create(rule=rule, kind=EventKind.FIRED, at=at(0),
                                      started_at=at(0), value=2.0, threshold=1.0,
                                      condition=rule.condition_text)
    for url in (reverse("admin:alerts_alertrule_changelist"),
                reverse("admin:alerts_alertrule_add"),
                reverse("admin:alerts_alertrule_change", args=[rule.pk]),
                reverse("admin:alerts_alertevent_changelist"),
                reverse("admin:alerts_alertevent_change", args=[event.pk])):
        response = admin_client.get(url)
        assert response.status_code == 200, url
    listing = admin_client.get(reverse("admin:alerts_alertrule_changelist")).content.decode()
    assert rule.name in listing and "P99 latency above 10 s" in listing


def test_a_rule_is_added_in_the_admin_with_its_state_ok(admin_client):
    response = admin_client.post(reverse("admin:alerts_alertrule_add"), {
        "name": "slow TTFT", "enabled": "on", "metric": "ttft_p99", "comparison": "gt",
        "threshold": "2000", "window_minutes": "5", "for_s": "30", "route": "",
        "backend": "", "webhook_url": "https://hooks.example.com/x"})
    assert response.status_code == 302
    rule = AlertRule.objects.get(name="slow TTFT")
    assert (rule.state, rule.for_s, rule.webhook_url) == ("ok", 30,
                                                          "https://hooks.example.com/x")


def test_a_backend_down_rule_with_a_route_is_refused(admin_client):
    response = admin_client.post(reverse("admin:alerts_alertrule_add"), {
        "name": "down", "enabled": "on", "metric": "backend_down", "comparison": "gt",
        "threshold": "0", "window_minutes": "5", "for_s": "30", "route": "default",
        "backend": "", "webhook_url": ""})
    assert response.status_code == 200
    assert not AlertRule.objects.filter(name="down").exists()


def test_events_cannot_be_added_or_edited(admin_client):
    assert admin_client.get(reverse("admin:alerts_alertevent_add")).status_code == 403
