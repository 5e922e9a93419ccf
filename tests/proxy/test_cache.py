"""The exact cache: keys, the temperature rule, stores (Redis and in-process), replay in the
shape asked for, what is never stored, and how hits are recorded."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid

import openai
import orjson
import pytest
import redis
from django.conf import settings

from proxy import cache, pipeline, ratelimit, replay
from proxy.cache import LocalStore, RedisStore, cache_key, cache_plan
from proxy.models import ApiKey, Backend, Route
from proxy.semantic import SemanticHit
from proxy.snapshot import RouteInfo, snapshot_reload
from simulator.process import free_port

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
ROUTE = RouteInfo(name="default", model="sim-model", baseline_model="sim-model", cache_exact=True)
BODY = {"model": "default", "messages": MESSAGES, "temperature": 0, "max_tokens": 16}


# --- fixtures -----------------------------------------------------------------------------------
_TEST_PREFIX = f"sluice:cache:test-{uuid.uuid4().hex[:10]}:"
_stores: dict[str, RedisStore] = {}


@pytest.fixture
def redis_store():
    """The gateway's store, under a prefix of this test run's own (other runs share Redis db
    15); one store for the run (its client lives on the gateway's loop), emptied after each
    test."""
    store = _stores.setdefault("redis", RedisStore(settings.REDIS_URL, prefix=_TEST_PREFIX))
    old = cache.store_set(store)
    yield store
    cache.store_set(old)
    client = redis.Redis.from_url(settings.REDIS_URL)
    names = list(client.scan_iter(match=_TEST_PREFIX + "*"))
    if names:
        client.delete(*names)
    client.close()


def route_caching(**fields) -> None:
    Route.objects.filter(name="default").update(**{"cache_exact": True, **fields})
    snapshot_reload()


@pytest.fixture
def cached(gateway, redis_store):
    """The `default` route with the exact cache on, entries in Redis under a test prefix."""
    route_caching()
    return redis_store


def requests_seen(simulators, path: str = "/v1/chat/completions") -> int:
    total = 0
    for sim in simulators:
        with urllib.request.urlopen(sim.url + "/sim/stats", timeout=5) as resp:
            total += json.loads(resp.read())["requests"].get(path, 0)
    return total


def faults_set(simulators, **faults) -> None:
    for sim in simulators:
        request = urllib.request.Request(sim.url + "/sim/faults",
                                         data=json.dumps(faults).encode(),
                                         headers={"Content-Type": "application/json"},
                                         method="POST")
        urllib.request.urlopen(request, timeout=5).read()


@pytest.fixture
def faults(simulators):
    yield lambda **f: faults_set(simulators, **f)
    faults_set(simulators, error_rate=0.0, error_status=500, mid_stream_error_rate=0.0)


def chat(sdk, **extra):
    """A deterministic chat request through the SDK, raw: (headers, parsed)."""
    fields = {"model": "default", "messages": MESSAGES, "temperature": 0, "max_tokens": 16}
    raw = sdk.chat.completions.with_raw_response.create(**{**fields, **extra})
    return raw.headers, raw.parse()


def chat_stream(sdk, **extra):
    """The same, streamed: (headers, text, finish_reason, usage chunks)."""
    fields = {"model": "default", "messages": MESSAGES, "temperature": 0, "max_tokens": 16,
              "stream": True}
    raw = sdk.chat.completions.with_raw_response.create(**{**fields, **extra})
    text, finish, usage = "", None, []
    for chunk in raw.parse():
        if chunk.usage is not None:
            usage.append(chunk.usage)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return raw.headers, text, finish, usage


def settle(store) -> None:
    """Wait until the gateway's background cache writes are done (a streamed miss is stored
    just after the app has read its last event)."""
    time.sleep(0.05)
    deadline = time.monotonic() + 5
    while ((pipeline._keeping or getattr(store, "_tasks", None))
           and time.monotonic() < deadline):
        time.sleep(0.01)


# --- the key ---------------------------------------------------------------------------------
def test_the_key_ignores_stream_stream_options_user_and_field_order():
    base = cache_key(ROUTE, BODY, endpoint="chat/completions")
    same = {"max_tokens": 16, "user": "u-1", "stream": True, "model": "other-alias",
            "stream_options": {"include_usage": True}, "temperature": 0, "messages": MESSAGES}
    assert cache_key(ROUTE, same, endpoint="chat/completions") == base


@pytest.mark.parametrize("change", [
    {"temperature": 0.5}, {"max_tokens": 17}, {"top_p": 0.9}, {"seed": 1}, {"stop": ["x"]},
    {"n": 2}, {"logprobs": True}, {"top_k": 5}, {"presence_penalty": 0.1},
    {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, *MESSAGES]},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"response_format": {"type": "json_object"}},
])
def test_every_field_that_shapes_the_answer_changes_the_key(change):
    assert (cache_key(ROUTE, {**BODY, **change}, endpoint="chat/completions")
            != cache_key(ROUTE, BODY, endpoint="chat/completions"))


def test_the_route_its_model_and_the_endpoint_are_in_the_key():
    base = cache_key(ROUTE, BODY, endpoint="chat/completions")
    other_route = RouteInfo(name="other", model="sim-model", baseline_model="", cache_exact=True)
    other_model = RouteInfo(name="default", model="m2", baseline_model="", cache_exact=True)
    assert cache_key(other_route, BODY, endpoint="chat/completions") != base
    assert cache_key(other_model, BODY, endpoint="chat/completions") != base
    assert cache_key(ROUTE, BODY, endpoint="completions") != base


def test_the_key_costs_microseconds():
    body = {**BODY, "messages": [{"role": "user", "content": "word " * 400}] * 4}
    started = time.perf_counter()
    for _ in range(1000):
        cache_key(ROUTE, body, endpoint="chat/completions")
    per_key_us = (time.perf_counter() - started) * 1000
    assert per_key_us < 200  # ~8 KB of prompt; measured ~5-10 µs


# --- what is cacheable -------------------------------------------------------------------------
@pytest.mark.parametrize("body, cacheable", [
    ({"temperature": 0}, True),
    ({"temperature": 0.0}, True),
    ({"temperature": 0.7, "seed": 42}, True),  # a fixed seed makes sampling repeatable
    ({"temperature": 0.7}, False),
    ({}, False),  # no temperature is OpenAI's default, 1
    ({"seed": True}, False),
])
def test_only_deterministic_requests_are_cached_unless_the_route_says_so(body, cacheable):
    body = {"model": "default", "messages": MESSAGES, **body}
    assert (cache_plan(ROUTE, body, endpoint="chat/completions", cache_control=None)
            is not None) is cacheable
    lenient = RouteInfo(name="default", model="sim-model", baseline_model="", cache_exact=True,
                        cache_nonzero_temperature=True)
    assert cache_plan(lenient, body, endpoint="chat/completions", cache_control=None) is not None


def test_only_chat_and_completions_are_cached():
    body = {"model": "default", "input": "x", "temperature": 0}
    for endpoint in ("embeddings", "responses", "rerank", "score", "tokenize"):
        assert cache_plan(ROUTE, body, endpoint=endpoint, cache_control=None) is None


def test_cache_control_no_cache_skips_the_lookup_and_no_store_the_store():
    def plan(header):
        return cache_plan(ROUTE, BODY, endpoint="chat/completions", cache_control=header)

    assert (plan(None).lookup, plan(None).store) == (True, True)
    assert (plan("no-cache").lookup, plan("no-cache").store) == (False, True)
    assert (plan("No-Store").lookup, plan("No-Store").store) == (True, False)
    assert plan("no-cache, no-store") is None


# --- the in-process store -----------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_local_store_expires_entries_after_their_ttl():
    clock = Clock()
    store = LocalStore(10, clock=clock)
    store.put("k", b"v", 5)
    assert asyncio.run(store.get("k")) == b"v"
    clock.now += 4.9
    assert store.get_now("k") == b"v"
    clock.now += 0.2
    assert store.get_now("k") is None
    assert len(store) == 0


def test_the_local_store_is_bounded_least_recently_used_out_first():
    store = LocalStore(2, clock=Clock())
    store.put("a", b"1", 60)
    store.put("b", b"2", 60)
    assert store.get_now("a") == b"1"  # a is now the most recent
    store.put("c", b"3", 60)
    assert (store.get_now("a"), store.get_now("b"), store.get_now("c")) == (b"1", None, b"3")


# --- the Redis store ---------------------------------------------------------------------------
def test_the_redis_store_round_trips_with_its_ttl(redis_store):
    async def go():
        redis_store.put("k", b"answer", 30)
        await redis_store.flush()
        value = await redis_store.get("k")
        await redis_store.close()
        return value

    assert asyncio.run(go()) == b"answer"
    client = redis.Redis.from_url(settings.REDIS_URL)
    assert 0 < client.ttl(redis_store.prefix + "k") <= 30
    client.close()


def test_a_redis_outage_is_a_miss_and_a_dropped_store_never_an_error(caplog):
    store = RedisStore("redis://127.0.0.1:1/0")

    async def go():
        store.put("k", b"v", 30)
        await store.flush()
        value = await store.get("k")
        await store.close()
        return value

    assert asyncio.run(go()) is None
    assert "the exact cache is off" in caplog.text


# --- assembling and replaying ------------------------------------------------------------------
def sse(*payloads) -> bytes:
    return b"".join(b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"


def chunk(choices, **extra):
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": choices, **extra}


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_a_streamed_chat_answer_is_assembled_with_tool_calls_and_logprobs():
    raw = sse(
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"content": "Hel"},
                "logprobs": {"content": [{"token": "Hel", "logprob": -0.1}]},
                "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"content": "lo", "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "get", "arguments": '{"a":'}}]},
                "logprobs": {"content": [{"token": "lo", "logprob": -0.2}]},
                "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": " 1}"}}]},
                "finish_reason": "tool_calls", "stop_reason": None}]),
        chunk([], usage=USAGE),
    )
    answer = orjson.loads(replay.stream_assemble(raw))
    assert answer["object"] == "chat.completion"
    assert answer["usage"] == USAGE
    [choice] = answer["choices"]
    assert choice["message"]["content"] == "Hello"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}
    ]
    assert [t["token"] for t in choice["logprobs"]["content"]] == ["Hel", "lo"]
    assert choice["finish_reason"] == "tool_calls"
    assert cache.cacheable_answer(orjson.dumps(answer)) is not None


def test_a_streamed_text_completion_with_two_choices_is_assembled():
    def part(index, text, finish=None):
        return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": index, "text": text, "logprobs": None,
                             "finish_reason": finish, "stop_reason": None}]}

    raw = sse(part(0, "a"), part(1, "x"), part(0, "b", "length"), part(1, "y", "stop"),
              {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
               "choices": [], "usage": USAGE})
    answer = orjson.loads(replay.stream_assemble(raw))
    assert [(c["text"], c["finish_reason"]) for c in answer["choices"]] == [
        ("ab", "length"), ("xy", "stop")]


@pytest.mark.parametrize("raw", [
    # an error event mid-stream
    sse(chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]),
        {"error": {"message": "boom", "type": "x", "code": 500}}),
    # no [DONE]
    sse(chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]),
        chunk([], usage=USAGE))[: -len(b"data: [DONE]\n\n")],
    # no finish_reason
    sse(chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]),
        chunk([], usage=USAGE)),
    # no usage
    sse(chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}])),
    # something it does not know how to merge
    sse(chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop",
                "token_ids": [1]}]), chunk([], usage=USAGE)),
])
def test_a_stream_that_cannot_be_assembled_is_not_cached(raw):
    assert replay.stream_assemble(raw) is None


def test_a_replayed_stream_assembles_back_into_the_same_answer():
    answer = {"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant",
                                                   "content": "The capital is Paris.",
                                                   "tool_calls": []},
                           "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
              "usage": USAGE}
    events = replay.stream_replay(answer, include_usage=True)
    assert events.count(b"data: ") >= 1 + replay.CONTENT_CHUNKS + 2  # role, content, finish...
    again = orjson.loads(replay.stream_assemble(events))
    assert again["choices"] == answer["choices"]
    assert again["usage"] == USAGE
    assert again["id"] != answer["id"]
    assert b'"usage"' not in replay.stream_replay(answer, include_usage=False)


# --- through the gateway --------------------------------------------------------------------------
def test_a_second_identical_request_is_an_exact_hit_that_reaches_no_backend(
        sdk, cached, simulators, flush_calls):
    headers, first = chat(sdk)
    assert headers["x-sluice-cache"] == "miss"
    settle(cached)
    seen = requests_seen(simulators)

    headers, second = chat(sdk)
    assert headers["x-sluice-cache"] == "exact"
    assert "x-sluice-backend" not in headers
    assert requests_seen(simulators) == seen
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.choices[0].finish_reason == first.choices[0].finish_reason
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert second.id != first.id

    miss, hit = flush_calls()
    assert (miss.cache, hit.cache) == ("miss", "exact")
    assert hit.backend == "" and hit.status_code == 200
    assert hit.served_model == "sim-model"
    assert (hit.prompt_tokens, hit.completion_tokens) == (
        first.usage.prompt_tokens, first.usage.completion_tokens)
    assert hit.latency_ms < miss.latency_ms


def test_a_streamed_hit_replays_through_the_sdk_from_a_streamed_miss(
        sdk, cached, simulators, flush_calls):
    headers, text, finish, usage = chat_stream(sdk)
    assert headers["x-sluice-cache"] == "miss"
    settle(cached)
    seen = requests_seen(simulators)

    headers, again, again_finish, again_usage = chat_stream(sdk)
    assert headers["x-sluice-cache"] == "exact"
    assert headers["content-type"].startswith("text/event-stream")
    assert requests_seen(simulators) == seen
    assert (again, again_finish) == (text, finish) and text
    assert usage == again_usage == []  # not asked for

    miss, hit = flush_calls()
    assert hit.cache == "exact" and hit.stream and hit.ttft_ms is not None
    assert hit.completion_tokens == miss.completion_tokens > 0


def test_a_stream_hit_from_a_non_stream_miss_and_back(sdk, cached, simulators):
    _, answer = chat(sdk, max_tokens=12)
    settle(cached)
    headers, text, finish, usage = chat_stream(sdk, max_tokens=12,
                                               stream_options={"include_usage": True})
    assert headers["x-sluice-cache"] == "exact"
    assert text == answer.choices[0].message.content
    assert finish == answer.choices[0].finish_reason
    assert [u.completion_tokens for u in usage] == [answer.usage.completion_tokens]

    headers, text, _, _ = chat_stream(sdk, max_tokens=13)
    assert headers["x-sluice-cache"] == "miss"
    settle(cached)
    headers, answer = chat(sdk, max_tokens=13)
    assert headers["x-sluice-cache"] == "exact"
    assert answer.choices[0].message.content == text


def test_completions_are_cached_and_replayed_too(sdk, cached, simulators):
    fields = {"model": "default", "prompt": "Once upon a time", "temperature": 0,
              "max_tokens": 10}
    first = sdk.completions.with_raw_response.create(**fields)
    assert first.headers["x-sluice-cache"] == "miss"
    settle(cached)
    again = sdk.completions.with_raw_response.create(**fields)
    assert again.headers["x-sluice-cache"] == "exact"
    assert again.parse().choices[0].text == first.parse().choices[0].text
    text = "".join(c.choices[0].text for c in
                   sdk.completions.create(**fields, stream=True) if c.choices)
    assert text == first.parse().choices[0].text


def test_user_and_stream_do_not_change_the_key_but_sampling_parameters_do(sdk, cached):
    chat(sdk)
    settle(cached)
    assert chat(sdk, user="someone-else")[0]["x-sluice-cache"] == "exact"
    assert chat_stream(sdk)[0]["x-sluice-cache"] == "exact"
    assert chat(sdk, max_tokens=15)[0]["x-sluice-cache"] == "miss"
    assert chat(sdk, top_p=0.5)[0]["x-sluice-cache"] == "miss"


def test_sampled_requests_are_not_cached_unless_the_route_allows_it(sdk, cached, flush_calls):
    for _ in range(2):
        headers, _ = chat(sdk, temperature=0.8)
        assert headers["x-sluice-cache"] == "bypass"
    route_caching(cache_nonzero_temperature=True)
    chat(sdk, temperature=0.8)
    settle(cached)
    assert chat(sdk, temperature=0.8)[0]["x-sluice-cache"] == "exact"
    assert [c.cache for c in flush_calls()] == ["bypass", "bypass", "miss", "exact"]


def test_an_entry_expires_after_the_route_ttl(sdk, cached):
    route_caching(cache_ttl_s=1)
    chat(sdk)
    settle(cached)
    assert chat(sdk)[0]["x-sluice-cache"] == "exact"
    time.sleep(1.2)
    assert chat(sdk)[0]["x-sluice-cache"] == "miss"


def test_no_cache_answers_afresh_and_no_store_keeps_nothing(sdk, cached, simulators):
    headers, _ = chat(sdk, extra_headers={"Cache-Control": "no-store"})
    assert headers["x-sluice-cache"] == "miss"
    settle(cached)
    assert chat(sdk)[0]["x-sluice-cache"] == "miss"  # nothing was stored
    settle(cached)
    seen = requests_seen(simulators)
    headers, _ = chat(sdk, extra_headers={"Cache-Control": "no-cache"})
    assert headers["x-sluice-cache"] == "bypass"
    assert requests_seen(simulators) == seen + 1
    assert chat(sdk)[0]["x-sluice-cache"] == "exact"


def test_backend_errors_are_not_stored(sdk, cached, faults):
    faults(error_rate=1.0, error_status=400)
    for _ in range(2):
        raw = sdk.chat.completions.with_raw_response
        with pytest.raises(openai.BadRequestError):
            raw.create(model="default", messages=MESSAGES, temperature=0, max_tokens=16)
    faults(error_rate=0.0)
    settle(cached)
    assert chat(sdk)[0]["x-sluice-cache"] == "miss"


def post_raw(gateway, key: str, body: dict) -> tuple[dict, bytes]:
    request = urllib.request.Request(gateway.url + "/v1/chat/completions",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {key}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return dict(resp.headers), resp.read()


def test_a_broken_stream_is_not_stored(gateway, pool, cached, faults, flush_calls):
    faults(mid_stream_error_rate=1.0)
    body = {"model": "default", "messages": MESSAGES, "temperature": 0, "max_tokens": 40,
            "stream": True}
    _, content = post_raw(gateway, pool, body)
    assert b'"error"' in content
    faults(mid_stream_error_rate=0.0)
    settle(cached)
    headers, _ = post_raw(gateway, pool, body)
    assert headers["x-sluice-cache"] == "miss"
    assert [c.error_type for c in flush_calls()] == ["upstream_stream_error", ""]


def test_with_redis_down_a_cached_route_serves_misses(sdk, gateway, flush_calls):
    route_caching()
    old = cache.store_set(RedisStore("redis://127.0.0.1:1/0"))
    try:
        for _ in range(2):
            headers, answer = chat(sdk)
            assert headers["x-sluice-cache"] == "miss"
            assert answer.choices[0].message.content
    finally:
        cache.store_set(old)
    assert [(c.status_code, c.cache) for c in flush_calls()] == [(200, "miss")] * 2


def test_the_in_process_store_serves_hits_without_redis(sdk, gateway, simulators):
    route_caching()
    old = cache.store_set(LocalStore(100))
    try:
        chat(sdk)
        seen = requests_seen(simulators)
        assert chat(sdk)[0]["x-sluice-cache"] == "exact"
        assert chat_stream(sdk)[0]["x-sluice-cache"] == "exact"
        assert requests_seen(simulators) == seen
    finally:
        cache.store_set(old)


def test_a_route_without_caching_says_bypass(sdk, gateway, flush_calls):
    headers, _ = chat(sdk)
    assert headers["x-sluice-cache"] == "bypass"
    assert flush_calls()[0].cache == "bypass"


def test_a_hit_still_counts_against_the_key_rpm(sdk, cached, pool):
    ApiKey.objects.update(rpm_limit=2)
    snapshot_reload()
    old = ratelimit.buckets_set(ratelimit.LocalBuckets())
    try:
        chat(sdk)
        settle(cached)
        assert chat(sdk)[0]["x-sluice-cache"] == "exact"
        with pytest.raises(openai.RateLimitError):
            chat(sdk)
    finally:
        ratelimit.buckets_set(old)


def test_a_semantic_hit_is_served_and_recorded_as_such(sdk, gateway, monkeypatch, flush_calls):
    route_caching(cache_exact=False, cache_semantic=True)
    stored: list[bytes] = []

    async def lookup(route, body, *, endpoint):
        if not stored:
            return "miss"
        return SemanticHit(answer=stored[0], similarity=0.97)

    monkeypatch.setattr(pipeline, "semantic_lookup", lookup)
    monkeypatch.setattr(pipeline, "semantic_store",
                        lambda route, body, *, endpoint, answer: stored.append(answer))
    headers, first = chat(sdk)
    assert headers["x-sluice-cache"] == "miss" and len(stored) == 1
    paraphrase = [{"role": "user", "content": "France's capital?"}]
    headers, text, _, _ = chat_stream(sdk, messages=paraphrase)
    assert headers["x-sluice-cache"] == "semantic"
    assert text == first.choices[0].message.content
    assert [c.cache for c in flush_calls()] == ["miss", "semantic"]


def test_a_long_stream_is_assembled_in_slices_to_the_same_answer():
    events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                      "finish_reason": None}])]
    events += [chunk([{"index": 0, "delta": {"content": f"w{i} "}, "logprobs": None,
                       "finish_reason": None}]) for i in range(3 * replay.SLICE_EVENTS + 5)]
    events += [chunk([{"index": 0, "delta": {}, "finish_reason": "length"}]),
               chunk([], usage=USAGE)]
    raw = sse(*events)
    sliced = asyncio.run(replay.stream_assemble_sliced(raw))
    assert sliced == replay.stream_assemble(raw)
    content = orjson.loads(sliced)["choices"][0]["message"]["content"]
    assert content.startswith("w0 w1 ") and content.endswith(f"w{3 * replay.SLICE_EVENTS + 4} ")


def test_a_streamed_miss_with_two_choices_is_served_whole_as_json(sdk, cached):
    fields = {"model": "default", "messages": MESSAGES, "temperature": 0, "max_tokens": 8, "n": 2}
    texts = {0: "", 1: ""}
    for part in sdk.chat.completions.create(**fields, stream=True):
        for choice in part.choices:
            texts[choice.index] += choice.delta.content or ""
    settle(cached)
    raw = sdk.chat.completions.with_raw_response.create(**fields)
    assert raw.headers["x-sluice-cache"] == "exact"
    answer = raw.parse()
    assert {c.index: c.message.content for c in answer.choices} == texts
    assert all(c.finish_reason for c in answer.choices)


def test_an_answer_served_by_a_fallback_is_not_stored(sdk, cached, simulators):
    dead = f"http://127.0.0.1:{free_port()}"
    Backend.objects.create(name="dead-1", base_url=dead, model="dead-model")
    Route.objects.create(name="fragile", model="dead-model", fallbacks="sim-model",
                         cache_exact=True)
    snapshot_reload()
    for _ in range(2):
        raw = sdk.chat.completions.with_raw_response.create(
            model="fragile", messages=MESSAGES, temperature=0, max_tokens=8)
        assert raw.headers["x-sluice-fallback"] == "sim-model"
        assert raw.headers["x-sluice-cache"] == "miss"
        settle(cached)


def test_a_failing_semantic_lookup_is_a_miss(sdk, gateway, monkeypatch):
    route_caching(cache_exact=False, cache_semantic=True)

    async def broken(route, body, *, endpoint):
        raise RuntimeError("boom")

    monkeypatch.setattr(pipeline, "semantic_lookup", broken)
    headers, answer = chat(sdk)
    assert headers["x-sluice-cache"] == "miss" and answer.choices[0].message.content
