"""The simulator's HTTP API, against real ``python -m simulator`` subprocesses.

The official openai SDK is the client where it can be; raw HTTP where the bytes matter.
Fixtures live here rather than in a conftest so that the module also runs with
``--noconftest`` (the project conftest needs PostgreSQL; these tests need nothing); raw-HTTP
helpers are in :mod:`tests.simulator.support`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import aiohttp
import openai
import pytest

from simulator.process import SimulatorProcess
from tests.simulator.support import get, post, sse_events

MODEL = "sim-model"
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me about rivers, please."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    """A fast shared simulator: 5 ms TTFT, 2000 tokens/s."""
    with SimulatorProcess(model=MODEL, ttft_ms=5, tokens_per_s=2000, seed=7) as proc:
        yield proc


@pytest.fixture()
def client(sim: SimulatorProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


def scrape(sim: SimulatorProcess) -> str:
    return get(sim.url + "/metrics")[1].decode()


# ---- chat ------------------------------------------------------------------------------------

def test_it_streams_chat_text_and_a_usage_chunk_matching_the_non_stream_answer(client):
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens",
                                                "total_tokens"}) == \
        full.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
    assert full.choices[0].finish_reason == "stop"


def test_it_shapes_chat_stream_bytes_like_vllm(sim):
    status, headers, raw = post(sim.url + "/v1/chat/completions", {
        "model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 3,
        "stream_options": {"include_usage": True}})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    first, *tokens, last_token, usage, _ = events
    assert list(first) == ["id", "object", "created", "model", "choices"]
    assert first["id"].startswith("chatcmpl-") and first["object"] == "chat.completion.chunk"
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}]
    assert len(tokens) == 2
    assert list(tokens[0]["choices"][0]) == ["index", "delta", "logprobs", "finish_reason"]
    assert last_token["choices"][0]["finish_reason"] == "length"
    assert last_token["choices"][0]["stop_reason"] is None
    assert usage["choices"] == [] and list(usage["usage"]) == [
        "prompt_tokens", "total_tokens", "completion_tokens"]
    assert usage["usage"]["completion_tokens"] == 3
    assert len({e["id"] for e in events[:-1]}) == 1


def test_it_omits_the_usage_chunk_unless_asked(sim):
    _, _, raw = post(sim.url + "/v1/chat/completions",
                     {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 2})
    events = sse_events(raw)
    assert all(e == "[DONE]" or (e["choices"] and "usage" not in e) for e in events)


def test_it_adds_running_usage_to_every_chunk_with_continuous_usage_stats(sim):
    _, _, raw = post(sim.url + "/v1/chat/completions", {
        "model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 4,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    events = sse_events(raw)[:-1]
    assert [e["usage"]["completion_tokens"] for e in events] == [0, 1, 2, 3, 4, 4]


def test_it_answers_the_same_text_for_the_same_prompt(client):
    a = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    b = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    other = client.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                                   "content": "Other."}])
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content != other.choices[0].message.content


def test_it_shapes_the_non_stream_chat_body_like_vllm(sim):
    status, headers, raw = post(sim.url + "/v1/chat/completions",
                                {"model": MODEL, "messages": MESSAGES})
    body = json.loads(raw)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert list(body) == ["id", "object", "created", "model", "choices", "usage",
                          "prompt_logprobs"]
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["tool_calls"] == []
    assert (choice["logprobs"], choice["stop_reason"]) == (None, None)
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_it_stops_at_max_tokens_with_finish_reason_length(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=7)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 7


def test_it_accepts_max_completion_tokens(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                          max_completion_tokens=4)
    assert (resp.choices[0].finish_reason, resp.usage.completion_tokens) == ("length", 4)


def test_it_cuts_the_text_before_a_stop_string(client):
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    word = full.choices[0].message.content.split()[5]
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, stop=["@@", word])
    text = resp.choices[0].message.content
    assert word not in text and full.choices[0].message.content.startswith(text)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].model_extra["stop_reason"] == word


def test_it_streams_only_text_before_a_stop_string(client):
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    word = full.choices[0].message.content.split()[4]
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stop=word,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert word not in text and full.choices[0].message.content.startswith(text)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_it_returns_n_different_choices_with_their_indexes(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=3)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert len({c.message.content for c in resp.choices}) == 3


def test_it_streams_n_choices_each_with_its_index(client):
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2,
                                                stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    assert texts == {c.index: c.message.content for c in full.choices}
    assert finished == {0, 1}


# ---- text completions ------------------------------------------------------------------------

def test_it_serves_text_completions(client):
    resp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=50)
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    assert resp.choices[0].text and resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens == 4


def test_it_streams_text_completions_with_usage(sim, client):
    full = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=50)
    _, _, raw = post(sim.url + "/v1/completions", {
        "model": MODEL, "prompt": "Once upon a time", "max_tokens": 50, "stream": True,
        "stream_options": {"include_usage": True}})
    events = sse_events(raw)
    assert events[0]["object"] == "text_completion"
    assert list(events[0]["choices"][0]) == ["index", "text", "logprobs", "finish_reason",
                                             "stop_reason"]
    assert "".join(e["choices"][0]["text"] for e in events[:-2]) == full.choices[0].text
    assert events[-2]["choices"] == [] and events[-2]["usage"] == full.usage.model_dump(
        include={"prompt_tokens", "total_tokens", "completion_tokens"})


# ---- errors ----------------------------------------------------------------------------------

def test_it_answers_404_for_an_unknown_model(sim, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES)
    status, _, raw = post(sim.url + "/v1/chat/completions", {"model": "nope",
                                                              "messages": MESSAGES})
    assert status == 404
    assert json.loads(raw) == {"error": {"message": "The model `nope` does not exist.",
                                         "type": "NotFoundError", "param": "model",
                                         "code": 404}}


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", b"{not json"),
    ("/v1/chat/completions", {"model": MODEL}),
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": "ten"}),
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stop": 3}),
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 10 ** 6}),
    ("/v1/completions", {"model": MODEL}),
    ("/v1/completions", {"model": MODEL, "prompt": {"a": 1}}),
])
def test_it_answers_400_in_vllm_error_shape_for_bad_requests(sim, path, body):
    status, _, raw = post(sim.url + path, body)
    error = json.loads(raw)["error"]
    assert status == 400
    assert error["type"] == "BadRequestError" and error["code"] == 400 and error["message"]


def test_it_ignores_unknown_request_fields(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2,
                                          extra_body={"top_k": 5, "guided_json": None})
    assert resp.usage.completion_tokens == 2


def test_it_fails_requests_with_500_at_error_rate_one():
    with SimulatorProcess(model=MODEL, error_rate=1.0, ttft_ms=1) as sim:
        status, _, raw = post(sim.url + "/v1/chat/completions",
                              {"model": MODEL, "messages": MESSAGES, "stream": True})
        assert status == 500
        assert json.loads(raw)["error"]["code"] == 500
        client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model=MODEL, prompt="x")


def test_it_breaks_streams_with_an_error_event_at_mid_stream_error_rate_one():
    with SimulatorProcess(model=MODEL, mid_stream_error_rate=1.0, ttft_ms=1,
                          tokens_per_s=5000) as sim:
        status, _, raw = post(sim.url + "/v1/chat/completions", {
            "model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 10})
        events = sse_events(raw)
        assert status == 200 and events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == 500
        assert all(e["choices"][0]["finish_reason"] is None for e in events[:-2])
        assert 1 < len(events) - 2 < 11


# ---- other routes ----------------------------------------------------------------------------

def test_it_lists_the_served_model(sim, client):
    assert [m.id for m in client.models.list()] == [MODEL]
    body = json.loads(get(sim.url + "/v1/models")[1])
    entry = body["data"][0]
    assert body["object"] == "list"
    assert (entry["owned_by"], entry["root"], entry["parent"]) == ("vllm", MODEL, None)
    assert entry["max_model_len"] == 8192 and entry["permission"]


def test_it_answers_health_with_an_empty_200(sim):
    assert get(sim.url + "/health") == (200, b"")


def test_it_tokenizes_chat_messages_like_usage_counts_them(sim, client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    status, _, raw = post(sim.url + "/tokenize", {"model": MODEL, "messages": MESSAGES})
    body = json.loads(raw)
    assert status == 200 and body["count"] == resp.usage.prompt_tokens == len(body["tokens"])
    assert body["max_model_len"] == 8192


def test_it_tokenizes_prompts_like_usage_counts_them(sim, client):
    resp = client.completions.create(model=MODEL, prompt="Hello there, sim!", max_tokens=1)
    body = json.loads(post(sim.url + "/tokenize", {"model": MODEL,
                                                   "prompt": "Hello there, sim!"})[2])
    assert body["count"] == resp.usage.prompt_tokens == 5


def test_it_exposes_vllm_metric_names_and_labels(sim, client):
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    text = scrape(sim)
    labels = {"model_name": MODEL, "engine": "0"}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:num_preemptions_total"):
        metric(text, name, **labels)
    for name in ("vllm:time_to_first_token_seconds", "vllm:time_per_output_token_seconds",
                 "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds"):
        assert metric(text, name + "_count", **labels) >= 1
    assert metric(text, "vllm:request_success_total", finished_reason="length") >= 1
    assert metric(text, "vllm:generation_tokens_total", **labels) >= 3
    assert "_created" not in text


# ---- timing and load -------------------------------------------------------------------------

def test_it_frees_the_batch_slot_when_a_client_disconnects_mid_stream():
    async def scenario(sim):
        async with aiohttp.ClientSession() as session:
            resp = await session.post(sim.url + "/v1/chat/completions", json={
                "model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 200})
            await resp.content.readuntil(b"\n\n")
            assert metric(scrape(sim), "vllm:num_requests_running") == 1
            assert metric(scrape(sim), "vllm:kv_cache_usage_perc") > 0
            resp.close()  # drop the connection mid-stream
        deadline = time.monotonic() + 2
        while metric(scrape(sim), "vllm:num_requests_running") != 0:
            assert time.monotonic() < deadline, "slot not released after disconnect"
            await asyncio.sleep(0.02)
        assert metric(scrape(sim), "vllm:request_success_total", finished_reason="abort") == 1
        assert metric(scrape(sim), "vllm:kv_cache_usage_perc") == 0

    with SimulatorProcess(model=MODEL, ttft_ms=1, tokens_per_s=50) as sim:
        asyncio.run(scenario(sim))


def test_it_queues_requests_beyond_max_num_seqs():
    async def one(session, url):
        start = time.monotonic()
        async with session.post(url + "/v1/chat/completions", json={
                "model": MODEL, "messages": MESSAGES, "max_tokens": 30}) as resp:
            assert resp.status == 200
            await resp.read()
        return time.monotonic() - start

    async def scenario(sim):
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(one(session, sim.url)) for _ in range(4)]
            seen = set()
            for _ in range(20):  # sample while the first two run (about 0.3 s)
                await asyncio.sleep(0.01)
                text = scrape(sim)
                seen.add((metric(text, "vllm:num_requests_running"),
                          metric(text, "vllm:num_requests_waiting")))
            return seen, sorted(await asyncio.gather(*tasks))

    # 10 ms TTFT + 29 intervals of 10 ms: about 0.3 s per request, two at a time.
    with SimulatorProcess(model=MODEL, ttft_ms=10, tokens_per_s=100, max_num_seqs=2) as sim:
        seen, latencies = asyncio.run(scenario(sim))
        after = scrape(sim)
    assert (2, 2) in seen and all(running <= 2 for running, _ in seen)
    assert latencies[2] > latencies[1] + 0.2  # the later two waited for a whole request
    assert metric(after, "vllm:request_queue_time_seconds_sum") > 0.4


def test_it_delivers_the_first_token_after_about_ttft_ms():
    async def scenario(sim):
        async with aiohttp.ClientSession() as session:
            ttfts = []
            for _ in range(5):
                start = time.monotonic()
                async with session.post(sim.url + "/v1/completions", json={
                        "model": MODEL, "prompt": "x", "max_tokens": 2, "stream": True}) as r:
                    await r.content.readuntil(b"\n\n")
                    ttfts.append(time.monotonic() - start)
                    await r.read()
            return sorted(ttfts)[2]

    with SimulatorProcess(model=MODEL, ttft_ms=50, tokens_per_s=1000) as sim:
        median = asyncio.run(scenario(sim))
    assert 0.05 <= median < 0.1
