"""Per-process runtime state of the pool: each backend's breaker, in-flight count and latency;
the slots a request takes on a backend; the queue it waits in when every backend is full.

This state is per replica by nature (as Envoy keeps it per host), so it lives in memory and is
touched only from the event loop. Among the backends with a free slot and a breaker that lets
traffic through, the route's policy picks one (proxy/scheduler.py: round robin, least load,
prefix-aware, session), reading the own in-flight counts kept here and the load each backend
last reported on its /metrics (proxy/loadscrape.py).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings

from proxy.breaker import Breaker, BreakerPolicy
from proxy.errors import overloaded
from proxy.scheduler import REASON_ONLY, REASON_RR, Hint, scheduler_get
from proxy.snapshot import BackendInfo, Snapshot, snapshot_current
from proxy.upstream import upstream_health

logger = logging.getLogger("sluice.pool")

# Outcomes a finished call reports about its backend.
OK, FAILED, NEUTRAL = "ok", "failed", "neutral"
_EWMA = 0.2  # weight of the newest latency sample


@dataclass(slots=True)
class BackendState:
    breaker: Breaker
    in_flight: int = 0
    healthy: bool = True  # the last /health probe's verdict
    latency_ms: float | None = None  # moving average of calls it served
    served: int = 0
    # What the backend last reported on its /metrics (zero when unknown or stale).
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    prefix_hit_rate: float | None = None  # its prefix cache's, since the previous scrape
    scraped_at: float = 0.0  # time.monotonic() of the last good scrape; 0: never


# Keyed by the whole BackendInfo: a backend re-pointed in the admin (new URL, say) starts
# with a fresh state, and a probe still running against its old address cannot mislabel it.
_states: dict[BackendInfo, BackendState] = {}
_turns: dict[str, itertools.count] = {}
_queues: dict[str, deque[asyncio.Event]] = {}  # per served model, in arrival order


def breaker_policy(backend: BackendInfo) -> BreakerPolicy:
    """The SLUICE_BREAKER_* settings, with the backend's own overrides from the admin."""
    return BreakerPolicy(
        failures=backend.breaker_failures or settings.SLUICE_BREAKER_FAILURES,
        error_rate=(backend.breaker_error_rate if backend.breaker_error_rate is not None
                    else settings.SLUICE_BREAKER_ERROR_RATE),
        window_s=settings.SLUICE_BREAKER_WINDOW_S,
        min_requests=settings.SLUICE_BREAKER_MIN_REQUESTS,
        cooldown_s=(backend.breaker_cooldown_s if backend.breaker_cooldown_s is not None
                    else settings.SLUICE_BREAKER_COOLDOWN_S),
    )


def backend_state(backend: BackendInfo) -> BackendState:
    state = _states.get(backend)
    if state is None:
        state = _states[backend] = BackendState(Breaker(backend.name, breaker_policy(backend)))
    return state


def backend_available(backend: BackendInfo) -> bool:
    return backend_state(backend).breaker.available()


class Lease:
    """One request's slot on one backend, from the pick until `release`."""

    __slots__ = ("backend", "state", "released", "reason", "queued")

    def __init__(self, backend: BackendInfo, state: BackendState, reason: str) -> None:
        self.backend = backend
        self.state = state
        self.released = False
        self.reason = reason  # why the scheduler picked it
        self.queued = False  # it waited its turn in the model's queue

    def release(self, outcome: str, *, latency_ms: float | None = None, why: str = "") -> None:
        """Free the slot (waking the model's queue) and tell the breaker how it went."""
        if self.released:
            return
        self.released = True
        state = self.state
        state.in_flight -= 1
        if outcome == OK:
            state.breaker.success()
            if latency_ms is not None:
                state.served += 1
                last = state.latency_ms
                state.latency_ms = (latency_ms if last is None
                                    else last + _EWMA * (latency_ms - last))
        elif outcome == FAILED:
            state.breaker.failure(why or "request failed")
        else:
            state.breaker.neutral()
        queue = _queues.get(self.backend.model)
        if queue:
            queue[0].set()


def _take_free(model: str, candidates: Sequence[BackendInfo], hint: Hint | None) -> Lease | None:
    free, states = [], []
    for b in candidates:
        state = backend_state(b)
        if state.in_flight < b.max_concurrency and state.breaker.available():
            free.append(b)
            states.append(state)
    if not free:
        return None
    if hint is not None:
        index, reason = scheduler_get().choose(free, states, hint)
    elif len(free) == 1:
        index, reason = 0, REASON_ONLY
    else:
        index, reason = next(_turns.setdefault(model, itertools.count())) % len(free), REASON_RR
    backend, state = free[index], states[index]
    state.breaker.admit()
    state.in_flight += 1
    return Lease(backend, state, reason)


class NoCandidate(Exception):
    """Every candidate's breaker opened while the request waited for a slot."""


async def slot_acquire(model: str, candidates: Sequence[BackendInfo], *,
                       timeout_s: float, hint: Hint | None = None) -> Lease:
    """A slot on one of `candidates` (backends of `model`), chosen by `hint`'s weights (None:
    in turn): at once when one is free and nobody is waiting, else in arrival order as slots
    free up, for at most `timeout_s`. A full queue or an expired wait is a 503 with
    Retry-After."""
    queue = _queues.setdefault(model, deque())
    if not queue:
        lease = _take_free(model, candidates, hint)
        if lease is not None:
            return lease
    if len(queue) >= settings.SLUICE_QUEUE_MAX:
        raise overloaded(f"Every backend of {model} is busy and {len(queue)} requests are "
                         "already waiting; try again shortly.", retry_after_s=1,
                         code="queue_full")
    return await _queued(model, candidates, queue, timeout_s, hint)


async def _queued(model: str, candidates: Sequence[BackendInfo], queue: deque[asyncio.Event],
                  timeout_s: float, hint: Hint | None) -> Lease:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    turn = asyncio.Event()
    queue.append(turn)
    try:
        while True:
            if queue[0] is turn:
                if not any(backend_available(b) for b in candidates):
                    raise NoCandidate(model)
                lease = _take_free(model, candidates, hint)
                if lease is not None:
                    lease.queued = True
                    return lease
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise overloaded(f"Every backend of {model} stayed busy for {timeout_s:.0f} s; "
                                 "try again shortly.", retry_after_s=1, code="queue_timeout")
            turn.clear()
            # The head also looks again now and then: a breaker may close, a backend be added.
            wait = min(remaining, 0.25) if queue[0] is turn else remaining
            try:
                await asyncio.wait_for(turn.wait(), wait)
            except TimeoutError:
                pass
    finally:
        if queue and queue[0] is turn:
            queue.popleft()
            if queue:
                queue[0].set()  # pass the turn on: more slots may be free
        else:
            queue.remove(turn)


def queue_length(model: str) -> int:
    queue = _queues.get(model)
    return len(queue) if queue else 0


def backend_mark(backend: BackendInfo, *, healthy: bool, why: str = "") -> None:
    """Record an active check's verdict; a failed one opens the breaker at once."""
    state = backend_state(backend)
    if state.healthy != healthy:
        logger.warning("backend %s is now %s", backend.name, "healthy" if healthy else "down")
    state.healthy = healthy
    if healthy:
        state.breaker.health_ok()
    else:
        state.breaker.trip(why or "health probe failed")


async def health_probe_all(snapshot: Snapshot) -> None:
    """Probe every backend's /health at once and record the verdicts."""
    backends = snapshot.backends
    results = await asyncio.gather(*(upstream_health(b) for b in backends))
    for backend, ok in zip(backends, results, strict=True):
        backend_mark(backend, healthy=ok, why="health probe failed")
    for gone in set(_states) - set(snapshot_current().backends):
        del _states[gone]  # removed or edited since; in-flight calls keep their own reference


@dataclass(slots=True)
class BackendReport:
    """What the ops API shows of one backend, as this process sees it."""

    name: str
    model: str
    base_url: str
    state: str
    healthy: bool
    in_flight: int
    max_concurrency: int
    queued: int
    error_rate: float | None
    requests_in_window: int
    consecutive_failures: int
    latency_ms: float | None
    retry_after_s: float
    reason: str = field(default="")
    # Its own /metrics, as last scraped (None: never, or stale).
    running: int | None = None
    waiting: int | None = None
    kv_cache_usage: float | None = None
    prefix_cache_hit_rate: float | None = None


def backends_report(snapshot: Snapshot) -> list[BackendReport]:
    reports = []
    for backend in snapshot.backends:
        state = backend_state(backend)
        breaker = state.breaker
        reports.append(BackendReport(
            name=backend.name, model=backend.model, base_url=backend.base_url,
            state=breaker.state, healthy=state.healthy, in_flight=state.in_flight,
            max_concurrency=backend.max_concurrency, queued=queue_length(backend.model),
            error_rate=breaker.error_rate(), requests_in_window=breaker.requests_in_window(),
            consecutive_failures=breaker.consecutive_failures,
            latency_ms=round(state.latency_ms, 3) if state.latency_ms is not None else None,
            retry_after_s=round(breaker.retry_after_s(), 3), reason=breaker.reason,
            **_scraped(state),
        ))
    return reports


def _scraped(state: BackendState) -> dict:
    if not state.scraped_at:
        return {}
    return {"running": state.running, "waiting": state.waiting,
            "kv_cache_usage": round(state.kv_usage, 4),
            "prefix_cache_hit_rate": (None if state.prefix_hit_rate is None
                                      else round(state.prefix_hit_rate, 4))}
