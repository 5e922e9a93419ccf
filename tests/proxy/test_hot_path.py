"""The hot path never touches the database; the call log is written in batches off it."""
import asyncio
import gc
import threading

import pytest
from django.db.backends.utils import CursorWrapper
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from config.asgi_direct import ProxyRequest

MESSAGES = [{"role": "user", "content": "Count the queries."}]


@pytest.fixture
def queries(monkeypatch):
    """Every SQL statement any thread of this process runs, with the thread's name."""
    seen: list[tuple[str, str]] = []
    original = CursorWrapper._execute_with_wrappers

    def spy(self, sql, params, many, executor):
        seen.append((threading.current_thread().name, sql))
        return original(self, sql, params, many, executor)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", spy)
    return seen


def test_it_runs_no_query_while_serving_calls(sdk, queries):
    for _ in range(5):
        sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=3)
    for _ in range(5):
        list(sdk.chat.completions.create(model="default", messages=MESSAGES, stream=True))
    sdk.models.list()

    assert queries == []


def test_it_writes_the_buffered_calls_in_one_batch_insert(sdk, queries, flush_calls):
    for _ in range(10):
        sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=3)
    assert queries == []

    calls = flush_calls()

    inserts = [sql for _, sql in queries if sql.startswith("INSERT")]
    assert len(calls) == 10
    assert len(inserts) == 1


def test_it_records_route_backend_tokens_latency_and_ttft(sdk, flush_calls):
    stream = sdk.chat.completions.create(
        model="default", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    usage = [c.usage for c in stream if c.usage][-1]
    answer = sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=4)

    streamed, whole = flush_calls()
    assert (streamed.route, streamed.served_model, streamed.stream) == (
        "default", "sim-model", True)
    assert streamed.backend in ("sim-1", "sim-2") and whole.backend != streamed.backend
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (
        usage.prompt_tokens, usage.completion_tokens)
    assert (whole.prompt_tokens, whole.completion_tokens) == (
        answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert 0 < streamed.ttft_ms < streamed.latency_ms
    assert whole.ttft_ms is None and whole.latency_ms > 0
    assert streamed.status_code == whole.status_code == 200
    assert streamed.api_key_name == "tests"


@pytest.fixture
def cyclic_garbage():
    """What the garbage collector finds unreachable, kept for inspection instead of freed."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield lambda: (gc.collect(), list(gc.garbage))[1]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_a_served_request_leaves_no_reference_cycle_behind(sdk, cyclic_garbage):
    """A request freed by reference counting costs nothing later; one caught in a cycle waits
    for a collector pass, which holds the event loop for every open stream while it frees."""
    for _ in range(5):
        sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=3)
    for _ in range(5):
        list(sdk.chat.completions.create(model="default", messages=MESSAGES, stream=True))

    left = [type(o).__name__ for o in cyclic_garbage()
            if isinstance(o, (ProxyRequest, HttpRequest, HttpResponseBase, asyncio.Task))]
    assert left == []
