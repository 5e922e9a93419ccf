"""Each backend's own word on its load: vLLM's Prometheus /metrics, scraped off the request path.

Every SLUICE_LOAD_SCRAPE_S a background loop GETs every backend's /metrics at once and keeps,
beside the pool's own in-flight count, what the server reports: sequences running and waiting
(requests other replicas and clients sent count too), KV-cache usage, and its prefix cache's
hit rate since the previous scrape. A scrape that fails, or one older than three periods,
leaves zeros: the scheduler then goes by Sluice's own counts, which are exact for its traffic.

Only the few series the scheduler reads are parsed, line by line: a vLLM /metrics page is a
few hundred lines, and a full parse with prometheus_client's parser costs milliseconds of the
event loop per backend per period where this costs tens of microseconds.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from django.conf import settings

from proxy.pool import BackendState, backend_state
from proxy.snapshot import BackendInfo, Snapshot, snapshot_current
from proxy.upstream import session_get

logger = logging.getLogger("sluice.loadscrape")

# Series read, summed over their label sets (several engines behind one server add up).
# Older vLLM releases call KV-cache usage gpu_cache_usage_perc and the prefix counters
# gpu_prefix_cache_*.
_SERIES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:gpu_cache_usage_perc": "kv_usage",
    "vllm:prefix_cache_queries_total": "prefix_queries",
    "vllm:prefix_cache_hits_total": "prefix_hits",
    "vllm:gpu_prefix_cache_queries_total": "prefix_queries",
    "vllm:gpu_prefix_cache_hits_total": "prefix_hits",
}
_PREFIXES = ("vllm:num_requests", "vllm:kv_cache", "vllm:gpu_", "vllm:prefix_cache")


@dataclass(slots=True)
class Load:
    """The series of one /metrics page that the scheduler uses."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    prefix_queries: float | None = None
    prefix_hits: float | None = None
    engines: int = 0  # label sets of kv usage seen: usage is averaged over them


def metrics_parse(text: str) -> Load:
    """The scheduler's series from a Prometheus text page (comments and other series skipped)."""
    load = Load()
    for line in text.splitlines():
        if not line.startswith(_PREFIXES):
            continue
        end = line.find("{")
        if end < 0:
            end = line.find(" ")
        field = _SERIES.get(line[:end])
        if field is None:
            continue
        try:
            value = float(line.rsplit(None, 1)[-1])
        except ValueError:
            continue
        if field == "kv_usage":
            load.engines += 1
        current = getattr(load, field)
        setattr(load, field, value if current is None else current + value)
    if load.engines > 1:
        load.kv_usage /= load.engines
    return load


class _Totals:
    """The previous scrape's prefix-cache counters, to turn two scrapes into a hit rate."""

    __slots__ = ("queries", "hits")

    def __init__(self, queries: float, hits: float) -> None:
        self.queries, self.hits = queries, hits


_previous: dict[BackendInfo, _Totals] = {}


def load_apply(state: BackendState, backend: BackendInfo, load: Load, *, now: float) -> None:
    """Keep one scrape's figures on the backend's pool state."""
    state.running = int(load.running)
    state.waiting = int(load.waiting)
    state.kv_usage = min(1.0, max(0.0, load.kv_usage))
    state.scraped_at = now
    if load.prefix_queries is not None and load.prefix_hits is not None:
        before = _previous.get(backend)
        _previous[backend] = _Totals(load.prefix_queries, load.prefix_hits)
        if before is not None and load.prefix_queries > before.queries:
            state.prefix_hit_rate = ((load.prefix_hits - before.hits)
                                     / (load.prefix_queries - before.queries))


def load_forget(state: BackendState) -> None:
    state.running = state.waiting = 0
    state.kv_usage = 0.0
    state.scraped_at = 0.0
    state.prefix_hit_rate = None


async def _scrape(backend: BackendInfo, timeout_s: float) -> Load | None:
    try:
        async with session_get().get(f"{backend.base_url}/metrics",
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                return None
            return metrics_parse(await resp.text())
    except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError):
        return None


async def load_scrape_all(snapshot: Snapshot, *, period_s: float) -> None:
    """Scrape every backend once, at the same time; record what came back."""
    backends = snapshot.backends
    results = await asyncio.gather(*(_scrape(b, min(1.0, period_s)) for b in backends))
    now = time.monotonic()
    for backend, load in zip(backends, results, strict=True):
        state = backend_state(backend)
        if load is not None:
            load_apply(state, backend, load, now=now)
        elif state.scraped_at and now - state.scraped_at > 3 * period_s:
            load_forget(state)  # stale figures would steer traffic wrongly


async def load_scrape_loop() -> None:
    period = settings.SLUICE_LOAD_SCRAPE_S
    if period <= 0:
        return
    while True:
        try:
            await load_scrape_all(snapshot_current(), period_s=period)
        except Exception:  # a scraper bug must not stop scraping
            logger.exception("load scrape failed")
        await asyncio.sleep(period)
