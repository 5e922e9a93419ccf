"""The semantic cache: paraphrases hit, near-misses and other settings never do, the index is
bounded, expiring, durable and shared through Redis, and the embedder skips instead of
queueing. Runs the real embedder (loaded once for the session) and the real Redis."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid

import numpy as np
import pytest
import redis
from django.conf import settings
from django.core.management import call_command

from proxy import semantic
from proxy.embedder import DIM, Embedder, Saturated, embedder_get
from proxy.models import Backend, Route
from proxy.nearmiss import near_miss
from proxy.semantic import MISS, SKIPPED, SemanticHit, semantic_lookup, semantic_store
from proxy.semantic_index import PREFIX, TWO_STAGE_MIN, IndexSet, RouteIndex
from proxy.snapshot import RouteInfo, snapshot_reload

ANSWER = b'{"object":"chat.completion","choices":[{"message":{"content":"stored"}}]}'


@pytest.fixture(scope="session")
def embedder():
    loaded = embedder_get()
    assert loaded.load_blocking(), loaded.load_error
    return loaded


@pytest.fixture
def route(embedder):
    """A route of its own per test, so that no test sees another's entries."""
    name = f"test-sem-{uuid.uuid4().hex[:10]}"
    yield RouteInfo(name=name, model="sim-model", baseline_model="", cache_semantic=True)
    redis.Redis.from_url(settings.REDIS_URL).delete(PREFIX + name)


def chat(question: str, *, system: str = "You are helpful.", history=(), **params) -> dict:
    messages = [{"role": "system", "content": system}, *history,
                {"role": "user", "content": question}]
    return {"model": "default", "messages": messages, "temperature": 0, **params}


def store(route: RouteInfo, body: dict, answer: bytes = ANSWER) -> None:
    semantic_store(route, body, endpoint="chat/completions", answer=answer)
    deadline = time.monotonic() + 10
    while embedder_get().pending and time.monotonic() < deadline:
        time.sleep(0.005)


def lookup(route: RouteInfo, body: dict):
    return asyncio.run(semantic_lookup(route, body, endpoint="chat/completions"))


def cosine(embedder, a: str, b: str) -> float:
    va, vb = embedder.encode([a, b])
    return float(va @ vb)


# --- hits and near-misses ---------------------------------------------------------------------
def test_a_paraphrase_hits(route):
    store(route, chat("How do I reverse a list in Python?"))

    result = lookup(route, chat("What's the way to reverse a Python list?"))

    assert isinstance(result, SemanticHit)
    assert result.answer == ANSWER
    assert result.similarity >= settings.SLUICE_SEMANTIC_THRESHOLD


@pytest.mark.parametrize("stored, asked", [
    ("Is ibuprofen safe during pregnancy?", "Is ibuprofen not safe during pregnancy?"),
    ("How do I convert USD to EUR?", "How do I convert EUR to USD?"),
    ("Which team won the Super Bowl in 2020?", "Which team won the Super Bowl in 2021?"),
    ("How do I install Docker on Ubuntu?", "How do I install Docker on Windows?"),
    ("How do I add a column to a table in SQL?", "How do I add a row to a table in SQL?"),
    ("Is Python faster than Java?", "Is Java faster than Python?"),
    ("How do I encrypt a file with GPG?", "How do I decrypt a file with GPG?"),
], ids=["negation", "direction", "year", "entity", "object", "comparison", "opposite"])
def test_a_near_miss_does_not_hit_even_with_a_high_cosine(route, embedder, stored, asked):
    assert cosine(embedder, stored, asked) >= settings.SLUICE_SEMANTIC_THRESHOLD
    store(route, chat(stored))

    assert lookup(route, chat(asked)) == MISS


@pytest.mark.parametrize("a, b, kind", [
    ("Which foods contain gluten?", "Which foods are gluten-free?", "negation"),
    ("How do I port my code from Python 2 to Python 3?",
     "How do I port my code from Python 3 to Python 2?", "direction"),
    ("What is 15% of 80?", "What is 18% of 80?", "number"),
    ("What are the pros of nuclear energy?", "What are the cons of nuclear energy?", "opposite"),
    ("How do I boil an egg?", "How do I boil a potato?", "key-word"),
    ("How do I sort a list in Python?", "How do I sort a list in Python in reverse order?",
     "key-word"),
    ("How do I reverse a list in Python?", "What's the way to reverse a Python list?", None),
])
def test_the_check_names_the_difference(a, b, kind):
    assert near_miss(a, b) == kind
    assert near_miss(b, a) == kind


def test_the_near_miss_check_is_fast():
    pairs = [("How long is the flight from London to New York?",
              "How long is the flight from New York to London?"),
             ("What are the early signs of diabetes?",
              "What symptoms point to diabetes in its early stages?")] * 500
    started = time.perf_counter()
    for a, b in pairs:
        near_miss(a, b)
    assert (time.perf_counter() - started) / len(pairs) < 0.0002


# --- the exact part of the key ----------------------------------------------------------------
def test_another_system_prompt_never_hits(route):
    store(route, chat("How do I reverse a list in Python?", system="Answer in French."))

    assert lookup(route, chat("How do I reverse a list in Python?")) == MISS


def test_another_served_model_never_hits(route):
    store(route, chat("How do I reverse a list in Python?"))
    other = RouteInfo(name=route.name, model="another-model", baseline_model="",
                      cache_semantic=True)

    assert lookup(other, chat("How do I reverse a list in Python?")) == MISS


def test_another_sampling_setting_never_hits(route):
    store(route, chat("How do I reverse a list in Python?", max_tokens=50))

    assert lookup(route, chat("How do I reverse a list in Python?", max_tokens=500)) == MISS
    assert isinstance(lookup(route, chat("How do I reverse a list in Python?", max_tokens=50,
                                         stream=True, user="u2")), SemanticHit)


def test_other_earlier_turns_never_hit(route):
    history = [{"role": "user", "content": "I use Python 2."},
               {"role": "assistant", "content": "Noted."}]
    store(route, chat("How do I reverse a list?", history=history))

    assert lookup(route, chat("How do I reverse a list?")) == MISS
    assert isinstance(lookup(route, chat("How do I reverse a list?", history=history)),
                      SemanticHit)


def test_a_route_without_the_semantic_cache_misses_without_embedding(route):
    off = RouteInfo(name=route.name, model=route.model, baseline_model="")
    store(route, chat("How do I reverse a list in Python?"))

    assert lookup(off, chat("How do I reverse a list in Python?")) == MISS


# --- skipping ---------------------------------------------------------------------------------
def test_a_lookup_before_the_model_is_loaded_is_skipped_and_starts_the_load(route, monkeypatch):
    cold = Embedder()
    started = []
    monkeypatch.setattr(cold, "start_loading", lambda: started.append(True))
    monkeypatch.setattr(semantic, "embedder_get", lambda: cold)

    assert lookup(route, chat("How do I reverse a list in Python?")) == SKIPPED
    assert started == [True]


def test_a_saturated_embedder_skips_instead_of_queueing(route, embedder):
    gate = threading.Event()
    blockers = []
    try:
        while True:
            blockers.append(embedder.submit(gate.wait, 10))
    except Saturated:
        pass
    try:
        started = time.perf_counter()
        assert lookup(route, chat("How do I reverse a list in Python?")) == SKIPPED
        assert time.perf_counter() - started < 0.05
    finally:
        gate.set()
    for blocker in blockers:
        blocker.result(timeout=5)
    assert embedder.pending == 0


# --- the index: bound, TTL, durability, sharing -----------------------------------------------
def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def test_the_index_keeps_only_the_newest_entries():
    index = RouteIndex("bound", max_entries=3)
    for i in range(50):
        index.add(unit(i), key=1, question=f"q{i}", answer=b"a%d" % i,
                  expires_at=time.time() + 60)

    assert len(index) == 3
    assert index.search(unit(0), key=1, threshold=0.99, limit=5) == []
    assert [c.question for c in index.search(unit(49), key=1, threshold=0.99, limit=5)] == ["q49"]


def test_an_expired_entry_is_not_served():
    index = RouteIndex("ttl", max_entries=10)
    index.add(unit(1), key=1, question="old", answer=b"a", expires_at=time.time() - 1)
    index.add(unit(2), key=1, question="new", answer=b"b", expires_at=time.time() + 60)

    assert index.search(unit(1), key=1, threshold=0.99, limit=5) == []
    assert len(index.search(unit(2), key=1, threshold=0.99, limit=5)) == 1


def test_the_route_ttl_expires_entries(route):
    short = RouteInfo(name=route.name, model=route.model, baseline_model="",
                      cache_semantic=True, cache_ttl_s=1)
    store(short, chat("How do I reverse a list in Python?"))
    assert isinstance(lookup(short, chat("How do I reverse a list in Python?")), SemanticHit)

    time.sleep(1.1)

    assert lookup(short, chat("How do I reverse a list in Python?")) == MISS


def test_the_index_survives_a_restart(route):
    IndexSet(redis_url=settings.REDIS_URL).add(
        route.name, unit(7), key=5, question="q", answer=b"kept", ttl_s=60, max_entries=100)

    restarted = IndexSet(redis_url=settings.REDIS_URL)
    found = restarted.get(route.name, max_entries=100).search(unit(7), key=5, threshold=0.99,
                                                              limit=1)

    assert [c.answer for c in found] == [b"kept"]


def test_another_process_sees_a_new_entry_within_seconds(route):
    first = IndexSet(redis_url=settings.REDIS_URL, sync_s=0.2)
    second = IndexSet(redis_url=settings.REDIS_URL, sync_s=0.2)
    theirs = second.get(route.name, max_entries=100)  # already loaded, syncing
    try:
        first.add(route.name, unit(3), key=9, question="q", answer=b"shared", ttl_s=60,
                  max_entries=100)
        deadline = time.monotonic() + 3
        while not theirs.search(unit(3), key=9, threshold=0.99, limit=1):
            assert time.monotonic() < deadline, "the entry did not reach the other process"
            time.sleep(0.05)
        assert len(theirs) == 1  # and only once
    finally:
        first.stop()
        second.stop()


def test_redis_down_keeps_serving_from_the_process():
    down = IndexSet(redis_url="redis://127.0.0.1:1/0")
    down.add("down", unit(4), key=1, question="q", answer=b"local", ttl_s=60, max_entries=10)

    found = down.get("down", max_entries=10).search(unit(4), key=1, threshold=0.99, limit=1)

    assert [c.answer for c in found] == [b"local"]


def test_without_redis_a_new_process_loads_what_the_last_one_stored(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    first = IndexSet(sync_s=0.05)
    first.add("local route/1", unit(7), key=5, question="q é", answer=b"kept", ttl_s=60,
              max_entries=100)
    first.add("local route/1", unit(8), key=5, question="old", answer=b"gone", ttl_s=0.2,
              max_entries=100)
    deadline = time.monotonic() + 10
    while not list((tmp_path / "semantic").glob("*.npz")):  # written by the background thread
        assert time.monotonic() < deadline, "the route's file was not written"
        time.sleep(0.05)
    first.stop()
    time.sleep(0.3)

    restarted = IndexSet().get("local route/1", max_entries=100)

    assert len(restarted) == 1  # the expired entry was dropped on load
    found = restarted.search(unit(7), key=5, threshold=0.99, limit=1)
    assert [(c.question, c.answer) for c in found] == [("q é", b"kept")]
    assert restarted.search(unit(8), key=5, threshold=0.99, limit=1) == []


def test_without_redis_a_damaged_file_starts_the_route_empty(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    indexes = IndexSet()
    path = indexes.path_of("broken")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz")

    assert len(indexes.get("broken", max_entries=10)) == 0


def test_the_two_stage_search_finds_what_the_exact_one_finds():
    rng = np.random.default_rng(0)
    n = TWO_STAGE_MIN + 5000
    base = rng.standard_normal((200, DIM)).astype(np.float32)  # clusters, like real questions
    vectors = base[rng.integers(0, 200, n)] + 0.08 * rng.standard_normal((n, DIM),
                                                                         dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = RouteIndex("two-stage", max_entries=n)
    expires = time.time() + 600
    for i, vector in enumerate(vectors):
        index.add(vector, key=i % 3, question=str(i), answer=b"", expires_at=expires)
    assert index._basis is not None  # the two-stage path is on

    queries = vectors[rng.integers(0, n, 100)] + 0.02 * rng.standard_normal((100, DIM),
                                                                            dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for query in queries:
        exact = vectors @ query
        exact[np.arange(n) % 3 != 1] = -2.0
        best = np.argsort(-exact)[:5]
        found = index.search(query, key=1, threshold=0.5, limit=5)
        assert [int(c.question) for c in found] == [int(i) for i in best if exact[i] >= 0.5]
        assert all(abs(c.similarity - exact[int(c.question)]) < 1e-5 for c in found)


# --- the labelled pairs -----------------------------------------------------------------------
def test_the_eval_command_meets_the_target_on_the_shipped_pairs(embedder, capsys):
    call_command("semantic_eval")
    out = capsys.readouterr().out

    assert "TARGET MET" in out
    setting = next(line for line in out.splitlines() if line.startswith("setting"))
    assert "false-hit rate 0.00%" in setting or "false-hit rate 0.5" in setting
    hit_rate = float(setting.split("hit rate ")[1].split("%")[0])
    assert hit_rate >= 50.0


# --- through the gateway ----------------------------------------------------------------------
@pytest.fixture
def semantic_default(gateway, embedder):
    """The `default` route with the semantic cache on, its index empty before and after."""
    store_key = PREFIX + "default"
    redis.Redis.from_url(settings.REDIS_URL).delete(store_key)
    semantic.indexes_get().forget("default")
    Route.objects.filter(name="default").update(cache_semantic=True)
    snapshot_reload()
    yield
    redis.Redis.from_url(settings.REDIS_URL).delete(store_key)
    semantic.indexes_get().forget("default")


def stored_wait() -> None:
    """The answer is indexed just after the call: wait for it."""
    deadline = time.monotonic() + 10
    while not len(semantic.indexes_get().get("default", max_entries=100)):
        assert time.monotonic() < deadline, "the answer was not stored"
        time.sleep(0.02)


def ask(sdk, question: str, **params):
    return sdk.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": question}], temperature=0,
        max_tokens=16, **params)


def test_a_paraphrase_is_served_by_the_gateway_from_the_semantic_cache(sdk, semantic_default,
                                                                      flush_calls):
    first = ask(sdk, "How do I reverse a list in Python?")
    stored_wait()

    second = ask(sdk, "What's the way to reverse a Python list?")
    near = ask(sdk, "How do I reverse a string in Python?")

    assert [r.headers["x-sluice-cache"] for r in (first, second, near)] == \
        ["miss", "semantic", "miss"]
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert [c.cache for c in flush_calls()] == ["miss", "semantic", "miss"]


def test_an_answer_from_the_small_model_is_found_by_a_paraphrase(sdk, semantic_default,
                                                                 flush_calls):
    """Small-model routing points the call at another model after the lookup; the entry is
    stored under the route as the lookup saw it, so the next paraphrase finds it."""
    from simulator.process import SimulatorProcess

    with SimulatorProcess(model="small-model", ttft_ms=1, tokens_per_s=5000) as small:
        Backend.objects.create(name="small-1", base_url=small.url, model="small-model")
        Route.objects.filter(name="default").update(small_model="small-model")
        snapshot_reload()
        first = ask(sdk, "How do I reverse a list in Python?")
        stored_wait()
        second = ask(sdk, "What's the way to reverse a Python list?")

    assert first.headers["x-sluice-decision"].startswith("small")
    assert second.headers["x-sluice-cache"] == "semantic"


def test_a_paraphrase_served_semantically_is_an_exact_hit_when_asked_again(
        sdk, semantic_default, flush_calls):
    Route.objects.filter(name="default").update(cache_exact=True)
    snapshot_reload()
    tag = uuid.uuid4().hex[:6]  # the exact cache lives in Redis, which outlives test runs
    ask(sdk, "How do I reverse a list in Python?", seed=int(tag, 16))
    stored_wait()

    paraphrase = ask(sdk, "What's the way to reverse a Python list?", seed=int(tag, 16))
    time.sleep(0.2)  # the exact entry is written just after the answer
    again = ask(sdk, "What's the way to reverse a Python list?", seed=int(tag, 16))

    assert [paraphrase.headers["x-sluice-cache"], again.headers["x-sluice-cache"]] == [
        "semantic", "exact"]
