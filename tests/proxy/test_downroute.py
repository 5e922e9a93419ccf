"""Small-model routing and prompt compression through the gateway, with real simulators."""
import uuid

import pytest

from proxy.models import Backend, Route
from proxy.snapshot import snapshot_reload
from simulator.process import SimulatorProcess, free_port

EASY = [{"role": "user", "content": "Give me a synonym for happy."}]
HARD = [{"role": "user", "content": "Prove that there are infinitely many primes, step by "
                                    "step, and analyse the trade-offs of each approach."}]


@pytest.fixture
def small_sim(pool):
    with SimulatorProcess(model="small-model", ttft_ms=1, tokens_per_s=5000) as sim:
        Backend.objects.create(name="small-1", base_url=sim.url, model="small-model")
        Route.objects.create(name="smart", model="sim-model", small_model="small-model",
                             downroute_threshold=0.5)
        snapshot_reload()
        yield sim


def ask(sdk, messages, **headers):
    return sdk.chat.completions.with_raw_response.create(
        model="smart", messages=messages, max_tokens=4,
        extra_headers=headers or None)


def test_an_easy_request_goes_to_the_small_model(sdk, small_sim, flush_calls):
    answer = ask(sdk, EASY)

    assert answer.headers["x-sluice-backend"] == "small-1"
    assert answer.headers["x-sluice-decision"].startswith("small")
    [call] = flush_calls()
    assert (call.route, call.served_model, call.decision) == ("smart", "small-model", "small")
    assert 0 <= call.decision_score < 0.5


def test_a_hard_request_stays_on_the_routes_model(sdk, small_sim, flush_calls):
    answer = ask(sdk, HARD)

    assert answer.headers["x-sluice-backend"] in ("sim-1", "sim-2")
    [call] = flush_calls()
    assert (call.served_model, call.decision) == ("sim-model", "primary")
    assert call.decision_score >= 0.5


def test_the_app_can_refuse_down_routing(sdk, small_sim, flush_calls):
    answer = ask(sdk, EASY, **{"x-sluice-no-downroute": "1"})

    assert answer.headers["x-sluice-decision"] == "forced"
    [call] = flush_calls()
    assert (call.served_model, call.decision) == ("sim-model", "forced")


def test_a_failing_small_model_falls_back_to_the_routes_model(sdk, pool, flush_calls):
    Backend.objects.create(name="small-dead", base_url=f"http://127.0.0.1:{free_port()}",
                           model="small-model")
    Route.objects.create(name="smart", model="sim-model", small_model="small-model")
    snapshot_reload()

    answer = ask(sdk, EASY)

    assert answer.headers["x-sluice-fallback"] == "sim-model"
    [call] = flush_calls()
    assert (call.decision, call.served_model, call.fallback_used) == ("small", "sim-model", True)


def long_conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"Tell me about city number {i}. " * 20},
                     {"role": "assistant", "content": f"City {i} is fine. " * 20}]
    return messages + [{"role": "user", "content": "Which city was best?"}]


def test_a_conversation_over_the_budget_loses_its_oldest_turns(sdk, pool, flush_calls):
    Route.objects.create(name="lean", model="sim-model", prompt_token_budget=300)
    Route.objects.create(name="full", model="sim-model")
    snapshot_reload()
    messages = long_conversation(10)

    lean = sdk.chat.completions.create(model="lean", messages=messages, max_tokens=2)
    full = sdk.chat.completions.create(model="full", messages=messages, max_tokens=2)

    assert lean.usage.prompt_tokens < full.usage.prompt_tokens / 2
    compressed, untouched = flush_calls()
    assert compressed.prompt_tokens_saved > 0 and untouched.prompt_tokens_saved == 0


def test_a_down_routed_answer_is_found_by_the_next_lookup(sdk, small_sim, flush_calls):
    Route.objects.filter(name="smart").update(cache_exact=True)
    snapshot_reload()
    # Unique per run: the exact cache lives in Redis, which outlives test runs.
    question = [{"role": "user", "content": f"Give me a synonym for glad ({uuid.uuid4().hex})."}]

    first = sdk.chat.completions.with_raw_response.create(
        model="smart", messages=question, max_tokens=4, temperature=0)
    import time

    time.sleep(0.2)  # the answer is stored just after the call
    second = sdk.chat.completions.with_raw_response.create(
        model="smart", messages=question, max_tokens=4, temperature=0)

    assert first.headers["x-sluice-decision"].startswith("small")
    assert second.headers["x-sluice-cache"] == "exact"
