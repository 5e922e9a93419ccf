"""Backend choice end to end: real simulators, the SDK, Sluice's scheduler in between."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.models import Backend, Route
from proxy.scheduler import REASON_BOUNDED, REASON_PREFIX, scheduler_get
from proxy.snapshot import snapshot_reload
from simulator.process import SimulatorProcess

SYSTEM = "You are the support assistant of a large software company. " * 12  # ~700 chars


@pytest.fixture(scope="module")
def trio():
    """Three backends of one model, slow enough to decode that a held stream stays open."""
    sims = [SimulatorProcess(model="conv-model", ttft_ms=2, tokens_per_s=100, seed=3)
            for _ in range(3)]
    for sim in sims:
        sim.start()
    yield sims
    for sim in sims:
        sim.stop()


@pytest.fixture
def conv(gateway, trio):
    for i, sim in enumerate(trio, start=1):
        Backend.objects.create(name=f"conv-{i}", base_url=sim.url, model="conv-model")
    Route.objects.create(name="conv", model="conv-model", balance_policy="prefix_aware")
    snapshot_reload()


def turn(sdk, messages: list[dict], **extra) -> tuple[str, str, str]:
    raw = sdk.chat.completions.with_raw_response.create(
        model="conv", messages=messages, max_tokens=6, **extra)
    answer = raw.parse().choices[0].message.content
    return raw.headers["x-sluice-backend"], raw.headers["x-sluice-backend-reason"], answer


def conversation_start(topic: str, system: str = SYSTEM) -> list[dict]:
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"My {topic} stopped syncing after the update. " * 6}]


def test_a_conversations_turns_stick_to_one_backend(sdk, conv):
    messages = conversation_start("calendar")
    served, reasons = [], []
    for t in range(4):
        backend, reason, answer = turn(sdk, messages)
        served.append(backend)
        reasons.append(reason)
        messages += [{"role": "assistant", "content": answer},
                     {"role": "user", "content": f"Follow-up {t}: that did not help. " * 4}]

    assert len(set(served)) == 1
    assert reasons[1:] == [REASON_PREFIX] * 3


def test_a_conversation_moves_when_its_backend_is_overloaded(sdk, conv, monkeypatch):
    monkeypatch.setattr(scheduler_get(), "load_slack", 0.0)  # the factor alone bounds it
    messages = conversation_start("mailbox")
    home, _, answer = turn(sdk, messages)
    messages += [{"role": "assistant", "content": answer},
                 {"role": "user", "content": "Still broken, what now? " * 4}]
    # Another request of the same conversation, held open on its backend: one in flight there
    # and none elsewhere is more than 1.25x its fair share.
    held = sdk.chat.completions.with_raw_response.create(
        model="conv", messages=messages, max_tokens=2000, stream=True)
    try:
        next(iter(held.parse()))
        assert held.headers["x-sluice-backend"] == home

        moved, reason, _ = turn(sdk, messages)
    finally:
        held.parse().close()

    assert moved != home
    assert reason == REASON_BOUNDED


def test_requests_without_a_shared_prefix_spread_over_the_pool(sdk, conv):
    served = {turn(sdk, conversation_start("phone", system=f"Tenant {i}. " + SYSTEM))[0]
              for i in range(6)}

    assert len(served) == 3


@pytest.fixture(scope="module")
def lopsided():
    """Two backends of one model, the second decoding at half the speed of the first."""
    sims = [SimulatorProcess(model="lop-model", ttft_ms=2, tokens_per_s=rate, seed=3)
            for rate in (400, 200)]
    for sim in sims:
        sim.start()
    yield sims
    for sim in sims:
        sim.stop()


def served_counts(sdk, policy: str, lopsided_sims) -> dict[str, int]:
    Route.objects.update_or_create(name="lop", defaults={"model": "lop-model",
                                                         "balance_policy": policy})
    for name, sim in zip(("fast", "slow"), lopsided_sims, strict=True):
        Backend.objects.get_or_create(name=name, base_url=sim.url, model="lop-model")
    snapshot_reload()

    def ask(i: int) -> str:
        raw = sdk.chat.completions.with_raw_response.create(
            model="lop", messages=[{"role": "user", "content": f"count to forty, run {i}"}],
            max_tokens=40, extra_body={"ignore_eos": True})
        return raw.headers["x-sluice-backend"]

    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(ask, range(48)))
    return {name: served.count(name) for name in ("fast", "slow")}


def test_a_slow_backend_receives_less_traffic_under_least_load(sdk, gateway, lopsided):
    counts = served_counts(sdk, "least_load", lopsided)

    assert counts["slow"] < 0.8 * counts["fast"], counts


def test_round_robin_gives_a_slow_backend_its_full_turn(sdk, gateway, lopsided):
    counts = served_counts(sdk, "round_robin", lopsided)

    assert counts == {"fast": 24, "slow": 24}
