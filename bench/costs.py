"""``python -m bench.costs`` (part of ``make bench``): what the cost steps themselves cost.

1. In process, on the embedded defaults: the exact cache's key and lookup (a miss and a hit on
   the in-process store), the semantic cache's miss path (embedding and search, the real
   model), the small-model classifier, and prompt compression of a long conversation.
2. Through a real gateway (the same stack as ``python -m bench``): a cache hit's time to first
   token against a miss's on the same simulator, interleaved.

Routes without cost steps pay none of this: ``python -m bench`` measures those.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def _timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return _percentiles(samples)


async def _timed_async(fn: Callable[[], Awaitable[object]], n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return _percentiles(samples)


def in_process() -> list[tuple[str, float, float]]:
    """Each cost step alone, in this process (no Redis: the embedded default)."""
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("SLUICE_VAR_DIR", tempfile.mkdtemp(prefix="sluice-costs-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from proxy import cache, classifier, compression, semantic
    from proxy.embedder import embedder_get
    from proxy.snapshot import RouteInfo

    route = RouteInfo(name="costs", model="m", baseline_model="m", cache_exact=True,
                      cache_semantic=True)
    body = {"model": "costs", "temperature": 0, "max_tokens": 64, "messages": [
        {"role": "system", "content": "You are a helpful assistant for a travel agency."},
        {"role": "user", "content": "What is the best time of year to visit Lisbon?"}]}
    rows = []

    async def exact_rows() -> None:
        key = cache.cache_key(route, body, endpoint="chat/completions")
        rows.append(("exact cache: plan + key", *_timed(
            lambda: cache.cache_plan(route, body, endpoint="chat/completions",
                                     cache_control=None), 2000)))
        rows.append(("exact cache: lookup, miss", *await _timed_async(
            lambda: cache.cache_lookup(key + "-absent"), 2000)))
        cache.cache_store(key, b'{"choices": []}' * 50, ttl_s=600)
        await asyncio.sleep(0.05)
        rows.append(("exact cache: lookup, hit", *await _timed_async(
            lambda: cache.cache_lookup(key), 2000)))

    async def semantic_rows() -> None:
        if not embedder_get().load_blocking(timeout=120):
            rows.append(("semantic: embedder failed to load", float("nan"), float("nan")))
            return
        for i in range(300):  # an index to search, of questions unlike the probes
            question = dict(body, messages=[body["messages"][0], {
                "role": "user", "content": f"Stored question number {i} about topic {i * 7}?"}])
            semantic.semantic_store(route, question, endpoint="chat/completions",
                                    answer=b"{}")
        await asyncio.sleep(2)
        probes = iter(range(10_000))

        def probe():
            i = next(probes)
            asked = dict(body, messages=[body["messages"][0], {
                "role": "user", "content": f"How warm is the sea near city {i} in May?"}])
            return semantic.semantic_lookup(route, asked, endpoint="chat/completions")

        await _timed_async(probe, 10)  # warm-up
        rows.append(("semantic cache: miss path (embed + search)",
                     *await _timed_async(probe, 200)))

    asyncio.run(exact_rows())
    rows.append(("small-model classifier: decide", *_timed(
        lambda: classifier.decide(body, endpoint="chat/completions", threshold=0.5,
                                  forced_primary=False), 5000)))
    long_chat = {"model": "costs", "messages": [body["messages"][0]] + [
        {"role": role, "content": f"Turn {i}: some words about the trip, the food, the sights. "
         * 8} for i in range(40) for role in ("user", "assistant")]}
    rows.append(("prompt compression: 80 turns to 1,000 tokens", *_timed(
        lambda: compression.compress(long_chat, endpoint="chat/completions",
                                     budget_tokens=1000), 500)))
    rows += scheduler_rows()
    rows += journal_rows()
    asyncio.run(semantic_rows())
    return rows


def scheduler_rows() -> list[tuple[str, float, float]]:
    """The backend choice (proxy/scheduler.py) among 16 backends, hint included: a 4,000-token
    conversation for prefix-aware (its blocks hashed, matched and remembered each time)."""
    from types import SimpleNamespace

    from proxy.scheduler import LEAST_LOAD, PREFIX_AWARE, Scheduler, hint_build, weights_for
    from proxy.snapshot import BackendInfo, RouteInfo

    pool = [BackendInfo(id=i, name=f"b{i}", base_url=f"http://10.0.0.{i}:8000", model="m",
                        weight=1, max_concurrency=256) for i in range(16)]
    loads = [SimpleNamespace(in_flight=i % 5, waiting=i % 3, kv_usage=i / 20) for i in range(16)]
    sched = Scheduler(prefix_blocks=200_000, sessions=100_000, load_factor=1.25, load_slack=4)
    chat = {"model": "m", "messages": [{"role": "system", "content": "Be concise. " * 60}] + [
        {"role": role, "content": f"Turn {i}: words about the trip, the food, the sights. " * 6}
        for i in range(24) for role in ("user", "assistant")]}  # ~16 KB, ~4,000 tokens
    rows = []
    for policy, label in ((PREFIX_AWARE, "prefix-aware, 4,000-token conversation"),
                          (LEAST_LOAD, "least-load")):
        route = RouteInfo(name="r", model="m", baseline_model="m",
                          balance=weights_for(policy))

        def decide(route=route):
            hint = hint_build(route, chat, endpoint="chat/completions", headers={})
            return sched.choose(pool, loads, hint)

        rows.append((f"backend choice, 16 backends: {label}", *_timed(decide, 5000)))
    return rows


def journal_rows() -> list[tuple[str, float, float]]:
    """The call log's `record()` on the request path (encode, one write to the journal, queue)
    under each fsync policy, against the queue alone; and the writer thread's fsync of one
    second of records under `interval` (off the event loop)."""
    import threading

    from django.conf import settings

    from analytics.recorder import CallRecorder
    from proxy.accounting import CallLog
    from proxy.snapshot import snapshot_current

    log = CallLog(endpoint="chat/completions")
    log.prompt_tokens, log.completion_tokens, log.ttft_ms = 812, 96, 21.5
    record = log.to_record(snapshot_current())
    rows = []
    for policy in ("none", "interval"):
        settings.SLUICE_JOURNAL_DIR = Path(tempfile.mkdtemp(prefix="sluice-journal-"))
        settings.SLUICE_JOURNAL_FSYNC = policy
        recorder = CallRecorder()
        stop = threading.Event()

        def syncing(recorder=recorder, stop=stop):
            while not stop.wait(0.05):  # fsync as often as 20x/s: the worst case for appends
                if recorder._journal is not None:
                    recorder._journal.sync()

        syncer = threading.Thread(target=syncing, daemon=True)
        syncer.start()
        rows.append((f"call log record(), journal fsync={policy}",
                     *_timed(lambda recorder=recorder: recorder.record(dict(record)), 20000)))
        stop.set()
        syncer.join()
        recorder._pending.clear()
    recorder = CallRecorder()
    for _ in range(620):  # a second of one process's streams
        recorder.record(dict(record))
    started = time.perf_counter()
    recorder._journal.sync()
    fsync_ms = (time.perf_counter() - started) * 1000
    rows.append(("journal fsync of 620 records (writer thread, interval)", fsync_ms, fsync_ms))
    pending = recorder._pending

    def queue_only():
        pending.append(dict(record))

    rows.append(("call log queue append alone (no journal)", *_timed(queue_only, 20000)))
    return rows


async def through_gateway(requests: int) -> list[tuple[str, float, float]]:
    """A hit's TTFT against a miss's, through a real gateway and simulator, interleaved."""
    from bench.client import Target, stream_timed
    from bench.stack import SERVED_MODEL, Pinning, SimSettings, Stack

    stack = Stack(pinning=Pinning.choose(True), sim_settings=SimSettings())
    stack.start()
    try:
        stack._manage(stack._gateway_env(), "shell", "-c", (
            "from proxy.models import Route; "
            f"Route.objects.create(name='cached', model={SERVED_MODEL!r}, cache_exact=True)"))
        cached = Target("cached", stack.sluice_url, "cached", stack.master_key, concurrency=1)
        plain = Target("plain", stack.sluice_url, SERVED_MODEL, stack.master_key, concurrency=1)
        await cached.open()
        await plain.open()
        body = cached.body(stream=True, max_tokens=32)
        deadline = time.monotonic() + 30  # the gateway picks the route up on its next refresh
        while (await stream_timed(cached, body)).status != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway never saw the `cached` route")
            await asyncio.sleep(0.5)
        hits, misses = [], []
        for i in range(requests):
            # a fresh prompt per miss (`seed` is part of the cache key), the same one per hit
            miss_body = plain.body(stream=True, max_tokens=32)[:-1] + f',"seed":{i}}}'.encode()
            for target, payload, out in ((cached, body, hits), (plain, miss_body, misses)):
                result = await stream_timed(target, payload)
                if result.status == 200 and result.ttft_s is not None:
                    out.append(result.ttft_s)
        await cached.close()
        await plain.close()
    finally:
        stack.stop()
    return [("TTFT through Sluice: exact-cache hit", *_percentiles(hits)),
            ("TTFT through Sluice: miss (simulator TTFT 20 ms)", *_percentiles(misses))]


def main() -> int:
    rows = in_process()
    rows += asyncio.run(through_gateway(200))
    lines = ["# Sluice cost steps: what they cost", "",
             f"- {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, Python {sys.version.split()[0]}, "
             f"{os.cpu_count()} CPUs; in-process rows on the embedded defaults (no Redis)", "",
             "| step | P50 ms | P99 ms |", "|---|---:|---:|"]
    lines += [f"| {name} | {p50:.3f} | {p99:.3f} |" for name, p50, p99 in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    DEFAULT_OUT.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (DEFAULT_OUT / f"costs-{stamp}.md").write_text(text)
    (DEFAULT_OUT / "costs-latest.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
