"""Savings by cause in the summary, for the known workload of tests/proxy/test_pricing.py:
each call priced by call_costs, written as a Call row, and every total checked by hand."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.utils import timezone

from analytics.rollups import rollups_run
from analytics.selectors import savings_by_route, savings_total, summary_compute
from proxy.pricing import SelfHostMeter, call_costs
from tests.factories import call_create
from tests.proxy.test_pricing import DEFAULT, OWN, SNAPSHOT, Clock, log

pytestmark = pytest.mark.django_db
TOKEN = "sk-master-savings-tests"

# (call, $ checked in test_pricing.py): on "default" an exact hit ($0.025), a semantic hit
# ($0.005), a down-routed call ($0.05 baseline, $0.004 spent), a compressed call ($0.046,
# $0.036) and a plain call ($0.0025 both); on "own" two calls served by gpu-1 ten minutes
# apart ($0.10 / $0.006 and $0.30 / $0.045).
WORKLOAD = [
    dict(prompt=1000, completion=500, cache="exact", backend=""),
    dict(prompt=200, completion=100, cache="semantic", backend=""),
    dict(served="small", backend="sim-small", prompt=2000, completion=1000, decision="small"),
    dict(prompt=3000, saved=1000, completion=200),
    dict(prompt=100, completion=50),
    dict(route=OWN, served="llama", backend="gpu-1", prompt=4000, completion=2000),
    dict(route=OWN, served="llama", backend="gpu-1", prompt=12000, completion=6000),
]


@pytest.fixture
def workload(db):
    clock = Clock()
    meter = SelfHostMeter(clock=clock)
    for spec in WORKLOAD:
        call = log(**spec)
        costs = call_costs(call, SNAPSHOT, meter=meter)
        clock.now += 600 if call.backend == "gpu-1" else 0
        call_create(route=call.route.name, served_model=call.served_model, backend=call.backend,
                    prompt_tokens=call.prompt_tokens, completion_tokens=call.completion_tokens,
                    prompt_tokens_saved=call.prompt_tokens_saved, cache=call.cache,
                    decision=call.decision, **costs.as_record())
    # Outside a 15-minute window: must not count.
    call_create(seconds_ago=20 * 60, route=DEFAULT.name, cache="exact", cost_usd=D(0),
                baseline_cost_usd=D("1"), saved_cache_usd=D("1"))


def test_the_pool_total_of_each_cause_matches_the_hand_computed_dollars(workload):
    total = savings_total(timezone.now() - timedelta(minutes=15))

    assert total["baseline_cost_usd"] == D("0.5285")
    assert total["cost_usd"] == D("0.0935")
    assert total["savings_by_cause"] == {
        "cache_exact": D("0.025"), "cache_semantic": D("0.005"),
        "routing": D("0.366"),  # 0.046 down-routed + 0.08 + 0.24 llama instead of big
        "compression": D("0.01"),
        "selfhost": D("0.029"),  # 0.014 + 0.015
        "batch": D(0),
    }
    assert sum(total["savings_by_cause"].values()) == D("0.435")


def test_each_route_has_its_own_split(workload):
    by_route = savings_by_route(timezone.now() - timedelta(minutes=15))

    default, own = by_route["default"], by_route["own"]
    assert (default["baseline_cost_usd"], default["cost_usd"]) == (D("0.1285"), D("0.0425"))
    assert default["savings_by_cause"] == {
        "cache_exact": D("0.025"), "cache_semantic": D("0.005"), "routing": D("0.046"),
        "compression": D("0.01"), "selfhost": D(0), "batch": D(0)}
    assert (own["baseline_cost_usd"], own["cost_usd"]) == (D("0.4"), D("0.051"))
    assert own["savings_by_cause"] == {
        "cache_exact": D(0), "cache_semantic": D(0), "routing": D("0.32"),
        "compression": D(0), "selfhost": D("0.029"), "batch": D(0)}


def test_the_summary_reports_savings_by_cause_overall_and_per_route(workload):
    s = summary_compute(minutes=15)

    assert s["baseline_cost_usd"] == float(D("0.5285"))
    assert s["cost_usd"] == float(D("0.0935"))
    assert s["savings_usd"] == float(D("0.435"))
    assert s["savings_by_cause"] == {
        "cache_exact": 0.025, "cache_semantic": 0.005, "routing": 0.366,
        "compression": 0.01, "selfhost": 0.029, "batch": 0.0}
    assert s["cache_hit_rate"] == pytest.approx(2 / 7)
    own = next(r for r in s["by_route"] if r["route"] == "own")
    assert own["savings_usd"] == float(D("0.349"))
    assert own["savings_by_cause"]["selfhost"] == 0.029


def test_the_api_serves_savings_by_cause(client, settings, workload):
    settings.SLUICE_MASTER_KEY = TOKEN
    body = client.get("/api/stats/summary?minutes=15",
                      HTTP_AUTHORIZATION=f"Bearer {TOKEN}").json()

    assert body["baseline_cost_usd"] == 0.5285
    assert body["savings_by_cause"]["cache_exact"] == 0.025
    assert body["savings_by_cause"]["compression"] == 0.01
    by_route = {r["route"]: r for r in body["by_route"]}
    assert by_route["default"]["savings_by_cause"]["routing"] == 0.046
    assert by_route["own"]["baseline_cost_usd"] == 0.4


def test_the_rollups_give_the_same_dollars_as_the_calls(workload):
    now = timezone.now()
    raw = summary_compute(minutes=15, now=now)

    rollups_run(now=now)

    assert summary_compute(minutes=15, now=now) == raw
    assert raw["savings_by_cause"]["routing"] == 0.366


def test_a_bypassed_or_skipped_cache_lookup_is_not_a_hit(db):
    call_create(cache="bypass")
    call_create(cache="skipped")
    call_create(cache="semantic")

    assert summary_compute(minutes=15)["cache_hit_rate"] == pytest.approx(1 / 3)


def test_an_empty_window_saves_nothing(db):
    s = summary_compute(minutes=15)

    assert s["baseline_cost_usd"] == 0.0 and s["savings_usd"] == 0.0
    assert set(s["savings_by_cause"].values()) == {0.0}
