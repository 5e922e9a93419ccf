"""The simulator's prefix cache and prefill cost: block hashes, LRU, timing, metrics, flags.

Real objects throughout: the cache and engine on a plain event loop (a frozen clock where only
the schedule matters), the aiohttp app through aiohttp's test server, and a real subprocess
for the command-line switch.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from simulator import text
from simulator.__main__ import parse_args
from simulator.engine import Engine, TimingModel
from simulator.prefix_cache import PrefixCache, PromptBlocks, block_hashes, text_blocks
from simulator.process import SimulatorProcess
from simulator.server import Config, create_app
from tests.simulator.support import get, post_json

# create_app's string app keys (``app["simulator"]``) are its public API; aiohttp nags about them.
pytestmark = pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey")

WORDS = ("the river runs past the old mill, and the miller counts sacks of grain. " * 40)


def prompt_of(tokens: int, seed: str = "") -> str:
    """A text of exactly ``tokens`` tokens (``seed`` first, to tell prompts apart)."""
    words = [seed, *WORDS.split()] if seed else WORDS.split()
    out, count, i = [], 0, 0
    while count < tokens:
        word = words[i % len(words)]
        if count + text.count_tokens(word) > tokens:
            word = word.rstrip(",.")  # "mill," is two tokens; "mill" one
        out.append(word)
        count += text.count_tokens(word)
        i += 1
    joined = " ".join(out)
    assert text.count_tokens(joined) == tokens
    return joined


def metric(scraped: str, name: str, **labels: str) -> float:
    for line in scraped.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


def blocks_of(prompt: str, block_size: int = 16) -> PromptBlocks:
    return PromptBlocks.from_text(prompt, text.count_tokens(prompt), block_size)


def frozen_engine(**options) -> Engine:
    """An engine whose clock stands still: admission computes the whole prefill schedule."""
    timing = TimingModel(ttft_s=options.pop("ttft_s", 0.0),
                         prefill_s_per_token=options.pop("prefill_s_per_token", 1 / 1000),
                         shared_prefill=options.pop("shared_prefill", False))
    return Engine(timing=timing, max_num_seqs=8, kv_capacity_tokens=100_000,
                  clock=lambda: 100.0, **options)


# ---- hashes ----------------------------------------------------------------------------------

def test_blocks_hash_the_same_for_a_shared_prefix_and_a_changed_token_changes_every_later_one():
    tokens = [f"t{i}" for i in range(64)]
    base = block_hashes(tokens, 16)
    longer = block_hashes([*tokens, "more", "and", "more"] + ["x"] * 16, 16)
    changed = block_hashes(["other", *tokens[1:]], 16)
    assert len(base) == 4 and longer[:4] == base and len(longer) == 5
    assert all(a != b for a, b in zip(base, changed, strict=True))


def test_text_blocks_are_the_tokenizers_tokens_sixteen_at_a_time():
    sample = ("  Hello, world! snake_case ids_1 and café naïve résumé... (brackets) [x] {y} "
              "tab\there new\nline 12,345.67 end" * 5)
    tokens = text.tokenize(sample)
    hashes, end = text_blocks(sample, 16)
    assert len(hashes) == len(tokens) // 16
    assert text.tokenize(sample[:end]) == tokens[:len(hashes) * 16]
    assert len(text.tokenize(sample[end:])) == len(tokens) % 16
    # a word is never split to make up a short last block
    assert text_blocks("abcdefghijklmnop" + " x" * 14, 16) == ([], 0)


# ---- hits ------------------------------------------------------------------------------------

def test_a_repeated_prompt_hits_every_block_but_the_partial_last_one():
    cache = PrefixCache(capacity_blocks=100)
    prompt = blocks_of(prompt_of(40))
    assert cache.lookup(prompt.hashes, prompt.tokens) == 0
    cache.acquire(prompt.hashes)
    cache.release(prompt.hashes)
    assert cache.lookup(prompt.hashes, prompt.tokens) == 32
    assert (cache.queries, cache.hits) == (80, 32)


def test_a_fully_cached_prompt_still_computes_its_last_token():
    cache = PrefixCache(capacity_blocks=100)
    prompt = blocks_of(prompt_of(32))  # exactly two blocks
    cache.insert(prompt.hashes)
    assert cache.lookup(prompt.hashes, prompt.tokens) == 16  # the last block holds the last token


def test_a_lookup_stops_at_the_first_missing_block():
    cache = PrefixCache(capacity_blocks=100)
    hashes = block_hashes(range(80), 16)
    cache.insert([hashes[0], hashes[1], hashes[3]])
    assert cache.match(hashes) == 2


def test_a_conversations_next_turn_hits_through_the_previous_answer():
    engine = Engine(timing=TimingModel(ttft_s=0.0, token_interval_s=1e-5, prefill_s_per_token=0),
                    max_num_seqs=4, kv_capacity_tokens=100_000)
    messages = [{"role": "system", "content": prompt_of(150)},
                {"role": "user", "content": "Tell me about rivers."}]
    turn1 = text.render_chat(messages)
    answer = text.complete(turn1, seed=0, index=0, max_tokens=200, stop=[])
    first = blocks_of(turn1)

    async def run() -> None:
        async with engine.sequence(first.tokens, prompts=[first],
                                   outputs=[answer.pieces]) as seq:
            await seq.run_to_end(len(answer.pieces))
            seq.finish_reason = answer.finish_reason

    asyncio.run(run())
    turn2 = text.render_chat([*messages, {"role": "assistant", "content": answer.text},
                              {"role": "user", "content": "And then?"}])
    second = blocks_of(turn2)
    through_answer = first.tokens + len(answer.pieces)
    assert through_answer // 16 > first.tokens // 16  # the answer fills at least one block
    assert engine.cache.lookup(second.hashes, second.tokens) == through_answer // 16 * 16


# ---- capacity --------------------------------------------------------------------------------

def test_it_evicts_the_least_recently_used_blocks_beyond_capacity():
    cache = PrefixCache(capacity_blocks=4, block_size=2)
    a, b, c = (block_hashes([name] * 4, 2) for name in ("a", "b", "c"))
    cache.insert(a)
    cache.insert(b)
    assert cache.match(a) == 2  # a is now the most recently used
    cache.insert(c)
    assert (cache.match(a), cache.match(b), cache.match(c)) == (2, 0, 2)
    assert cache.cached_blocks == 4


def test_it_evicts_a_prefixs_tail_before_its_head():
    cache = PrefixCache(capacity_blocks=3, block_size=2)
    chain = block_hashes(list(range(6)), 2)
    cache.insert(chain)
    cache.insert(block_hashes(["other"] * 2, 2))
    assert cache.match(chain) == 2  # still hits its head


def test_blocks_held_by_running_sequences_shrink_what_stays_cached():
    cache = PrefixCache(capacity_blocks=4, block_size=2)
    cache.insert(block_hashes(list(range(8)), 2))
    assert cache.cached_blocks == 4
    cache.reserve(3)  # a running sequence's uncached tokens
    assert cache.cached_blocks == 1
    cache.reserve(-3)
    assert cache.cached_blocks == 1  # evicted blocks do not come back


def test_blocks_in_use_are_never_evicted():
    cache = PrefixCache(capacity_blocks=2, block_size=2)
    running = block_hashes(list(range(4)), 2)
    cache.acquire(running)
    cache.reserve(5)
    cache.insert(block_hashes(["x"] * 2, 2))
    assert cache.match(running) == 2 and cache.cached_blocks == 2
    cache.reserve(-5)
    cache.release(running)
    assert cache.match(running) == 2


def test_a_running_sequence_takes_room_from_the_cache_in_the_engine():
    engine = Engine(timing=TimingModel(ttft_s=0.0, prefill_s_per_token=0.0), max_num_seqs=4,
                    kv_capacity_tokens=64, clock=lambda: 1.0)  # 4 blocks of 16
    old, new = blocks_of(prompt_of(48, "old")), blocks_of(prompt_of(48, "new"))

    async def run() -> tuple[int, int]:
        async with engine.sequence(old.tokens, prompts=[old]):
            pass
        cached_before = engine.cache.match(old.hashes)
        async with engine.sequence(new.tokens, prompts=[new]):
            return cached_before, engine.cache.match(old.hashes)

    assert asyncio.run(run()) == (3, 1)


# ---- timing ----------------------------------------------------------------------------------

def test_only_uncached_prompt_tokens_cost_prefill():
    engine = frozen_engine(ttft_s=0.02, prefill_s_per_token=1 / 8000)
    prompt = blocks_of(prompt_of(4000))

    async def first_token_delay() -> float:
        async with engine.sequence(prompt.tokens, prompts=[prompt]) as seq:
            return seq.prefill_done + engine.timing.ttft_s - seq.admitted_at

    cold, warm = asyncio.run(first_token_delay()), asyncio.run(first_token_delay())
    assert cold == pytest.approx(0.02 + 4000 / 8000)  # ~500 ms of prefill
    assert warm == pytest.approx(0.02 + (4000 - 3984) / 8000)


def test_shared_prefill_runs_concurrent_prefills_one_after_another():
    engine = frozen_engine(shared_prefill=True, prefill_s_per_token=1 / 1000)

    async def run() -> tuple[float, float, float]:
        async with engine.sequence(500) as a, engine.sequence(300) as b:
            return a.prefill_done - a.admitted_at, b.prefill_start, b.prefill_done

    a_cost, b_start, b_done = asyncio.run(run())
    assert a_cost == pytest.approx(0.5)
    assert b_start == pytest.approx(100.5) and b_done == pytest.approx(100.8)


def test_without_shared_prefill_concurrent_prefills_overlap():
    engine = frozen_engine(prefill_s_per_token=1 / 1000)

    async def run() -> float:
        async with engine.sequence(500), engine.sequence(300) as b:
            return b.prefill_done

    assert asyncio.run(run()) == pytest.approx(100.3)


def test_an_abandoned_prefill_gives_back_the_lane_time_it_had_left():
    engine = frozen_engine(shared_prefill=True, prefill_s_per_token=1 / 1000)

    async def run() -> float:
        async with engine.sequence(500):
            pass  # the client went away at once
        async with engine.sequence(300) as b:
            return b.prefill_start

    assert asyncio.run(run()) == pytest.approx(100.0)


def test_shared_prefill_delays_the_second_first_token_in_real_time():
    async def scenario() -> tuple[float, float]:
        engine = Engine(timing=TimingModel(ttft_s=0.0, token_interval_s=0.001,
                                           prefill_s_per_token=1 / 10_000, shared_prefill=True),
                        max_num_seqs=4, kv_capacity_tokens=100_000)
        start = time.monotonic()

        async def one() -> float:
            async with engine.sequence(1000) as seq:  # 100 ms of prefill each
                await seq.advance(1)
                return time.monotonic() - start

        return tuple(sorted(await asyncio.gather(one(), one())))

    first, second = asyncio.run(scenario())
    assert 0.09 <= first < 0.19
    assert 0.19 <= second < 0.5


# ---- the server ------------------------------------------------------------------------------

def chat_body(content: str) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 5}


def run_app(config: Config, *requests: tuple[str, dict]) -> tuple[str, dict]:
    """Send the requests one by one to a real app; return its metrics text and /sim/stats."""
    async def scenario() -> tuple[str, dict]:
        async with TestClient(TestServer(create_app(config))) as client:
            for path, body in requests:
                resp = await client.post(path, json=body)
                assert resp.status == 200, await resp.text()
                await resp.read()
            metrics = await (await client.get("/metrics")).text()
            return metrics, await (await client.get("/sim/stats")).json()

    return asyncio.run(scenario())


def test_it_exposes_prefix_cache_counters_with_vllm_names():
    body = chat_body(prompt_of(100))
    tokens = text.count_tokens(text.render_chat(body["messages"]))
    metrics, stats = run_app(Config(ttft_ms=0, tokens_per_s=20_000),
                             ("/v1/chat/completions", body),
                             ("/v1/chat/completions", {**body, "stream": True}))
    labels = {"model_name": "sim-model", "engine": "0"}
    hits = (tokens - 1) // 16 * 16
    assert metric(metrics, "vllm:prefix_cache_queries_total", **labels) == 2 * tokens
    assert metric(metrics, "vllm:prefix_cache_hits_total", **labels) == hits
    for name in ("vllm:kv_cache_usage_perc", "vllm:num_requests_running",
                 "vllm:num_requests_waiting"):
        assert metric(metrics, name, **labels) == 0
    cache = stats["prefix_cache"]
    assert (cache["queries"], cache["hits"], cache["block_size"]) == (2 * tokens, hits, 16)
    assert cache["cached_blocks"] >= tokens // 16


def test_a_prompt_of_token_ids_hits_on_repeat():
    body = {"prompt": list(range(1, 41)), "max_tokens": 3}
    _, stats = run_app(Config(ttft_ms=0, tokens_per_s=20_000),
                       ("/v1/completions", body), ("/v1/completions", body))
    assert (stats["prefix_cache"]["queries"], stats["prefix_cache"]["hits"]) == (80, 32)


def test_pooling_requests_skip_the_prefix_cache():
    body = {"input": prompt_of(100)}
    _, stats = run_app(Config(), ("/v1/embeddings", body), ("/v1/embeddings", body))
    assert (stats["prefix_cache"]["queries"], stats["prefix_cache"]["hits"]) == (0, 0)


def test_the_flags_set_prefix_caching_block_size_and_shared_prefill():
    assert parse_args([])[1].enable_prefix_caching is True
    config = parse_args(["--no-enable-prefix-caching", "--block-size", "32",
                         "--shared-prefill"])[1]
    assert (config.enable_prefix_caching, config.block_size, config.shared_prefill) == (
        False, 32, True)
    assert parse_args([])[1].shared_prefill is False


def test_no_enable_prefix_caching_turns_the_cache_off():
    body = chat_body(prompt_of(100))
    with SimulatorProcess(ttft_ms=1, tokens_per_s=5000, prefix_caching=False) as sim:
        assert "--no-enable-prefix-caching" in sim.command()
        for _ in range(2):
            assert post_json(sim.url + "/v1/chat/completions", body)[0] == 200
        metrics = get(sim.url + "/metrics")[1].decode()
        stats = json.loads(get(sim.url + "/sim/stats")[1])
    assert metric(metrics, "vllm:prefix_cache_hits_total") == 0
    assert metric(metrics, "vllm:prefix_cache_queries_total") == 0
    assert stats["prefix_cache"] is None


# ---- cost ------------------------------------------------------------------------------------

def test_it_cuts_and_hashes_a_4000_token_prompt_in_a_few_milliseconds():
    prompt = text.render_chat([{"role": "user", "content": prompt_of(4000)}])
    tokens = text.count_tokens(prompt)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        PromptBlocks.from_text(prompt, tokens, 16)
        best = min(best, time.perf_counter() - start)
    assert best < 0.010  # about 1 ms on a slow shared core; the margin is for loaded CI
