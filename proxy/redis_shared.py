"""The asyncio Redis plumbing the request path shares (rate limits, exact cache).

- `LoopClients`: one bounded, blocking connection pool and client per event loop (asyncio
  connections belong to the loop that opened them). Bounded and blocking: a burst waits briefly
  for a connection instead of opening one per request (thousands of connects would time out).
  No retries inside redis-py: a slow Redis must cost one short timeout, not several.
- `FailOpen`: Redis is an accelerator here, never a dependency of serving. After a failure the
  caller skips Redis for `backoff_s` instead of paying a timeout per request, and the outage
  is logged at most once per `warn_every_s`.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Callable
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

logger = logging.getLogger("sluice.redis")

MAX_CONNECTIONS = 32  # per process and loop; one command or script call takes ~0.1 ms
STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


class LoopClients:
    """The running loop's client, or what `build(client)` made of it (scripts, say)."""

    def __init__(self, url: str, *, timeout_s: float,
                 build: Callable[[Redis], Any] = lambda client: client) -> None:
        self.url, self.timeout_s, self.build = url, timeout_s, build
        self._entries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> Any:
        loop = asyncio.get_running_loop()
        entry = self._entries.get(loop)
        if entry is None:
            pool = BlockingConnectionPool.from_url(
                self.url, max_connections=MAX_CONNECTIONS, timeout=self.timeout_s,
                socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0), health_check_interval=0,
            )
            entry = self._entries[loop] = self.build(Redis.from_pool(pool))
        return entry

    def pop(self) -> Any:
        """The running loop's entry, forgotten (to close it), or None."""
        return self._entries.pop(asyncio.get_running_loop(), None)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


class FailOpen:
    """Whether to skip Redis for now, and the outage's one log line."""

    def __init__(self, what: str, *, log: logging.Logger = logger, backoff_s: float = 1.0,
                 warn_every_s: float = 60.0) -> None:
        self.what, self.log = what, log
        self.backoff_s, self.warn_every_s = backoff_s, warn_every_s
        self.until = 0.0
        self._warned_at = -math.inf

    def down(self) -> bool:
        return time.monotonic() < self.until

    def outage(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.until = now + self.backoff_s
        if now - self._warned_at >= self.warn_every_s:
            self._warned_at = now
            self.log.warning("%s: Redis failed (%s: %s); failing open", self.what,
                             type(exc).__name__, exc)
