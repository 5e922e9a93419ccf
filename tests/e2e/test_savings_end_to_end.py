"""Savings end to end: a known workload through the real gateway, real simulators and the
official `openai` SDK, on one route with a baseline model, the exact cache, small-model
routing and a prompt-token budget (plus one self-hosted call on a route of its own). Each
call's cost, baseline and savings split is checked against figures computed here by hand
from the SDK's `usage` and the Price rows (never by calling `proxy.pricing`), then the
summary API's totals against the rows.

Self-hosting: `SelfHostMeter` is per process and time-based (a call costs `GPU $/h × span /
1 h × its tokens / the window's tokens`, the span being at least a minute). With the real
monotonic clock the first call on a backend costs exactly `GPU $/h × 60 / 3600` only while
less than a minute has passed since the process first saw the backend, and every earlier
test's calls on a backend of that name would be in the window. So the test swaps in a fresh
meter whose clock stands still: the call is the window's first and only one, the span is the
one-minute floor, and its cost is exactly `GPU $/h / 60` whatever its tokens."""
from __future__ import annotations

import json
import urllib.request
import uuid
from decimal import Decimal as D

import pytest

from proxy import pricing
from proxy.models import Backend, Price, Route
from proxy.snapshot import snapshot_reload
from simulator.process import SimulatorProcess

ROUTE = "savings"
GPU_ROUTE = "savings-gpu"
BASELINE = "gpt-4o"
PRICES = {  # model: ($ per 1M input tokens, $ per 1M output tokens)
    BASELINE: (D("2.5"), D("10")),
    "sim-model": (D("0.6"), D("2.4")),       # the route's own (primary) model
    "small-model": (D("0.15"), D("0.6")),    # the small model
    "gpu-model": (D("0.9"), D("3.6")),       # served by the self-hosted backend
}
GPU_USD_PER_HOUR = D("0.0012")
BUDGET = 300
MASTER_KEY = "sk-master-savings-e2e"
PLACES = D("1e-10")
ZERO = D(0)


def usd(model: str, prompt: int, completion: int) -> D:
    """Hosted price of the tokens at `model`'s Price row, to the call log's 10 places."""
    per_in, per_out = PRICES[model]
    return ((prompt * per_in + completion * per_out) / D(1_000_000)).quantize(PLACES)


def hard(nonce: str) -> list[dict]:
    # A nonce of each test's own: the exact cache lives in Redis, shared by earlier runs.
    return [{"role": "user", "content": f"[{nonce}] Prove that there are infinitely many "
                                        "primes, step by step, and analyse the trade-offs of "
                                        "each approach."}]


def easy(nonce: str) -> list[dict]:
    return [{"role": "user", "content": f"Give me a synonym for happy. {nonce}"}]


def long_conversation(nonce: str, turns: int = 10) -> list[dict]:
    messages = [{"role": "system", "content": f"You are terse. {nonce}"}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"Tell me about city number {i}. " * 20},
                     {"role": "assistant", "content": f"City {i} is fine. " * 20}]
    return messages + [{"role": "user", "content": "Which city was best?"}]


@pytest.fixture(scope="module")
def extra_sims(simulators):
    """The small model and the self-hosted model, one simulator each, for this module."""
    small = SimulatorProcess(model="small-model", ttft_ms=1, tokens_per_s=5000, seed=1)
    gpu = SimulatorProcess(model="gpu-model", ttft_ms=1, tokens_per_s=5000, seed=1)
    small.start()
    gpu.start()
    yield {"small": small, "gpu": gpu}
    small.stop()
    gpu.stop()


@pytest.fixture
def setup(pool, extra_sims, monkeypatch):
    """Prices, the small and self-hosted backends, the `savings` route (baseline, exact cache,
    small-model routing, prompt budget) and the `savings-gpu` route; a still-clock meter."""
    for model, (per_in, per_out) in PRICES.items():
        Price.objects.create(model=model, input_usd_per_1m=per_in, output_usd_per_1m=per_out)
    Backend.objects.create(name="small-1", base_url=extra_sims["small"].url, model="small-model")
    Backend.objects.create(name="gpu-1", base_url=extra_sims["gpu"].url, model="gpu-model",
                           gpu_usd_per_hour=GPU_USD_PER_HOUR)
    Route.objects.create(name=ROUTE, model="sim-model", baseline_model=BASELINE,
                         cache_exact=True, small_model="small-model", downroute_threshold=0.5,
                         prompt_token_budget=BUDGET)
    Route.objects.create(name=GPU_ROUTE, model="gpu-model", baseline_model=BASELINE)
    snapshot_reload()
    monkeypatch.setattr(pricing, "selfhost_meter", pricing.SelfHostMeter(clock=lambda: 1000.0))
    return uuid.uuid4().hex[:12]


def chat(sdk, messages, *, model=ROUTE, **extra):
    raw = sdk.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=8, **extra)
    return raw.headers, raw.parse().usage


def assert_split(call, *, cost, baseline, cache=ZERO, routing=ZERO, compression=ZERO,
                 selfhost=ZERO):
    got = (call.cost_usd, call.baseline_cost_usd, call.saved_cache_usd, call.saved_routing_usd,
           call.saved_compression_usd, call.saved_selfhost_usd)
    assert got == (cost, baseline, cache, routing, compression, selfhost)
    # and the parts add up to baseline - cost to the last digit
    assert (call.saved_cache_usd + call.saved_routing_usd + call.saved_compression_usd
            + call.saved_selfhost_usd) == call.baseline_cost_usd - call.cost_usd


# --- one test per cause ----------------------------------------------------------------------
def test_a_hard_request_on_the_primary_saves_by_model_choice(sdk, setup, flush_calls):
    headers, usage = chat(sdk, hard(setup), temperature=0)

    assert headers["x-sluice-cache"] == "miss"
    [call] = flush_calls()
    p, c = usage.prompt_tokens, usage.completion_tokens
    assert (call.prompt_tokens, call.completion_tokens) == (p, c)
    assert (call.cache, call.decision, call.served_model, call.prompt_tokens_saved) == (
        "miss", "primary", "sim-model", 0)
    baseline, hosted = usd(BASELINE, p, c), usd("sim-model", p, c)
    assert_split(call, cost=hosted, baseline=baseline, routing=baseline - hosted)
    assert call.saved_routing_usd > 0


def test_the_same_request_again_is_an_exact_hit_that_saves_its_whole_baseline(
        sdk, setup, flush_calls):
    _, first = chat(sdk, hard(setup), temperature=0)
    headers, usage = chat(sdk, hard(setup), temperature=0)

    assert headers["x-sluice-cache"] == "exact"
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        first.prompt_tokens, first.completion_tokens)
    _, hit = flush_calls()
    p, c = usage.prompt_tokens, usage.completion_tokens
    assert (hit.prompt_tokens, hit.completion_tokens, hit.backend) == (p, c, "")
    assert (hit.cache, hit.decision, hit.prompt_tokens_saved) == ("exact", "", 0)
    baseline = usd(BASELINE, p, c)
    assert_split(hit, cost=ZERO, baseline=baseline, cache=baseline)


def test_an_easy_request_on_the_small_model_saves_by_routing(sdk, setup, flush_calls):
    headers, usage = chat(sdk, easy(setup))

    assert headers["x-sluice-backend"] == "small-1"
    [call] = flush_calls()
    p, c = usage.prompt_tokens, usage.completion_tokens
    assert (call.prompt_tokens, call.completion_tokens) == (p, c)
    assert (call.cache, call.decision, call.served_model, call.prompt_tokens_saved) == (
        "bypass", "small", "small-model", 0)
    baseline, hosted = usd(BASELINE, p, c), usd("small-model", p, c)
    assert_split(call, cost=hosted, baseline=baseline, routing=baseline - hosted)


def test_a_conversation_over_the_budget_saves_by_compression(sdk, setup, flush_calls):
    headers, usage = chat(sdk, long_conversation(setup))

    [call] = flush_calls()
    p, c, k = usage.prompt_tokens, usage.completion_tokens, call.prompt_tokens_saved
    assert (call.prompt_tokens, call.completion_tokens) == (p, c)
    assert k > 0
    assert call.cache == "bypass"
    assert (call.served_model, call.decision) == ("sim-model", "primary")  # a long prompt
    baseline = usd(BASELINE, p + k, c)                    # what the app sent, at the baseline
    compression = (k * PRICES[BASELINE][0] / D(1_000_000)).quantize(PLACES)
    hosted = usd("sim-model", p, c)
    assert_split(call, cost=hosted, baseline=baseline, compression=compression,
                 routing=baseline - compression - hosted)


def test_a_self_hosted_backend_costs_its_share_of_the_gpu_hour(sdk, setup, flush_calls):
    headers, usage = chat(sdk, easy(setup), model=GPU_ROUTE)

    assert headers["x-sluice-backend"] == "gpu-1"
    [call] = flush_calls()
    p, c = usage.prompt_tokens, usage.completion_tokens
    assert (call.prompt_tokens, call.completion_tokens, call.cache, call.decision) == (
        p, c, "bypass", "")
    # the meter's first and only call: a one-minute span, all of the window's tokens
    cost = (GPU_USD_PER_HOUR * 60 / 3600).quantize(PLACES)
    assert cost == D("0.00002")
    baseline, hosted = usd(BASELINE, p, c), usd("gpu-model", p, c)
    assert_split(call, cost=cost, baseline=baseline, routing=baseline - hosted,
                 selfhost=hosted - cost)


# --- the tokens compression removed are estimated, then calibrated on the backend's count ----
def test_a_compressed_calls_baseline_is_within_a_tenth_of_the_uncompressed_conversations(
        sdk, setup, flush_calls):
    """Compression can only estimate what it removed (the removed text never reaches the
    backend); the record scales that estimate by the backend's count of what was sent. The
    baseline is then within 10 % of the same conversation's sent whole (an exact count would
    need the backend's /tokenize for every compressed request)."""
    Route.objects.create(name="full", model="sim-model", baseline_model=BASELINE)
    snapshot_reload()
    conversation = long_conversation(setup)
    _, lean = chat(sdk, conversation, extra_headers={"x-sluice-no-downroute": "1"})
    _, full = chat(sdk, conversation, model="full")

    compressed, untouched = flush_calls()
    assert compressed.prompt_tokens_saved > 0 and untouched.prompt_tokens_saved == 0
    original = lean.prompt_tokens + compressed.prompt_tokens_saved
    assert abs(original - full.prompt_tokens) <= full.prompt_tokens / 10
    ratio = compressed.baseline_cost_usd / untouched.baseline_cost_usd
    assert D("0.9") <= ratio <= D("1.1")


# --- the summary ---------------------------------------------------------------------------------
def expected(model, usage, *, k=0, hit=False, gpu_cost=None):
    """A call's six money fields, by hand (the module docstring of proxy/pricing.py)."""
    p, c = usage.prompt_tokens, usage.completion_tokens
    baseline = usd(BASELINE, p + k, c)
    if hit:
        return {"cost": ZERO, "baseline": baseline, "cache": baseline, "routing": ZERO,
                "compression": ZERO, "selfhost": ZERO}
    hosted = usd(model, p, c)
    cost = hosted if gpu_cost is None else gpu_cost
    compression = (k * PRICES[BASELINE][0] / D(1_000_000)).quantize(PLACES)
    return {"cost": cost, "baseline": baseline, "cache": ZERO,
            "routing": baseline - compression - hosted, "compression": compression,
            "selfhost": hosted - cost}


def test_the_summary_adds_up_to_the_rows(sdk, setup, flush_calls, gateway, settings):
    settings.SLUICE_MASTER_KEY = MASTER_KEY
    _, miss = chat(sdk, hard(setup), temperature=0)
    _, hit = chat(sdk, hard(setup), temperature=0)
    _, small = chat(sdk, easy(setup))
    _, lean = chat(sdk, long_conversation(setup))
    _, gpu = chat(sdk, easy(setup), model=GPU_ROUTE)
    calls = flush_calls()
    assert [(c.cache, c.decision, c.backend != "") for c in calls] == [
        ("miss", "primary", True), ("exact", "", False), ("bypass", "small", True),
        ("bypass", "primary", True), ("bypass", "", True)]
    k = calls[3].prompt_tokens_saved
    assert k > 0
    want = [
        expected("sim-model", miss),
        expected("sim-model", hit, hit=True),
        expected("small-model", small),
        expected("sim-model", lean, k=k),
        expected("gpu-model", gpu, gpu_cost=(GPU_USD_PER_HOUR / 60).quantize(PLACES)),
    ]
    assert [{"cost": c.cost_usd, "baseline": c.baseline_cost_usd, "cache": c.saved_cache_usd,
             "routing": c.saved_routing_usd, "compression": c.saved_compression_usd,
             "selfhost": c.saved_selfhost_usd} for c in calls] == want

    request = urllib.request.Request(f"{gateway.url}/api/stats/summary?minutes=15",
                                     headers={"Authorization": f"Bearer {MASTER_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        body = json.loads(response.read())

    def money(indexes):
        def total(field):
            return sum((want[i][field] for i in indexes), ZERO)
        return {
            "baseline_cost_usd": float(total("baseline")),
            "cost_usd": float(total("cost")),
            "savings_usd": float(total("baseline") - total("cost")),
            "savings_by_cause": {
                "cache_exact": float(total("cache")),  # the one hit is exact
                "cache_semantic": 0.0,
                "routing": float(total("routing")),
                "compression": float(total("compression")),
                "selfhost": float(total("selfhost")),
                "batch": 0.0,
            },
        }

    def picked(stats):
        return {f: stats[f] for f in ("baseline_cost_usd", "cost_usd", "savings_usd",
                                      "savings_by_cause")}

    assert body["requests"] == 5
    assert picked(body) == money(range(5))
    by_route = {r["route"]: r for r in body["by_route"]}
    assert set(by_route) == {ROUTE, GPU_ROUTE}
    assert picked(by_route[ROUTE]) == money(range(4))
    assert picked(by_route[GPU_ROUTE]) == money([4])
    # the causes add up to baseline - cost exactly, as Decimals, over the rows
    causes = sum((w["cache"] + w["routing"] + w["compression"] + w["selfhost"] for w in want),
                 ZERO)
    assert causes == sum((w["baseline"] - w["cost"] for w in want), ZERO)
    assert body["savings_by_cause"]["cache_exact"] == float(want[1]["baseline"]) > 0
    assert body["savings_by_cause"]["compression"] > 0
