"""``POST /v1/responses`` (OpenAI Responses API) as the simulated vLLM serves it.

The official openai SDK parses both forms; raw HTTP checks the SSE framing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import openai
import pytest

from simulator import text
from simulator.process import SimulatorProcess
from tests.simulator.support import named_sse_events, post, post_json

MODEL = "sim-model"
ORDER_HEAD = ["response.created", "response.in_progress", "response.output_item.added",
              "response.content_part.added"]
ORDER_TAIL = ["response.output_text.done", "response.content_part.done",
              "response.output_item.done", "response.completed"]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(model=MODEL, ttft_ms=2, tokens_per_s=5000, seed=5) as proc:
        yield proc


@pytest.fixture()
def client(sim: SimulatorProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


def test_sdk_reads_the_output_text_and_usage_of_a_response(client):
    resp = client.responses.create(model=MODEL, input="Tell me about rivers.")
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.model == MODEL
    assert resp.status == "completed" and resp.output_text
    assert resp.output[0].type == "message" and resp.output[0].content[0].annotations == []
    usage = resp.usage
    assert usage.output_tokens == text.count_tokens(resp.output_text)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_it_counts_instructions_and_input_items_like_the_same_chat(client):
    items = [{"role": "user", "content": "Hi"},
             {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
             {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "Rivers?"}]}]
    resp = client.responses.create(model=MODEL, instructions="Be brief.", input=items)
    chat = client.chat.completions.create(model=MODEL, max_tokens=1, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Rivers?"}])
    assert resp.usage.input_tokens == chat.usage.prompt_tokens
    assert resp.instructions == "Be brief."


def test_it_marks_a_response_cut_by_max_output_tokens_incomplete(client):
    resp = client.responses.create(model=MODEL, input="Long story", max_output_tokens=3)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage.output_tokens == 3 and resp.max_output_tokens == 3


def test_sdk_streams_the_events_in_openais_order_with_sequence_numbers(client):
    with client.responses.create(model=MODEL, input="Tell me about rivers.", stream=True) as s:
        events = list(s)
    types = [e.type for e in events]
    assert types[:4] == ORDER_HEAD and types[-4:] == ORDER_TAIL
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_it_streams_the_text_and_puts_the_usage_in_response_completed(client):
    with client.responses.create(model=MODEL, input="Rivers, please.", stream=True) as s:
        events = list(s)
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done, completed = events[-4], events[-1]
    assert events[0].response.usage is None and events[0].response.status == "in_progress"
    assert streamed == done.text == completed.response.output_text
    assert completed.response.status == "completed"
    assert completed.response.usage.output_tokens == text.count_tokens(streamed)
    whole = client.responses.create(model=MODEL, input="Rivers, please.")
    assert whole.output_text == streamed and whole.usage.input_tokens == (
        completed.response.usage.input_tokens)


def test_it_frames_stream_events_with_event_lines_and_no_done_marker(sim):
    status, headers, raw = post(sim.base_url + "/responses", {
        "model": MODEL, "input": "hi", "stream": True, "max_output_tokens": 4})
    events = named_sse_events(raw)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert all(name == data["type"] for name, data in events)
    assert b"[DONE]" not in raw
    item_ids = {data["item_id"] for _, data in events if "item_id" in data}
    assert len(item_ids) == 1 and item_ids.pop().startswith("msg_")


def test_it_paces_a_response_stream_with_the_engine_ttft():
    async def scenario(sim):
        async with aiohttp.ClientSession() as session:
            start = time.monotonic()
            async with session.post(sim.base_url + "/responses", json={
                    "model": MODEL, "input": "x", "stream": True, "max_output_tokens": 2}) as r:
                await r.content.readuntil(b"response.in_progress")
                opened = time.monotonic() - start
                await r.content.readuntil(b"response.output_text.delta")
                first = time.monotonic() - start
                await r.read()
            return opened, first

    with SimulatorProcess(model=MODEL, ttft_ms=100, tokens_per_s=1000) as sim:
        opened, first = asyncio.run(scenario(sim))
    assert opened < 0.06 and 0.1 <= first < 0.2


@pytest.mark.parametrize("body", [
    {"model": MODEL},
    {"model": MODEL, "input": []},
    {"model": MODEL, "input": [{"type": "image_generation_call"}]},
    {"model": MODEL, "input": "hi", "instructions": 3},
    {"model": MODEL, "input": "hi", "max_output_tokens": 0},
    {"model": MODEL, "input": "hi", "stream": "yes"},
])
def test_it_answers_400_in_vllm_error_shape_for_bad_bodies(sim, body):
    status, answer = post_json(sim.base_url + "/responses", body)
    assert status == 400 and answer["error"]["type"] == "BadRequestError"


def test_sdk_raises_not_found_for_a_response_from_an_unknown_model(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")
