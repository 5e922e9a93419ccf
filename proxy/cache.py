"""The exact cache (step 5 of the request path): the same request, answered once.

A route with `cache_exact` on stores each complete, successful chat or text completion under
a hash of its normalised request, and serves the stored answer to the next identical request
without reaching a backend. What makes two requests identical: the route, its served model,
the endpoint, and every field of the body except `model` (the route stands for it), `stream`,
`stream_options` and `user`, which change how or for whom an answer is delivered, not what it
says. So a streamed request hits an answer stored by a non-streamed one and vice versa: one
canonical form is stored, the non-streamed JSON body (`proxy.replay` serves it in the shape
asked for).

Sampled answers are random: a request is cacheable only when it is deterministic (temperature
0, or an integer `seed`) unless the route's `cache_nonzero_temperature` says that any answer
will do. No temperature counts as temperature 1, OpenAI's default.

With REDIS_URL the entries live in Redis (shared by every process, expiring by TTL), through
redis-py's asyncio client: Django's cache API is synchronous underneath (its `aget` is a
`sync_to_async` wrapper: a thread hop per request). Without Redis they live in a bounded
in-process dict. A Redis outage fails open: a lookup is a miss, a store is dropped, and a
warning is logged once a minute.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from proxy.redis_shared import STORE_ERRORS, FailOpen, LoopClients
from proxy.snapshot import RouteInfo

logger = logging.getLogger("sluice.cache")

PREFIX = "sluice:cache:"
ENDPOINTS = frozenset({"chat/completions", "completions"})  # what the exact cache serves
# Fields that change how or to whom an answer is delivered, not the answer itself.
_NOT_IN_KEY = ("model", "stream", "stream_options", "user")
REDIS_TIMEOUT_S = 0.25  # as the rate limits: a slow Redis must not hold requests up long


# --- what is cached, under which key ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CachePlan:
    """What the caches do for one request."""

    key: str | None  # the exact cache's entry; None: the exact cache is off for this request
    semantic: bool  # the semantic cache is on for this request
    lookup: bool  # False: the app sent `Cache-Control: no-cache` (answer afresh)
    store: bool  # False: the app sent `Cache-Control: no-store` (keep nothing)


def cache_plan(route: RouteInfo, body: dict[str, Any], *, endpoint: str,
               cache_control: str | None) -> CachePlan | None:
    """None when no cache applies to this request: the route caches nothing (callers check
    `route.cache_exact or route.cache_semantic` first, so such routes never get here), the
    endpoint is not a completion, or the answer is sampled and the route wants it fresh."""
    if endpoint not in ENDPOINTS:
        return None
    if not (route.cache_nonzero_temperature or deterministic(body)):
        return None
    directives = _directives(cache_control)
    lookup, store = "no-cache" not in directives, "no-store" not in directives
    if not (lookup or store):
        return None
    key = cache_key(route, body, endpoint=endpoint) if route.cache_exact else None
    return CachePlan(key=key, semantic=route.cache_semantic, lookup=lookup, store=store)


def _directives(cache_control: str | None) -> frozenset[str]:
    if not cache_control:
        return frozenset()
    return frozenset(part.strip().lower() for part in cache_control.split(","))


def deterministic(body: dict[str, Any]) -> bool:
    """Temperature 0 (greedy), or a fixed seed: the same request gives the same answer."""
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and temperature == 0:
        return True
    seed = body.get("seed")
    return isinstance(seed, int) and not isinstance(seed, bool)


def cache_key(route: RouteInfo, body: dict[str, Any], *, endpoint: str) -> str:
    """The entry's name: a hash of the route, its model, the endpoint and the body's fields
    that shape the answer, serialised with sorted keys (so field order does not matter)."""
    fields = {name: value for name, value in body.items() if name not in _NOT_IN_KEY}
    payload = orjson.dumps([route.name, route.model, endpoint, fields],
                           option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()  # faster than blake2b here (SHA extensions)


def cacheable_answer(answer: bytes) -> dict[str, Any] | None:
    """The parsed answer when it is worth storing: a complete chat or text completion (every
    choice finished), with its usage; else None."""
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or "error" in parsed:
        return None
    if parsed.get("object") not in ("chat.completion", "text_completion"):
        return None
    choices, usage = parsed.get("choices"), parsed.get("usage")
    if not isinstance(choices, list) or not choices or not isinstance(usage, dict):
        return None
    if not all(isinstance(c, dict) and c.get("finish_reason") for c in choices):
        return None
    return parsed


# --- lookup and store ---------------------------------------------------------------------------
async def cache_lookup(key: str) -> bytes | None:
    """The stored answer, or None (a miss, or the store is unavailable). Never raises."""
    return await store_get().get(key)


def cache_store(key: str, answer: bytes, *, ttl_s: int) -> None:
    """Store an answer for `ttl_s` seconds, without blocking the caller. Never raises."""
    from django.conf import settings

    if ttl_s <= 0 or len(answer) > settings.SLUICE_CACHE_MAX_ENTRY_BYTES:
        return
    store_get().put(key, answer, ttl_s)


class Store(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def flush(self) -> None:
        """Wait for stores still on their way (tests, shutdown)."""


class LocalStore:
    """Entries of this process alone (the embedded default): a dict bounded by its number of
    entries, least recently used out first, each entry dropped once its TTL has passed.

    A lock rather than the event loop's single thread, because tests and tools run loops in
    more than one thread; uncontended it costs well under a microsecond."""

    def __init__(self, max_entries: int, clock=time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    def get_now(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[1] <= self.clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: str, value: bytes, ttl_s: int) -> None:
        with self._lock:
            self._entries[key] = (value, self.clock() + ttl_s)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisStore:
    """Entries in Redis (GET, SET with EX), shared by every process on the same Redis.

    One client per event loop, as asyncio connections belong to the loop that opened them
    (as `proxy.ratelimit.RedisBuckets` does)."""

    def __init__(self, url: str, *, prefix: str = PREFIX,
                 timeout_s: float = REDIS_TIMEOUT_S) -> None:
        self.url, self.prefix, self.timeout_s = url, prefix, timeout_s
        self._clients = LoopClients(url, timeout_s=timeout_s)
        self._tasks: set[asyncio.Task] = set()  # stores on their way, held until done
        self._fail = FailOpen("the exact cache is off", log=logger)

    async def get(self, key: str) -> bytes | None:
        if self._fail.down():
            return None
        try:
            return await self._clients.get().get(self.prefix + key)
        except STORE_ERRORS as exc:
            self._fail.outage(exc)
            return None

    def put(self, key: str, value: bytes, ttl_s: int) -> None:
        if self._fail.down():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to write from (a finaliser): drop it, it is only a cache
        task = loop.create_task(self._set(key, value, ttl_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set(self, key: str, value: bytes, ttl_s: int) -> None:
        try:
            await self._clients.get().set(self.prefix + key, value, ex=ttl_s)
        except STORE_ERRORS as exc:
            self._fail.outage(exc)

    async def flush(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks)

    async def close(self) -> None:
        """Close the running loop's client (at shutdown, and after each test's loop)."""
        await self.flush()
        client = self._clients.pop()
        if client is not None:
            await client.aclose()


_store: LocalStore | RedisStore | None = None


def store_get() -> LocalStore | RedisStore:
    """The process's store: Redis when REDIS_URL is set, else in-process."""
    global _store
    if _store is None:
        from django.conf import settings

        url = getattr(settings, "REDIS_URL", "")
        _store = (RedisStore(url) if url
                  else LocalStore(settings.SLUICE_CACHE_LOCAL_MAX_ENTRIES))
    return _store


def store_set(store: LocalStore | RedisStore | None) -> LocalStore | RedisStore | None:
    """Swap the process's store (tests; None: choose from settings again). Returns the old."""
    global _store
    old, _store = _store, store
    return old


async def cache_close() -> None:
    """Pending stores, then the running loop's Redis client (lifespan shutdown)."""
    if _store is not None:
        await _store.close()
