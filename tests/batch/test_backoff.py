"""Offline work fills idle capacity: a batch waits while a backend of its model has requests
waiting (vLLM's `vllm:num_requests_waiting`), and goes on once the queue is empty."""
from __future__ import annotations

import asyncio
import threading
import time

import openai
import pytest

from batch import runner
from batch.runner import LoadGauge, backoff_needed, waiting_parse
from proxy.snapshot import BackendInfo
from proxy.upstream import session_close
from simulator.process import SimulatorProcess

pytestmark = pytest.mark.timeout(60)

METRICS = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 9
vllm:num_requests_running{engine="0",model_name="m"} 1.0
"""


def test_waiting_is_read_from_vllms_metrics_page():
    assert waiting_parse(METRICS) == 5.0  # every engine's, no other metric's
    assert waiting_parse("vllm:num_requests_waiting 0\n") == 0.0
    assert waiting_parse("vllm:num_requests_running 4\n") is None


def test_it_backs_off_while_any_backend_has_requests_waiting():
    assert backoff_needed([0.0, 2.0]) is True
    assert backoff_needed([0.0, 0.0]) is False


def test_a_backend_whose_load_is_unknown_does_not_hold_the_batch_back():
    assert backoff_needed([None, 0.0]) is False
    assert backoff_needed([]) is False


class ScriptedGauge:
    """What successive scrapes of the pool would say."""

    def __init__(self, readings: list[list[float | None]]) -> None:
        self.readings = readings
        self.looks = 0

    async def waiting(self) -> list[float | None]:
        self.looks += 1
        return self.readings[min(self.looks, len(self.readings)) - 1]


def test_dispatch_waits_until_the_queue_is_empty(settings):
    settings.SLUICE_BATCH_BACKOFF_S = 0.01
    gauge = ScriptedGauge([[2.0, 0.0], [1.0, None], [0.0, None]])

    assert asyncio.run(runner._room_wait(gauge, asyncio.Event())) is True
    assert gauge.looks == 3


def test_a_cancel_ends_the_wait(settings):
    settings.SLUICE_BATCH_BACKOFF_S = 0.01

    async def cancelled_while_waiting() -> bool:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return await runner._room_wait(ScriptedGauge([[1.0]]), stop)

    assert asyncio.run(cancelled_while_waiting()) is False


def test_the_gauge_sees_a_real_backends_queue():
    with SimulatorProcess(model="busy", ttft_ms=5, tokens_per_s=100, max_num_seqs=1) as sim:
        backend = BackendInfo(id=0, name="busy", base_url=sim.url, model="busy", weight=1,
                              max_concurrency=8)
        client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)

        def ask() -> None:
            client.completions.create(model="busy", prompt="hi", max_tokens=40)

        async def read() -> list[float | None]:
            try:
                return await LoadGauge([backend]).waiting()
            finally:
                await session_close()

        assert asyncio.run(read()) == [0.0]
        threads = [threading.Thread(target=ask) for _ in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 5
        seen = asyncio.run(read())
        while not backoff_needed(seen) and time.monotonic() < deadline:
            seen = asyncio.run(read())
        for thread in threads:
            thread.join()
        assert seen[0] >= 1  # one running (max_num_seqs=1), the others waiting
        assert asyncio.run(read()) == [0.0]
