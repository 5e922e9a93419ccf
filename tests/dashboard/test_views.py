"""/dashboard/ and /dashboard/data.json: staff only, served with the local plotly.js."""
from __future__ import annotations

import pytest

from tests.factories import call_create, calls_create

pytestmark = pytest.mark.django_db

PLOTLY_URL = "/static/plotly/plotly.min.js"
OVERVIEW_CHARTS = {"qps", "latency", "ttft", "errors", "cache", "tps", "money"}


def test_it_redirects_anonymous_visitors_to_the_admin_login(client):
    response = client.get("/dashboard/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert "next=/dashboard/" in response["Location"]


def test_it_redirects_anonymous_requests_for_data(client):
    response = client.get("/dashboard/data.json")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_it_turns_away_signed_in_users_who_are_not_staff(client, django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw-viewer-123")
    client.force_login(user)
    assert client.get("/dashboard/").status_code == 302


def test_it_loads_plotly_from_the_local_static_files(admin_client):
    response = admin_client.get("/dashboard/")
    assert response.status_code == 200
    assert f'<script src="{PLOTLY_URL}"></script>' in response.content.decode()


def test_it_serves_the_plotly_bundle_itself(client):
    response = client.get(PLOTLY_URL)
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert len(body) > 1_000_000
    assert b"plotly" in body[:2000].lower()


def test_it_has_a_container_for_each_chart(admin_client):
    html = admin_client.get("/dashboard/").content.decode()
    for name in OVERVIEW_CHARTS:
        assert f'id="chart-{name}"' in html


def test_it_shows_the_request_count_of_the_last_15_minutes(admin_client):
    calls_create(3)
    call_create(seconds_ago=20 * 60)  # outside the window
    html = admin_client.get("/dashboard/").content.decode()
    assert 'id="kpi-requests">3</span>' in html


def test_it_lists_the_latest_calls_and_their_routes(admin_client):
    call_create(route="summarise", served_model="tiny-model", status_code=502,
                error_type="upstream_error")
    html = admin_client.get("/dashboard/").content.decode()
    assert "tiny-model" in html
    assert 'class="row error"' in html
    assert "<td>summarise</td>" in html


def test_it_escapes_client_supplied_model_names(admin_client):
    call_create(requested_model="<script>x()</script>", served_model="")
    html = admin_client.get("/dashboard/").content.decode()
    assert "<script>x()</script>" not in html


def test_data_json_counts_the_calls_of_the_window(admin_client):
    calls_create(4, stream=True, ttft_ms=25.0)
    calls_create(1, status_code=500, cache="exact")
    data = admin_client.get("/dashboard/data.json").json()
    assert data["summary"]["requests"] == 5
    assert data["summary"]["error_rate"] == pytest.approx(0.2)
    assert len(data["calls"]) == 5
    kpis = {k["key"]: k["value"] for k in data["kpis"]}
    assert kpis["requests"] == "5"
    assert kpis["error-rate"] == "20.0 %"
    assert kpis["cache-hit-rate"] == "20.0 %"


def test_data_json_carries_the_figures_with_the_new_calls(admin_client):
    calls_create(2, latency_ms=250.0)
    figures = admin_client.get("/dashboard/data.json").json()["figures"]
    assert set(figures) == OVERVIEW_CHARTS
    p99 = next(t for t in figures["latency"]["data"] if t["name"] == "P99")
    # 250 ms as the histogram estimates it (within 2 %).
    assert pytest.approx(250.0, rel=0.02) == max(y for y in p99["y"] if y is not None)
    assert len(p99["y"]) == 15  # 15 minutes of 1-minute buckets


def test_data_json_lists_the_latest_call_first(admin_client):
    call_create(seconds_ago=30, request_id="older")
    call_create(seconds_ago=2, request_id="newer")
    calls = admin_client.get("/dashboard/data.json").json()["calls"]
    assert [c["request_id"] for c in calls] == ["newer", "older"]


def test_data_json_is_never_cached(admin_client):
    response = admin_client.get("/dashboard/data.json")
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


def test_it_charts_the_savings_by_cause_of_each_route(admin_client):
    from decimal import Decimal

    call_create(route="default", cache="exact", cost_usd=Decimal(0),
                baseline_cost_usd=Decimal("0.025"), saved_cache_usd=Decimal("0.025"))
    call_create(route="own", cost_usd=Decimal("0.006"), baseline_cost_usd=Decimal("0.1"),
                saved_routing_usd=Decimal("0.08"), saved_selfhost_usd=Decimal("0.014"))
    html = admin_client.get("/dashboard/routes/").content.decode()
    data = admin_client.get("/dashboard/routes/data.json").json()
    overview = admin_client.get("/dashboard/data.json").json()

    assert 'id="chart-savings"' in html and "Savings by cause per route" in html
    traces = {t["name"]: t for t in data["figures"]["savings"]["data"]}
    assert traces["exact cache"]["x"] == ["default", "own"]
    assert traces["exact cache"]["y"] == [0.025, 0.0]
    assert traces["self-hosting"]["y"] == [0.0, 0.014]
    assert overview["summary"]["savings_by_cause"]["routing"] == 0.08
    kpis = {k["key"]: k["value"] for k in overview["kpis"]}
    assert kpis["baseline"] == "$0.1250"
    assert kpis["savings"] == "$0.1190"
    own = next(c for c in overview["calls"] if c["route"] == "own")
    assert (own["saved_routing_usd"], own["saved_selfhost_usd"]) == (0.08, 0.014)
