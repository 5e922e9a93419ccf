"""Rate limits per API key and per route: requests and tokens per minute (RPM, TPM).

Token buckets, the way OpenAI documents its own limits: a bucket per (scope, id, kind) holds at
most `limit`, refills continuously at limit/60 per second, and a request takes 1 from each
requests bucket and its estimated tokens from each tokens bucket that applies to it. When the
call ends its real usage settles the difference, so the estimate may be generous (it counts
`max_tokens`, as OpenAI does) without costing more than the call really used.

With REDIS_URL the buckets live in Redis, shared by every replica: one Lua script per request
takes from all of its buckets at once, or from none, against Redis' own clock; a bucket's key
expires once it would be full again (a missing key *is* a full bucket). Without Redis (the
embedded default) the same arithmetic runs in-process on a monotonic clock. A Redis outage fails
open: rate limits protect capacity, and losing them for a while must never fail traffic.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.errors import ApiError
from proxy.redis_shared import STORE_ERRORS, FailOpen, LoopClients
from proxy.snapshot import KeyInfo, RouteInfo

logger = logging.getLogger("sluice.ratelimit")

PREFIX = "sluice:rl:"
WINDOW_S = 60.0  # limits are per minute
REDIS_TIMEOUT_S = 0.25  # connect and read: a slow Redis must not hold requests up
CHARS_PER_TOKEN = 4
MAX_DEPTH = 4  # messages → content → parts → text is three levels

UNITS = {"requests": "requests per min (RPM)", "tokens": "tokens per min (TPM)"}


# --- what limits a request -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Limit:
    """One bucket a request draws on, and how much it draws."""

    scope: str  # "key" or "route"
    label: str  # for messages: the key's or the route's name
    name: str  # the bucket's id, without the store's prefix
    kind: str  # "requests" or "tokens"
    limit: int
    cost: int

    @property
    def rate(self) -> float:
        """Refill per second."""
        return self.limit / WINDOW_S


@dataclass(slots=True)
class Grant:
    """What one request took from its limits, settled with its real usage at the end."""

    headers: dict[str, str] = field(default_factory=dict)
    tokens: int = 0  # the estimate taken from every tokens bucket
    token_limits: tuple[Limit, ...] = ()
    store: Buckets | None = None
    loop: asyncio.AbstractEventLoop | None = None
    settled: bool = False


def limits_of(key: KeyInfo, route: RouteInfo, *, tokens: int) -> tuple[Limit, ...]:
    """The buckets this request draws on: the key's and the route's, both kinds, where set."""
    ident = key.id if key.id is not None else key.name
    out: list[Limit] = []
    for scope, label, owner, rpm, tpm in (
        ("key", key.name, ident, key.rpm_limit, key.tpm_limit),
        ("route", route.name, route.name, route.rpm_limit, route.tpm_limit),
    ):
        if rpm:
            out.append(Limit(scope, label, f"{scope}:{owner}:requests", "requests", rpm, 1))
        if tpm:
            out.append(Limit(scope, label, f"{scope}:{owner}:tokens", "tokens", tpm, tokens))
    return tuple(out)


# --- the token estimate ----------------------------------------------------------------------
def tokens_estimate(body: dict[str, Any], *, endpoint: str) -> int:
    """Tokens a request will likely cost, before the backend has counted them.

    Characters/4 of the prompt's text, plus the most it may generate (`max_tokens` and its
    aliases, times `n`), which OpenAI also counts toward TPM. Settling corrects it with the
    backend's usage, so being cheap matters more here than being exact."""
    chars, ids = _text_size(body.get("messages"))
    for name in ("prompt", "input", "query", "documents", "text_1", "text_2"):
        if name in body:
            more_chars, more_ids = _text_size(body[name])
            chars, ids = chars + more_chars, ids + more_ids
    prompt = ids + -(-chars // CHARS_PER_TOKEN)
    return prompt + _output_budget(body)


def _output_budget(body: dict[str, Any]) -> int:
    """The most the request may generate, as OpenAI reserves it against TPM."""
    most = body.get("max_completion_tokens") or body.get("max_tokens") or body.get(
        "max_output_tokens")
    n = body.get("n") or 1
    if not isinstance(most, int) or not isinstance(n, int):
        return 0
    return max(0, most) * max(1, n)


def _text_size(value: Any, depth: int = 0) -> tuple[int, int]:
    """(characters of text, token ids) in a prompt-like value: a string, token ids, messages
    or content parts, nested in lists. Images and other non-text parts count nothing, and so
    does anything nested deeper than real prompts are (a hostile body must not recurse far)."""
    if depth > MAX_DEPTH:
        return 0, 0
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, int):
        return 0, 1  # one token id of a pre-tokenised prompt
    if isinstance(value, dict):
        text = value.get("content", value.get("text"))
        return _text_size(text, depth + 1) if text is not None else (0, 0)
    if isinstance(value, list):
        chars = ids = 0
        for item in value:
            more_chars, more_ids = _text_size(item, depth + 1)
            chars, ids = chars + more_chars, ids + more_ids
        return chars, ids
    return 0, 0


# --- take and settle ---------------------------------------------------------------------------
async def limits_take(key: KeyInfo, route: RouteInfo, *, tokens: int) -> Grant | None:
    """Take one request and `tokens` from the key's and the route's limits, or raise a 429
    `ApiError` (with Retry-After and x-ratelimit-* headers). None when nothing limits."""
    if not (key.rpm_limit or key.tpm_limit or route.rpm_limit or route.tpm_limit):
        return None  # the common case: no I/O, no allocation
    limits = limits_of(key, route, tokens=tokens)
    _refuse_oversized(limits)
    store = buckets_get()
    levels = await store.take(limits)
    if levels is None:
        return None  # the store is down: fail open
    taken = all(level >= limit.cost for level, limit in zip(levels, limits, strict=True))
    if not taken:
        raise _refusal(limits, levels)
    after = [level - limit.cost for level, limit in zip(levels, limits, strict=True)]
    return Grant(
        headers=_headers(limits, after),
        tokens=tokens,
        token_limits=tuple(limit for limit in limits if limit.kind == "tokens"),
        store=store,
        loop=_running_loop(),
    )


def limits_settle(grant: Grant | None, *, tokens: int) -> None:
    """Correct the token estimate with the call's real usage (never blocks the caller).

    Positive differences are charged (the bucket may go into debt, which later requests wait
    out); negative ones are refunded up to the bucket's capacity. Never raises: the call has
    been served, and its books must close whatever happens here."""
    if grant is None or grant.settled:
        return
    grant.settled = True
    try:
        delta = max(0, int(tokens or 0)) - grant.tokens
        if delta and grant.token_limits and grant.store is not None:
            grant.store.adjust(grant.token_limits, delta, loop=grant.loop)
    except Exception:  # a bug here must not fail a call already served
        logger.exception("settling a rate-limit grant failed")


def _refuse_oversized(limits: Sequence[Limit]) -> None:
    """A request costing more than a bucket holds can never pass: say so now, and tell the SDK
    not to retry (OpenAI answers these with a 429 as well)."""
    for limit in limits:
        if limit.cost > limit.limit:
            raise ApiError(
                429,
                f"Request too large for {limit.scope} '{limit.label}' on {UNITS[limit.kind]}: "
                f"Limit {limit.limit}, Requested {limit.cost}. The input or output tokens must "
                "be reduced in order to run successfully.",
                type=limit.kind, code="rate_limit_exceeded", headers={"x-should-retry": "false"},
            )


def _refusal(limits: Sequence[Limit], levels: Sequence[float]) -> ApiError:
    """The 429 for a refused request: OpenAI's message and headers, naming the bucket that
    needs the longest wait, which is also how long the client should wait for all of them."""
    waits = [(limit.cost - level) / limit.rate if level < limit.cost else 0.0
             for limit, level in zip(limits, levels, strict=True)]
    worst = max(range(len(limits)), key=waits.__getitem__)
    limit, level, wait = limits[worst], levels[worst], waits[worst]
    wait_ms = math.ceil(wait * 1000)
    used = math.ceil(limit.limit - level - 1e-9)
    headers = _headers(limits, levels)
    headers["Retry-After"] = str(max(1, math.ceil(wait_ms / 1000)))
    headers["retry-after-ms"] = str(max(1, wait_ms))
    return ApiError(
        429,
        f"Rate limit reached for {limit.scope} '{limit.label}' on {UNITS[limit.kind]}: "
        f"Limit {limit.limit}, Used {used}, Requested {limit.cost}. "
        f"Please try again in {duration_text(wait)}.",
        type=limit.kind, code="rate_limit_exceeded", headers=headers,
    )


def _headers(limits: Sequence[Limit], levels: Sequence[float]) -> dict[str, str]:
    """x-ratelimit-* for each kind that is limited, from its tightest bucket: the one with the
    least left (on a tie, the one that takes longer to refill)."""
    tightest: dict[str, tuple[Limit, float]] = {}
    for limit, level in zip(limits, levels, strict=True):
        best = tightest.get(limit.kind)
        if best is None or _tighter(limit, level, *best):
            tightest[limit.kind] = (limit, level)
    headers: dict[str, str] = {}
    for kind, (limit, level) in tightest.items():
        headers[f"x-ratelimit-limit-{kind}"] = str(limit.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(level)))
        headers[f"x-ratelimit-reset-{kind}"] = duration_text(_refill_s(limit, level))
    return headers


def _tighter(limit: Limit, level: float, other: Limit, other_level: float) -> bool:
    left, other_left = math.floor(level), math.floor(other_level)
    if left != other_left:
        return left < other_left
    return _refill_s(limit, level) > _refill_s(other, other_level)


def _refill_s(limit: Limit, level: float) -> float:
    """Seconds until the bucket is full again."""
    return max(0.0, (limit.limit - level) / limit.rate)


def duration_text(seconds: float) -> str:
    """OpenAI's (Go's) duration style: 12ms, 1.5s, 6m0s, 1h2m3s."""
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# --- where the buckets live ---------------------------------------------------------------------
class Buckets(Protocol):
    async def take(self, limits: Sequence[Limit]) -> list[float] | None:
        """Refill each bucket to now and, only if every one holds its cost, take it from all.
        Returns each bucket's level before the take, or None when the store is unavailable."""

    def adjust(self, limits: Sequence[Limit], delta: int, *,
               loop: asyncio.AbstractEventLoop | None) -> None:
        """Charge `delta` more (negative: refund) to each bucket, without blocking."""

    async def flush(self) -> None:
        """Wait for adjustments still on their way (tests, shutdown)."""


def _refilled(level: float, at: float, limit: int, now: float) -> float:
    """A bucket's level at `now`, from the level it had at `at` (seconds)."""
    return min(float(limit), level + max(0.0, now - at) * limit / WINDOW_S)


class LocalBuckets:
    """The buckets of this process alone: the embedded default, and a reference for Redis'.

    A lock rather than the event loop's single thread, because tests and tools run loops in
    more than one thread; uncontended it costs well under a microsecond."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._state: dict[str, tuple[float, float]] = {}  # name → (level, at)
        self._lock = threading.Lock()

    async def take(self, limits: Sequence[Limit]) -> list[float]:
        with self._lock:
            now = self.clock()
            levels = [self._level(limit, now) for limit in limits]
            if all(level >= limit.cost for level, limit in zip(levels, limits, strict=True)):
                for limit, level in zip(limits, levels, strict=True):
                    self._state[limit.name] = (level - limit.cost, now)
            return levels

    def adjust(self, limits: Sequence[Limit], delta: int, *,
               loop: asyncio.AbstractEventLoop | None = None) -> None:
        with self._lock:
            now = self.clock()
            for limit in limits:
                level = min(float(limit.limit), self._level(limit, now) - delta)
                self._state[limit.name] = (level, now)

    async def flush(self) -> None:
        return None  # adjustments apply at once

    def _level(self, limit: Limit, now: float) -> float:
        state = self._state.get(limit.name)
        return float(limit.limit) if state is None else _refilled(*state, limit.limit, now)


# Both scripts refill a bucket from its stored (level, at µs) to Redis' clock; a missing key is
# a full bucket, so each write sets the key to expire once the bucket would be full again.
_LUA_COMMON = """
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local function level_of(key, limit)
  local state = redis.call('HMGET', key, 'level', 'at')
  if not state[1] then return limit end
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.min(limit, tonumber(state[1]) + elapsed * limit / 60000000)
end
local function store(key, limit, level)
  redis.call('HSET', key, 'level', level, 'at', now)
  redis.call('PEXPIRE', key, math.ceil((limit - level) * 60000 / limit) + 1000)
end
"""
# KEYS: the request's buckets; ARGV: limit and cost of each, in KEYS order.
# Returns {1 if taken else 0, each bucket's level before the take}.
_LUA_TAKE = _LUA_COMMON + """
local levels, taken = {}, 1
for i, key in ipairs(KEYS) do
  levels[i] = level_of(key, tonumber(ARGV[2 * i - 1]))
  if levels[i] < tonumber(ARGV[2 * i]) then taken = 0 end
end
local reply = {taken}
for i, key in ipairs(KEYS) do
  if taken == 1 then store(key, tonumber(ARGV[2 * i - 1]), levels[i] - tonumber(ARGV[2 * i])) end
  reply[i + 1] = string.format('%.17g', levels[i])
end
return reply
"""
# KEYS: tokens buckets; ARGV[1]: tokens to charge (negative: refund); ARGV[i + 1]: KEYS[i]'s limit.
_LUA_ADJUST = _LUA_COMMON + """
local delta = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i + 1])
  store(key, limit, math.min(limit, level_of(key, limit) - delta))
end
return 1
"""


class RedisBuckets:
    """Buckets in Redis, shared by every process that uses the same Redis and prefix.

    One client per event loop, as asyncio connections belong to the loop that opened them."""

    def __init__(self, url: str, *, prefix: str = PREFIX,
                 timeout_s: float = REDIS_TIMEOUT_S) -> None:
        self.url, self.prefix, self.timeout_s = url, prefix, timeout_s
        self._clients = LoopClients(url, timeout_s=timeout_s, build=lambda client: (
            client, client.register_script(_LUA_TAKE), client.register_script(_LUA_ADJUST)))
        self._tasks: set[asyncio.Task] = set()  # settle tasks, held until done
        self._fail = FailOpen("rate limits are off", log=logger)

    async def take(self, limits: Sequence[Limit]) -> list[float] | None:
        if self._fail.down():
            return None
        args: list[int] = []
        for limit in limits:
            args += (limit.limit, limit.cost)
        try:
            client, take, _ = self._clients.get()
            reply = await take(keys=[self.prefix + limit.name for limit in limits], args=args,
                               client=client)
        except STORE_ERRORS as exc:  # any failure of the store fails open
            self._fail.outage(exc)
            return None
        return [float(level) for level in reply[1:]]

    def adjust(self, limits: Sequence[Limit], delta: int, *,
               loop: asyncio.AbstractEventLoop | None) -> None:
        running = _running_loop()
        if running is not None:
            self._spawn(limits, delta)
        elif loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._spawn, limits, delta)

    async def flush(self) -> None:
        await asyncio.sleep(0)  # let a settle handed over from another thread spawn its task
        while self._tasks:
            await asyncio.gather(*self._tasks)

    async def close(self) -> None:
        """Close the running loop's client (at shutdown, and after each test's loop)."""
        await self.flush()
        entry = self._clients.pop()
        if entry is not None:
            await entry[0].aclose()

    def _spawn(self, limits: Sequence[Limit], delta: int) -> None:
        task = asyncio.get_running_loop().create_task(self._adjust(limits, delta))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _adjust(self, limits: Sequence[Limit], delta: int) -> None:
        if self._fail.down():
            return
        try:
            client, _, adjust = self._clients.get()
            await adjust(keys=[self.prefix + limit.name for limit in limits],
                         args=[delta, *(limit.limit for limit in limits)], client=client)
        except STORE_ERRORS as exc:  # as for take: fail open
            self._fail.outage(exc)


_buckets: Buckets | None = None


def buckets_get() -> Buckets:
    """The process's buckets: Redis when REDIS_URL is set, else in-process."""
    global _buckets
    if _buckets is None:
        from django.conf import settings

        url = getattr(settings, "REDIS_URL", "")
        _buckets = RedisBuckets(url) if url else LocalBuckets()
    return _buckets


def buckets_set(buckets: Buckets | None) -> Buckets | None:
    """Swap the process's buckets (tests; None: choose from settings again). Returns the old."""
    global _buckets
    old, _buckets = _buckets, buckets
    return old


async def limits_close() -> None:
    """Close the running loop's Redis client, if any (lifespan shutdown)."""
    if isinstance(_buckets, RedisBuckets):
        await _buckets.close()
