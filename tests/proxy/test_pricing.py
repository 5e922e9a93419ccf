"""call_costs on a known workload, every dollar checked by hand.

Prices ($ per 1M tokens, input / output): big 10 / 30 (every route's baseline), small 1 / 2,
llama 2 / 6 (the hosted reference of what gpu-1 serves). gpu-1 costs $0.36 an hour
($0.0001 a second); sim-big and sim-small are hosted (no GPU price).
"""
from __future__ import annotations

from decimal import Decimal as D

import pytest

from proxy.accounting import CallLog
from proxy.pricing import Costs, SelfHostMeter, call_costs
from proxy.snapshot import BackendInfo, PriceInfo, RouteInfo, Snapshot


def backend(name: str, model: str, gpu: str | None = None) -> BackendInfo:
    return BackendInfo(id=hash(name) % 1000, name=name, base_url="http://x", model=model,
                       weight=1, max_concurrency=8,
                       gpu_usd_per_hour=D(gpu) if gpu is not None else None)


DEFAULT = RouteInfo(name="default", model="big", baseline_model="big", small_model="small")
OWN = RouteInfo(name="own", model="llama", baseline_model="big")
SNAPSHOT = Snapshot(
    routes={"default": DEFAULT, "own": OWN},
    backends_by_model={"big": (backend("sim-big", "big"),),
                       "small": (backend("sim-small", "small"),),
                       "llama": (backend("gpu-1", "llama", gpu="0.36"),),
                       "mystery": (backend("sim-mystery", "mystery"),)},
    prices={"big": PriceInfo(D("10"), D("30")), "small": PriceInfo(D("1"), D("2")),
            "llama": PriceInfo(D("2"), D("6"))},
    loaded=True,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def meter(clock) -> SelfHostMeter:
    return SelfHostMeter(clock=clock)


def log(*, route: RouteInfo = DEFAULT, served: str = "big", backend: str = "sim-big",
        prompt: int = 0, completion: int = 0, saved: int = 0, cache: str = "miss",
        decision: str = "") -> CallLog:
    call = CallLog(endpoint="chat")
    call.route, call.served_model, call.backend = route, served, backend
    call.prompt_tokens, call.completion_tokens, call.prompt_tokens_saved = prompt, completion, saved
    call.cache, call.decision = cache, decision
    return call


def adds_up(costs: Costs) -> bool:
    parts = (costs.saved_cache_usd + costs.saved_routing_usd + costs.saved_compression_usd
             + costs.saved_selfhost_usd + costs.saved_batch_usd)
    return parts == costs.baseline_cost_usd - costs.cost_usd


def test_a_plain_call_costs_its_baseline_and_saves_nothing(meter):
    # 100 × $10 + 50 × $30 per 1M = $0.001 + $0.0015
    costs = call_costs(log(prompt=100, completion=50), SNAPSHOT, meter=meter)

    assert costs == Costs(cost_usd=D("0.0025"), baseline_cost_usd=D("0.0025"))


def test_an_exact_cache_hit_saves_the_whole_baseline(meter):
    # the stored answer's usage: 1000 × $10 + 500 × $30 per 1M = $0.01 + $0.015
    costs = call_costs(log(prompt=1000, completion=500, cache="exact", backend=""),
                       SNAPSHOT, meter=meter)

    assert costs == Costs(cost_usd=D(0), baseline_cost_usd=D("0.025"),
                          saved_cache_usd=D("0.025"))


def test_a_semantic_cache_hit_saves_the_whole_baseline_too(meter):
    costs = call_costs(log(prompt=200, completion=100, cache="semantic", backend=""),
                       SNAPSHOT, meter=meter)

    assert (costs.cost_usd, costs.saved_cache_usd) == (D(0), D("0.005"))
    assert adds_up(costs)


def test_a_bypassed_cache_is_a_miss(meter):
    costs = call_costs(log(prompt=100, completion=50, cache="bypass"), SNAPSHOT, meter=meter)

    assert (costs.cost_usd, costs.saved_cache_usd) == (D("0.0025"), D(0))


def test_a_down_routed_call_saves_the_price_gap_between_baseline_and_small_model(meter):
    # baseline 2000 × $10 + 1000 × $30 = $0.05; small 2000 × $1 + 1000 × $2 = $0.004
    costs = call_costs(log(served="small", backend="sim-small", prompt=2000, completion=1000,
                           decision="small"), SNAPSHOT, meter=meter)

    assert costs == Costs(cost_usd=D("0.004"), baseline_cost_usd=D("0.05"),
                          saved_routing_usd=D("0.046"))


def test_a_compressed_call_saves_the_removed_tokens_at_the_baseline_input_price(meter):
    # baseline (3000 + 1000) × $10 + 200 × $30 = $0.046; spent 3000 × $10 + 200 × $30 = $0.036
    costs = call_costs(log(prompt=3000, saved=1000, completion=200), SNAPSHOT, meter=meter)

    assert costs == Costs(cost_usd=D("0.036"), baseline_cost_usd=D("0.046"),
                          saved_compression_usd=D("0.01"))


def test_a_self_hosted_call_costs_its_share_of_the_gpu_hour(meter, clock):
    # First sight of gpu-1: the window counts one minute: $0.0001/s × 60 s = $0.006 for the
    # call's 6000 tokens, all the window holds. Hosted llama: 4000 × $2 + 2000 × $6 = $0.02.
    # Baseline: 4000 × $10 + 2000 × $30 = $0.10.
    first = call_costs(log(route=OWN, served="llama", backend="gpu-1", prompt=4000,
                           completion=2000), SNAPSHOT, meter=meter)
    # Ten minutes later: 600 s × $0.0001 = $0.06 shared by 6000 + 18000 tokens; this call's
    # 18000 pay $0.045. Hosted llama: 12000 × $2 + 6000 × $6 = $0.06; baseline $0.30.
    clock.now += 600
    second = call_costs(log(route=OWN, served="llama", backend="gpu-1", prompt=12000,
                            completion=6000), SNAPSHOT, meter=meter)

    assert first == Costs(cost_usd=D("0.006"), baseline_cost_usd=D("0.1"),
                          saved_routing_usd=D("0.08"), saved_selfhost_usd=D("0.014"))
    assert second == Costs(cost_usd=D("0.045"), baseline_cost_usd=D("0.3"),
                           saved_routing_usd=D("0.24"), saved_selfhost_usd=D("0.015"))


def test_an_idle_expensive_gpu_shows_a_negative_self_hosting_saving(clock):
    meter = SelfHostMeter(clock=clock)
    call_costs(log(route=OWN, served="llama", backend="gpu-1", prompt=10), SNAPSHOT,
               meter=meter)
    clock.now += 3 * 3600  # three idle hours: the window now spans the whole hour
    # The hour ($0.36) is all charged to these 1000 tokens; hosted they cost $0.002.
    costs = call_costs(log(route=OWN, served="llama", backend="gpu-1", prompt=1000), SNAPSHOT,
                       meter=meter)

    assert costs.cost_usd == D("0.36")
    assert costs.saved_selfhost_usd == D("-0.358")
    assert costs.saved_routing_usd == D("0.008")  # baseline $0.01 − hosted llama $0.002
    assert adds_up(costs)
    assert meter.tokens("gpu-1") == 1000  # the first call left the window


def test_a_steady_load_charges_the_gpu_hour_per_hour(clock):
    meter = SelfHostMeter(clock=clock)
    hours = []
    for _ in range(2):  # one 500-token call every 10 s for two hours
        spent = D(0)
        for _ in range(360):
            clock.now += 10
            spent += meter.charge("gpu-1", D("0.36"), 500)
        hours.append(spent)

    # Each hour costs $0.36, give or take the one-minute buckets' granularity (≤ 2 %).
    assert hours == [pytest.approx(D("0.36"), rel=D("0.02"))] * 2
    assert 355 * 500 <= meter.tokens("gpu-1") <= 360 * 500


def test_a_fallback_to_a_dearer_model_shows_a_negative_routing_saving(meter):
    cheap = RouteInfo(name="cheap", model="small", baseline_model="small")
    costs = call_costs(log(route=cheap, served="big", prompt=1000, completion=0), SNAPSHOT,
                       meter=meter)

    assert (costs.baseline_cost_usd, costs.cost_usd) == (D("0.001"), D("0.01"))
    assert costs.saved_routing_usd == D("-0.009")
    assert adds_up(costs)


def test_a_served_model_without_a_price_claims_no_saving(meter):
    costs = call_costs(log(served="mystery", backend="sim-mystery", prompt=100, completion=50),
                       SNAPSHOT, meter=meter)

    assert costs == Costs(cost_usd=D("0.0025"), baseline_cost_usd=D("0.0025"))


def test_the_parts_add_up_to_the_last_digit_after_rounding(meter):
    odd = Snapshot(routes={"default": DEFAULT},
                   backends_by_model=SNAPSHOT.backends_by_model,
                   prices={"big": PriceInfo(D("0.123457"), D("3.333333")),
                           "small": PriceInfo(D("0.011111"), D("0.077777"))})
    costs = call_costs(log(served="small", backend="sim-small", prompt=7, completion=3,
                           saved=11, decision="small"), odd, meter=meter)

    # 18 × 0.123457 + 3 × 3.333333 = 12.222225 per 1M → 0.000012222225 → 0.0000122222
    assert costs.baseline_cost_usd == D("0.0000122222")
    assert costs.saved_compression_usd == D("0.0000013580")  # 11 × 0.123457 = 1.358027
    assert costs.cost_usd == D("0.0000003111")  # 7 × 0.011111 + 3 × 0.077777 = 0.311108
    assert costs.saved_routing_usd == D("0.0000105531")
    assert adds_up(costs)


def test_a_failed_call_without_tokens_costs_nothing_and_counts_nothing(meter):
    costs = call_costs(log(route=OWN, served="llama", backend="gpu-1"), SNAPSHOT, meter=meter)

    assert costs == Costs(cost_usd=D(0), baseline_cost_usd=D(0))
    assert meter.tokens("gpu-1") == 0


def test_a_batch_discount_is_its_own_saving(meter, settings):
    settings.SLUICE_BATCH_DISCOUNT = 0.5
    call = log(served="small", backend="sim-small", prompt=2000, completion=1000)
    call.endpoint = "batch:chat/completions"

    costs = call_costs(call, SNAPSHOT, meter=meter)

    # the small model's $0.004, half of it waived; the rest as for a down-routed call
    assert costs == Costs(cost_usd=D("0.002"), baseline_cost_usd=D("0.05"),
                          saved_routing_usd=D("0.046"), saved_batch_usd=D("0.002"))
    assert adds_up(costs)


def test_without_a_discount_a_batch_call_is_priced_like_the_rest(meter):
    call = log(prompt=100, completion=50)
    call.endpoint = "batch:chat/completions"

    assert call_costs(call, SNAPSHOT, meter=meter) == Costs(cost_usd=D("0.0025"),
                                                            baseline_cost_usd=D("0.0025"))
