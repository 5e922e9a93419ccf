"""How a stream ends: a client that hangs up, and a backend that breaks mid-stream."""
import time
import urllib.request

import openai
import pytest

from proxy.models import Backend, Route
from proxy.pool import backend_state
from proxy.snapshot import snapshot_current, snapshot_reload
from simulator.process import SimulatorProcess

MESSAGES = [{"role": "user", "content": "Write a long story."}]


def running(sim: SimulatorProcess) -> float:
    with urllib.request.urlopen(sim.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))


@pytest.fixture
def slow_sim(pool):
    """A backend slow enough that a stream is still running when the test acts on it."""
    with SimulatorProcess(model="slow-model", ttft_ms=5, tokens_per_s=20) as sim:
        Backend.objects.create(name="slow", base_url=sim.url, model="slow-model")
        Route.objects.create(name="slow", model="slow-model")
        snapshot_reload()
        yield sim


@pytest.fixture
def faulty_sim(pool):
    with SimulatorProcess(model="faulty-model", ttft_ms=5, tokens_per_s=500,
                          mid_stream_error_rate=1.0) as sim:
        Backend.objects.create(name="faulty", base_url=sim.url, model="faulty-model")
        Route.objects.create(name="faulty", model="faulty-model")
        snapshot_reload()
        yield sim


def in_flight(backend_name: str) -> int:
    [backend] = [b for b in snapshot_current().backends if b.name == backend_name]
    return backend_state(backend).in_flight


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_client_hanging_up_cancels_the_upstream_request(sdk, slow_sim, flush_calls):
    stream = sdk.chat.completions.create(model="slow", messages=MESSAGES, stream=True,
                                         max_tokens=500)
    next(iter(stream))
    assert running(slow_sim) == 1

    stream.close()

    assert wait_until(lambda: running(slow_sim) == 0)
    assert wait_until(lambda: [c.status_code for c in flush_calls()] == [499])
    assert in_flight("slow") == 0


def test_the_in_flight_count_goes_up_during_a_stream_and_back_down_after(sdk, slow_sim):
    stream = sdk.chat.completions.create(model="slow", messages=MESSAGES, stream=True,
                                         max_tokens=3)
    chunks = iter(stream)
    next(chunks)
    assert in_flight("slow") == 1

    list(chunks)

    assert wait_until(lambda: in_flight("slow") == 0)


def test_a_backend_error_event_mid_stream_reaches_the_app_and_marks_the_call_failed(
    sdk, faulty_sim, flush_calls
):
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model="faulty", messages=MESSAGES, stream=True,
                                         max_tokens=40))

    # The SDK raises on the error event; the server closes the books just after.
    assert wait_until(lambda: len(flush_calls()) == 1)
    [call] = flush_calls()
    assert (call.status_code, call.error_type) == (502, "upstream_stream_error")


def test_a_backend_dying_mid_stream_ends_the_stream_with_an_error_event(sdk, slow_sim, flush_calls):
    stream = sdk.chat.completions.create(model="slow", messages=MESSAGES, stream=True,
                                         max_tokens=500)
    chunks = iter(stream)
    next(chunks)

    slow_sim.proc.kill()

    with pytest.raises(openai.APIError) as caught:
        list(chunks)
    assert "mid-stream" in str(caught.value)
    assert wait_until(lambda: len(flush_calls()) == 1)
    [call] = flush_calls()
    assert (call.status_code, call.backend) == (502, "slow")


def test_a_stream_dropped_before_its_first_byte_is_still_recorded(pool, slow_sim, flush_calls):
    """Django drops a response unsent when the client leaves in between; the call still
    gets its record and the upstream request is cancelled."""
    import asyncio
    import gc
    import json

    from django.test import RequestFactory

    from proxy.endpoints import CHAT
    from proxy.pipeline import proxy_handle
    from proxy.upstream import session_close

    request = RequestFactory().post(
        "/v1/chat/completions", content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {pool}",
        data=json.dumps({"model": "slow", "messages": MESSAGES, "stream": True, "max_tokens": 500}))

    async def scenario():
        response = await proxy_handle(request, endpoint=CHAT)
        assert response.streaming and running(slow_sim) == 1
        del response
        gc.collect()
        await session_close()

    asyncio.run(scenario())

    assert wait_until(lambda: running(slow_sim) == 0)
    assert [(c.status_code, c.error_type) for c in flush_calls()] == [(499, "client_closed")]
