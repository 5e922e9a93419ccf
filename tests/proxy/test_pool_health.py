"""Round-robin over healthy backends: a backend that is down stops getting calls."""
import asyncio

import openai
import pytest

from proxy.models import Backend, Route
from proxy.pool import backend_state, health_probe_all
from proxy.snapshot import snapshot_current, snapshot_reload
from proxy.upstream import session_close
from simulator.process import SimulatorProcess, free_port

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def half_dead_pool(pool):
    """Two backends of model `mixed`: one a live simulator, one a port nobody listens on."""
    with SimulatorProcess(model="mixed", ttft_ms=1, tokens_per_s=5000) as live:
        Backend.objects.create(name="a-live", base_url=live.url, model="mixed")
        Backend.objects.create(name="b-dead", base_url=f"http://127.0.0.1:{free_port()}",
                               model="mixed")
        Route.objects.create(name="mixed", model="mixed")
        snapshot_reload()
        yield {b.name: b for b in snapshot_current().backends if b.model == "mixed"}


def probe() -> None:
    async def run():
        await health_probe_all(snapshot_current())
        await session_close()

    asyncio.run(run())


def test_the_health_probe_marks_a_dead_backend_down_and_a_live_one_up(half_dead_pool):
    probe()

    assert backend_state(half_dead_pool["a-live"]).healthy is True
    assert backend_state(half_dead_pool["b-dead"]).healthy is False


def test_calls_skip_a_backend_the_probe_found_down(sdk, half_dead_pool, flush_calls):
    probe()

    for _ in range(4):
        sdk.chat.completions.create(model="mixed", messages=MESSAGES, max_tokens=2)

    assert {c.backend for c in flush_calls()} == {"a-live"}


def test_a_refused_connection_marks_the_backend_down_at_once(sdk, half_dead_pool, flush_calls):
    outcomes = []
    for _ in range(4):
        try:
            sdk.chat.completions.create(model="mixed", messages=MESSAGES, max_tokens=2)
            outcomes.append("ok")
        except openai.APIStatusError as exc:
            outcomes.append(f"failed {exc.status_code} {exc.code}")

    assert sum(o.startswith("failed") for o in outcomes) <= 1, outcomes
    assert backend_state(half_dead_pool["b-dead"]).healthy is False
