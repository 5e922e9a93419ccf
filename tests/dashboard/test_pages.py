"""The dashboard's pages and their data.json: staff only, known data, range and filters."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from alerts.models import AlertEvent, AlertRule, State
from dashboard import reconcile
from tests.factories import call_create, calls_create

pytestmark = pytest.mark.django_db

PAGES = ["/dashboard/", "/dashboard/routes/", "/dashboard/backends/", "/dashboard/calls/",
         "/dashboard/alerts/"]
DATA = [page + "data.json" for page in PAGES]


@pytest.fixture(autouse=True)
def no_backends(monkeypatch):
    """No backend scrape unless a test gives one."""
    monkeypatch.setattr(reconcile, "backends_configured", lambda: [])


@pytest.mark.parametrize("url", PAGES + DATA)
def test_every_page_and_endpoint_is_staff_only(client, django_user_model, url):
    assert client.get(url).status_code == 302
    client.force_login(django_user_model.objects.create_user("viewer", password="pw-v-123456"))
    assert client.get(url).status_code == 302


@pytest.mark.parametrize("url", PAGES)
def test_every_page_renders_with_a_nav_the_filters_and_a_favicon(admin_client, url):
    call_create()
    html = admin_client.get(url + "?range=1h&route=chat-default").content.decode()
    for name in ("overview", "routes", "backends", "calls", "alerts"):
        assert f'id="nav-{name}"' in html
    assert "range=1h&amp;route=chat-default" in html  # nav links keep the query string
    assert '<link rel="icon" href="data:,">' in html
    assert 'id="range-7d"' in html


@pytest.mark.parametrize("url", DATA)
def test_every_endpoint_answers_json_for_every_range(admin_client, url):
    call_create()
    for rng in ("15m", "1h", "24h", "7d", "bogus"):
        assert admin_client.get(url, {"range": rng}).status_code == 200


def test_empty_pages_say_what_to_do_next(admin_client):
    for url in ("/dashboard/", "/dashboard/routes/", "/dashboard/calls/"):
        assert "make demo" in admin_client.get(url).content.decode()


def test_the_overview_respects_the_range(admin_client):
    call_create(seconds_ago=30 * 60)
    calls_create(2)
    assert admin_client.get("/dashboard/data.json").json()["summary"]["requests"] == 2
    data = admin_client.get("/dashboard/data.json?range=1h").json()
    assert data["summary"]["requests"] == 3
    assert len(data["figures"]["qps"]["data"][0]["y"]) == 60
    assert len(admin_client.get("/dashboard/data.json?range=24h").json()
               ["figures"]["qps"]["data"][0]["y"]) == 96
    assert len(admin_client.get("/dashboard/data.json?range=7d").json()
               ["figures"]["qps"]["data"][0]["y"]) == 168


@pytest.mark.parametrize("param, value, expected", [
    ("route", "summarise", 2), ("model", "tiny", 2), ("backend", "sim-2", 2), ("key", "7", 2),
])
def test_the_overview_respects_each_filter(admin_client, param, value, expected):
    calls_create(2, route="summarise", served_model="tiny", backend="sim-2", api_key_id=7)
    calls_create(3)
    summary = admin_client.get("/dashboard/data.json", {param: value}).json()["summary"]
    assert summary["requests"] == expected


def test_the_overview_shows_percentiles_cache_kinds_tokens_per_second_and_error_types(
        admin_client):
    calls_create(2, cache="exact", latency_ms=5.0)
    call_create(cache="semantic", latency_ms=50.0)
    call_create(status_code=504, error_type="timeout", latency_ms=1000.0)
    data = admin_client.get("/dashboard/data.json").json()
    s = data["summary"]
    assert s["requests"] == 4
    assert s["cache_exact_rate"] == 0.5 and s["cache_semantic_rate"] == 0.25
    assert s["error_rate_by_type"] == {"timeout": 0.25}
    # JSON keeps milliseconds of the window's bounds.
    assert s["prompt_tps"] == pytest.approx(4 * 12 / _seconds(s), rel=1e-3)
    assert pytest.approx(1000.0, rel=0.02) == s["p99_ms"]
    names = {t["name"] for t in data["figures"]["errors"]["data"]}
    assert names == {"5xx", "timeout"}
    assert {t["name"] for t in data["figures"]["latency"]["data"]} == {"P50", "P95", "P99"}
    assert set(data["current"]) == set(data["figures"])


def _seconds(summary):
    from datetime import datetime
    start = datetime.fromisoformat(summary["start"])
    end = datetime.fromisoformat(summary["end"])
    return (end - start).total_seconds()


def test_the_overview_puts_firing_alerts_on_top(admin_client):
    AlertRule.objects.create(name="slow chat", metric="p99_latency", threshold=500,
                             state=State.FIRING, since=timezone.now(), last_value=900)
    AlertRule.objects.create(name="quiet", metric="qps", threshold=1)
    html = admin_client.get("/dashboard/").content.decode()
    data = admin_client.get("/dashboard/data.json").json()
    assert len(data["firing"]) == 1 and data["firing"][0].startswith("slow chat")
    assert "slow chat: P99 latency (ms) &gt; 500" in html


def test_the_routes_page_has_one_row_per_route_with_share_and_savings(admin_client):
    from decimal import Decimal

    calls_create(3, route="a", decision="small", saved_routing_usd=Decimal("0.01"))
    call_create(route="b", status_code=500)
    data = admin_client.get("/dashboard/routes/data.json").json()
    rows = {r["route"]: r for r in data["rows"]}
    assert rows["a"]["requests"] == 3 and rows["a"]["share"] == 0.75
    assert rows["a"]["down_routed_rate"] == 1.0
    assert rows["a"]["savings_by_cause"]["routing"] == pytest.approx(0.03)
    assert rows["b"]["error_rate"] == 1.0
    assert [c[0] for c in (r["cells"] for r in data["tables"]["routes"])] == ["a", "b"]
    assert set(data["figures"]) == {"savings", "route-requests", "route-p99"}
    only_b = admin_client.get("/dashboard/routes/data.json?route=b").json()
    assert [r["route"] for r in only_b["rows"]] == ["b"]


def test_the_backends_page_splits_traffic_by_backend(admin_client):
    calls_create(3, backend="sim-1", latency_ms=100.0)
    call_create(backend="sim-2", latency_ms=400.0, status_code=502)
    data = admin_client.get("/dashboard/backends/data.json").json()
    rows = {r["backend"]: r for r in data["rows"]}
    assert rows["sim-1"]["share"] == 0.75 and rows["sim-2"]["error_rate"] == 1.0
    assert pytest.approx(400.0, rel=0.02) == rows["sim-2"]["p99_ms"]
    html = admin_client.get("/dashboard/backends/").content.decode()
    assert "/api/backends" in html and 'id="live-body"' in html


def test_the_backends_page_reconciles_tokens_against_the_backend_counters(
        admin_client, monkeypatch, settings):
    from django.core.cache import cache

    readings = iter([{"prompt": 1000.0, "completion": 500.0},
                     {"prompt": 1100.0, "completion": 560.0}])
    monkeypatch.setattr(reconcile, "backends_configured", lambda: [("sim-1", "http://sim")])
    monkeypatch.setattr(reconcile, "counters_read", lambda url: next(readings))
    cache.delete(reconcile._baseline("sim-1", "http://sim"))

    first = admin_client.get("/dashboard/backends/data.json").json()["reconcile"]
    assert "first reading" in first[0]["note"]
    calls_create(5, backend="sim-1", prompt_tokens=20, completion_tokens=12, seconds_ago=0)
    call_create(backend="sim-1", cache="exact", prompt_tokens=999, seconds_ago=0)  # not sent
    row = admin_client.get("/dashboard/backends/data.json").json()["reconcile"][0]
    assert (row["prompt_logged"], row["prompt_backend"]) == (100, 100)
    assert row["prompt_drift"] == 0.0
    assert (row["completion_logged"], row["completion_backend"]) == (60, 60)


def test_counters_parse_sums_the_label_sets_of_each_counter():
    text = ('# TYPE vllm:prompt_tokens_total counter\n'
            'vllm:prompt_tokens_total{model_name="a"} 10.0\n'
            'vllm:prompt_tokens_total{model_name="b"} 5.0\n'
            'vllm:prompt_tokens_created{model_name="a"} 17e8\n'
            'vllm:generation_tokens_total{model_name="a"} 7\n')
    assert reconcile.counters_parse(text) == {"prompt": 15.0, "completion": 7.0}


def test_a_backend_without_counters_says_so():
    rows = reconcile.reconcile(backends=[("gone", "http://127.0.0.1:9")])
    assert rows[0]["failed"] and "no token counters" in rows[0]["note"]


def test_the_call_log_searches_by_status_route_key_and_slowness(admin_client):
    call_create(route="a", status_code=200, latency_ms=100.0, request_id="fast-ok")
    call_create(route="a", status_code=503, latency_ms=2500.0, request_id="slow-err")
    call_create(route="b", status_code=429, latency_ms=10.0, request_id="limited",
                api_key_id=3)

    def ids(**params):
        calls = admin_client.get("/dashboard/calls/data.json", params).json()["calls"]
        return {c["request_id"] for c in calls}

    assert ids() == {"fast-ok", "slow-err", "limited"}
    assert ids(status="5xx") == {"slow-err"}
    assert ids(status="429") == {"limited"}
    assert ids(status="error") == {"slow-err", "limited"}
    assert ids(route="a") == {"fast-ok", "slow-err"}
    assert ids(key="3") == {"limited"}
    assert ids(slow="1", slow_ms="1000") == {"slow-err"}
    assert ids(request_id="limited") == {"limited"}


def test_the_call_log_respects_the_range(admin_client):
    call_create(seconds_ago=2 * 3600, request_id="old")
    call_create(request_id="new")
    calls = admin_client.get("/dashboard/calls/data.json?range=1h").json()["calls"]
    assert [c["request_id"] for c in calls] == ["new"]


def test_the_call_log_pages_without_counting(admin_client):
    for i in range(55):
        call_create(seconds_ago=i + 1, request_id=f"c{i:02d}")
    first = admin_client.get("/dashboard/calls/data.json").json()
    second = admin_client.get("/dashboard/calls/data.json?page=2").json()
    assert len(first["calls"]) == 50 and first["has_next"]
    assert [c["request_id"] for c in second["calls"]] == [f"c{i}" for i in range(50, 55)]
    assert not second["has_next"]
    html = admin_client.get("/dashboard/calls/").content.decode()
    assert 'id="page-next"' in html and "page=2" in html


def test_a_call_detail_shows_timings_decision_and_says_content_is_not_stored(admin_client):
    call = call_create(ttft_ms=42.0, retries=2, fallback_used=True, decision="small",
                       backend_reason="prefix_hit", cache="miss", queue_ms=3.0)
    html = admin_client.get(f"/dashboard/calls/{call.pk}/").content.decode()
    for text in ("42 ms", "prefix_hit", "small", call.request_id, "not stored"):
        assert text in html
    row = admin_client.get("/dashboard/calls/data.json").json()["tables"]["calls"][0]
    assert row["href"] == f"/dashboard/calls/{call.pk}/"
    assert admin_client.get("/dashboard/calls/999999/").status_code == 404


def test_the_alerts_page_lists_rules_and_their_events(admin_client):
    rule = AlertRule.objects.create(name="errors", metric="error_rate", threshold=0.05,
                                    state=State.FIRING, since=timezone.now())
    AlertRule.objects.create(name="cost", metric="cost_per_hour", threshold=10)
    at = timezone.now() - timedelta(minutes=3)
    AlertEvent.objects.create(rule=rule, kind="fired", at=at, started_at=at, value=0.2,
                              threshold=0.05, condition=rule.condition_text)
    data = admin_client.get("/dashboard/alerts/data.json").json()
    rules = [r["cells"][:2] for r in data["tables"]["rules"]]
    assert rules[0] == ["errors", "firing"]  # firing first
    assert ["cost", "ok"] in rules
    assert data["tables"]["events"][0]["cells"][1:4] == ["errors", "fired", "0.2"]
    assert "<td>fired</td>" in admin_client.get("/dashboard/alerts/").content.decode()


def test_pages_read_rolled_up_minutes_and_raw_calls_alike(admin_client):
    from analytics.rollups import rollups_run

    calls_create(3, backend="sim-1", seconds_ago=180, status_code=504, error_type="timeout")
    rollups_run()
    calls_create(2, backend="sim-2", seconds_ago=0)  # after the cutoff: read raw
    for rng in ("15m", "24h", "7d"):
        s = admin_client.get("/dashboard/data.json", {"range": rng}).json()["summary"]
        assert s["requests"] == 5 and s["error_rate_by_type"] == {"timeout": 0.6}, rng
    rows = admin_client.get("/dashboard/backends/data.json").json()["rows"]
    assert {r["backend"]: r["requests"] for r in rows} == {"sim-1": 3, "sim-2": 2}
    assert admin_client.get("/dashboard/data.json?key=0").json()["summary"]["requests"] == 5
