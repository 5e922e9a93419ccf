"""Operators manage keys, routes and backends in the admin; edits reach the proxy at once."""
import re

import openai
import pytest

from proxy.models import ApiKey, key_hash

MESSAGES = [{"role": "user", "content": "hi"}]
# What the route form sends for its fields with defaults when the operator leaves them be.
ROUTE_DEFAULTS = {"cache_ttl_s": "3600", "semantic_max_entries": "10000",
                  "downroute_threshold": "0.5", "balance_policy": "prefix_aware"}


def test_a_key_added_in_the_admin_is_shown_once_stored_hashed_and_works_at_once(
    admin_client, gateway
):
    response = admin_client.post("/admin/proxy/apikey/add/", {"name": "billing-app",
                                                              "is_active": "on"}, follow=True)

    plaintext = re.search(r"sk-sluice-[\w-]+", response.content.decode()).group(0)
    key = ApiKey.objects.get(name="billing-app")
    assert key.key_hash == key_hash(plaintext)
    assert plaintext not in str(ApiKey.objects.filter(pk=key.pk).values().get())
    app = openai.OpenAI(base_url=gateway.url + "/v1", api_key=plaintext, max_retries=0)
    assert app.chat.completions.create(model="default", messages=MESSAGES, max_tokens=1)


def test_a_route_added_in_the_admin_is_routable_at_once(admin_client, sdk):
    admin_client.post("/admin/proxy/route/add/", {"name": "cheap", "model": "sim-model",
                                                  "baseline_model": "", "enabled": "on",
                                                  **ROUTE_DEFAULTS})

    answer = sdk.chat.completions.with_raw_response.create(model="cheap", messages=MESSAGES,
                                                           max_tokens=1)

    assert answer.headers["x-sluice-route"] == "cheap"


def test_a_backend_disabled_in_the_admin_gets_no_more_calls(admin_client, sdk, flush_calls):
    from proxy.models import Backend

    sim2 = Backend.objects.get(name="sim-2")
    admin_client.post("/admin/proxy/backend/", {
        "form-TOTAL_FORMS": "2", "form-INITIAL_FORMS": "2", "form-0-id": sim2.id,
        "form-0-enabled": "", "form-1-id": Backend.objects.get(name="sim-1").id,
        "form-1-enabled": "on", "_save": "Save"})
    assert not Backend.objects.get(name="sim-2").enabled

    for _ in range(3):
        sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=1)

    assert {c.backend for c in flush_calls()} == {"sim-1"}


@pytest.mark.parametrize("page", ["backend", "route", "apikey", "price"])
def test_the_admin_lists_each_configuration_table(admin_client, page):
    assert admin_client.get(f"/admin/proxy/{page}/").status_code == 200


@pytest.mark.parametrize("page", ["backend", "route", "apikey"])
def test_the_admin_add_forms_render_with_the_resilience_fields(admin_client, page):
    html = admin_client.get(f"/admin/proxy/{page}/add/").content.decode()

    expected = {"backend": "breaker_cooldown_s", "route": "ttfb_timeout_s", "apikey": "rpm_limit"}
    assert f'name="{expected[page]}"' in html


def test_a_fallback_chain_edited_in_the_admin_takes_effect_at_once(admin_client, sdk):
    from proxy.models import Backend
    from simulator.process import free_port

    Backend.objects.create(name="big-1", base_url=f"http://127.0.0.1:{free_port()}",
                           model="big-model")
    admin_client.post("/admin/proxy/route/add/", {
        "name": "big", "model": "big-model", "baseline_model": "", "enabled": "on",
        "fallbacks": "default", "max_attempts": "1", **ROUTE_DEFAULTS})

    answer = sdk.chat.completions.with_raw_response.create(model="big", messages=MESSAGES,
                                                           max_tokens=1)

    assert answer.headers["x-sluice-fallback"] == "sim-model"


def test_a_route_cannot_fall_back_to_itself(admin_client):
    response = admin_client.post("/admin/proxy/route/add/", {
        "name": "loop", "model": "sim-model", "baseline_model": "", "enabled": "on",
        "fallbacks": "loop", **ROUTE_DEFAULTS})

    assert "cannot fall back to itself" in response.content.decode()


def test_a_routes_balance_policy_set_in_the_admin_takes_effect_at_once(admin_client, sdk):
    from proxy.models import Route

    route = Route.objects.get(name="default")
    admin_client.post(f"/admin/proxy/route/{route.pk}/change/", {
        "name": "default", "model": "sim-model", "baseline_model": "", "enabled": "on",
        **ROUTE_DEFAULTS, "balance_policy": "round_robin"})

    answers = [sdk.chat.completions.with_raw_response.create(
        model="default", messages=MESSAGES, max_tokens=1) for _ in range(2)]

    assert Route.objects.get(name="default").balance_policy == "round_robin"
    assert {a.headers["x-sluice-backend-reason"] for a in answers} == {"round_robin"}


def test_balance_weights_that_do_not_parse_are_refused_in_the_admin(admin_client):
    response = admin_client.post("/admin/proxy/route/add/", {
        "name": "weighted", "model": "sim-model", "baseline_model": "", "enabled": "on",
        **ROUTE_DEFAULTS, "balance_weights": "prefix=lots"})

    assert "is not a number" in response.content.decode()
