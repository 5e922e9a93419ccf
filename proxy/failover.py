"""Step 7 of the request path: get a backend's answer started, surviving a failing pool.

Until the app has received a byte, a failed attempt (refused, reset, `Server disconnected`, no
first byte in time, 5xx, 429) is retried with exponential backoff and jitter (tenacity) on
another backend of the same model, up to the route's attempts per model, and then down the
route's fallback chain (`chat-large` → `chat-small`). Backends whose breaker is open are skipped;
a model whose backends are all failing or open hands over to the next one in the chain.

Retries are capped by a retry budget, as Envoy does: over the last SLUICE_RETRY_BUDGET_WINDOW_S,
retries may be at most SLUICE_RETRY_BUDGET_PERCENT of requests (plus a small floor), so a sick
pool gets no retry storm on top of its load.

A stream is read ahead to its first event before the app sees anything: a backend that dies
between its headers and its first token is still retried. After that first byte, nothing is
retried (pipeline.py ends a broken stream with an SSE error event).
"""
from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from django.conf import settings
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from proxy import sse
from proxy.accounting import CallLog
from proxy.endpoints import Endpoint
from proxy.errors import overloaded
from proxy.pool import FAILED, Lease, NoCandidate, backend_available, backend_state, slot_acquire
from proxy.scheduler import Hint
from proxy.schemas import upstream_body
from proxy.snapshot import BackendInfo, RouteInfo, Snapshot, Timeouts, timeouts_default
from proxy.upstream import UpstreamError, body_drain, upstream_error, upstream_post
from proxy.window import WindowCounter

# Statuses a vLLM server answers when it, not the request, is the problem.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(slots=True)
class Opened:
    """A backend's answer, started: its status and headers, for a stream the first whole
    events (read ahead, not yet forwarded), and when the whole call must be over
    (`time.monotonic()`, the route's total timeout)."""

    response: aiohttp.ClientResponse
    first: bytes
    deadline: float


class UpstreamStatusError(UpstreamError):
    """A backend answered with a status worth retrying elsewhere. If no attempt is left, the
    app gets that status and the backend's own error, in OpenAI's shape."""

    def __init__(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        shaped, error_type = sse.error_normalise(payload, status=status)
        super().__init__(status, f"Backend answered HTTP {status}.", code=error_type,
                         retryable=True, headers=headers)
        self.shaped = shaped

    def body(self) -> bytes:
        return self.shaped


class RetryBudget:
    """Retries allowed over a sliding window: at most `percent` of requests, at least `floor`."""

    def __init__(self) -> None:
        self._window: WindowCounter | None = None

    @property
    def window(self) -> WindowCounter:
        if self._window is None:
            self._window = WindowCounter(settings.SLUICE_RETRY_BUDGET_WINDOW_S)
        return self._window

    def request(self) -> None:
        self.window.add(1, 0)

    def allows(self) -> bool:
        requests, retries = self.window.sums()
        limit = max(settings.SLUICE_RETRY_BUDGET_MIN,
                    requests * settings.SLUICE_RETRY_BUDGET_PERCENT / 100.0)
        return retries < limit

    def spend(self) -> None:
        self.window.add(0, 1)


budget = RetryBudget()


class Plan:
    """The models a request may be served by, in order, and the backends it has tried."""

    __slots__ = ("chain", "snapshot", "max_attempts", "index", "attempts", "tried", "hint")

    def __init__(self, chain: tuple[str, ...], snapshot: Snapshot, max_attempts: int,
                 hint: Hint | None = None) -> None:
        self.chain = chain
        self.snapshot = snapshot
        self.max_attempts = max_attempts
        self.hint = hint  # how to choose among a model's backends (None: in turn)
        self.index = 0  # the model of the chain being tried
        self.attempts = 0  # attempts on that model so far
        self.tried: set[BackendInfo] = set()

    def candidates(self) -> tuple[str, list[BackendInfo]] | None:
        """The model to try next and its backends that may take traffic (untried ones first),
        moving down the chain past models that are used up; None when the chain is."""
        while self.index < len(self.chain):
            model = self.chain[self.index]
            if self.attempts < self.max_attempts:
                open_ = [b for b in self.snapshot.backends_by_model.get(model, ())
                         if backend_available(b)]
                untried = [b for b in open_ if b not in self.tried]
                if untried or open_:
                    return model, untried or open_
            self.index += 1
            self.attempts = 0
        return None

    def model_done(self) -> None:
        """Every candidate of the current model closed its breaker while we waited."""
        self.index += 1
        self.attempts = 0

    def retry_after_s(self) -> float:
        """When a backend of the chain may take traffic again."""
        waits = [backend_state(b).breaker.retry_after_s()
                 for model in self.chain for b in self.snapshot.backends_by_model.get(model, ())]
        return min(waits, default=1.0)


def chain_resolve(route: RouteInfo, snapshot: Snapshot) -> tuple[str, ...]:
    """The route's model, then each fallback (a route name or a served model), once each."""
    chain = [route.model]
    for name in route.fallbacks:
        fallback = snapshot.routes.get(name)
        model = fallback.model if fallback is not None else name
        if model not in chain and model in snapshot.backends_by_model:
            chain.append(model)
    return tuple(chain)


async def upstream_open(log: CallLog, snapshot: Snapshot, endpoint: Endpoint,
                        body: dict[str, Any], hint: Hint | None = None) -> Opened:
    """Start the answer, retrying and falling back as the module docstring says; raise an
    `ApiError` (the last attempt's) when nothing could start it. `hint` chooses among each
    model's backends (proxy/scheduler.py)."""
    route = log.route
    assert route is not None
    timeouts = route.timeouts or timeouts_default()
    plan = Plan(chain_resolve(route, snapshot), snapshot,
                route.max_attempts or settings.SLUICE_RETRY_MAX_ATTEMPTS, hint)
    deadline = time.monotonic() + timeouts.total
    budget.request()

    try:  # the common case: the first attempt starts the answer, no retry machinery at all
        return await _attempt(plan, log, endpoint, body, timeouts, deadline)
    except UpstreamError as exc:
        failed: UpstreamError | None = exc

    def worth_retrying(exc: BaseException) -> bool:
        return (isinstance(exc, UpstreamError) and exc.retryable
                and time.monotonic() < deadline and plan.candidates() is not None
                and budget.allows())

    def before_sleep(state: RetryCallState) -> None:
        budget.spend()
        log.retries += 1

    retrying = AsyncRetrying(
        retry=retry_if_exception(worth_retrying),
        wait=wait_exponential_jitter(multiplier=settings.SLUICE_RETRY_BACKOFF_INITIAL_S,
                                     max=settings.SLUICE_RETRY_BACKOFF_MAX_S,
                                     jitter=settings.SLUICE_RETRY_BACKOFF_INITIAL_S),
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            if failed is not None:  # tenacity's first attempt is the one that just failed
                first, failed = failed, None
                raise first
            return await _attempt(plan, log, endpoint, body, timeouts, deadline)
    raise AssertionError("unreachable: tenacity reraises the last error")


async def _attempt(plan: Plan, log: CallLog, endpoint: Endpoint, body: dict[str, Any],
                   timeouts, deadline: float) -> Opened:
    lease = await _lease_take(plan, log, deadline)
    backend = lease.backend
    plan.tried.add(backend)
    plan.attempts += 1
    log.lease_take(lease, fallback=plan.index > 0)
    remaining = max(0.001, deadline - time.monotonic())
    response = None
    try:
        async with asyncio.timeout(min(timeouts.ttfb, remaining)):
            response = await upstream_post(
                backend, endpoint.upstream_path,
                upstream_body(body, served_model=backend.model, endpoint=endpoint),
                timeout=_client_timeout(log.route.timeouts),
            )
            if response.status in RETRYABLE_STATUSES:
                raise await _status_error(response)
            first = await _first_events(response, backend) if log.stream else b""
    except TimeoutError:
        if response is not None:
            response.close()
        _attempt_failed(log, lease, f"no first byte within {timeouts.ttfb:g} s")
        raise UpstreamError(504, f"Backend {backend.name} sent no first byte within "
                                 f"{min(timeouts.ttfb, remaining):g} s.",
                            code="upstream_timeout", retryable=True) from None
    except asyncio.CancelledError:  # the app hung up: the pipeline closes the books
        if response is not None:
            response.close()
        raise
    except UpstreamError as exc:
        if response is not None:
            response.close()
        if exc.code == "upstream_unreachable":
            backend_state(backend).healthy = False
            backend_state(backend).breaker.trip(exc.message)
        _attempt_failed(log, lease, exc.message)
        raise
    return Opened(response, first, deadline)


@functools.lru_cache(maxsize=256)
def _client_timeout(timeouts: Timeouts | None) -> aiohttp.ClientTimeout | None:
    """A route's connect and idle timeouts for aiohttp (None: the session's defaults, the
    settings'). The TTFB and total timeouts are enforced here and in the pipeline."""
    if timeouts is None:
        return None
    return aiohttp.ClientTimeout(total=None, connect=timeouts.connect, sock_read=timeouts.idle)


async def _lease_take(plan: Plan, log: CallLog, deadline: float) -> Lease:
    """A slot on the first model of the chain that has a backend to offer."""
    while True:
        picked = plan.candidates()
        if picked is None:
            raise overloaded(
                f"No backend can take `{log.requested_model}` now: every backend of "
                f"{', '.join(plan.chain)} is failing or its circuit breaker is open.",
                retry_after_s=plan.retry_after_s(), code="no_backend_available")
        model, candidates = picked
        queue_timeout = min(settings.SLUICE_QUEUE_TIMEOUT_S, max(0.0, deadline - time.monotonic()))
        waited = time.perf_counter()
        lease = None
        try:
            lease = await slot_acquire(model, candidates, timeout_s=queue_timeout,
                                       hint=plan.hint)
            return lease
        except NoCandidate:
            plan.model_done()
        finally:
            # A slot taken at once is no wait, however long the interpreter took to hand it
            # over (another thread may hold it for a few ms); only a turn in the queue is.
            if lease is None or lease.queued:
                log.queue_wait((time.perf_counter() - waited) * 1000.0)


def _attempt_failed(log: CallLog, lease: Lease, why: str) -> None:
    """This attempt's backend failed: free its slot, count the failure, and keep the backend's
    name on the record (the next attempt replaces it)."""
    lease.release(FAILED, why=why)
    log.lease_drop()


async def _status_error(response: aiohttp.ClientResponse) -> UpstreamStatusError:
    payload = await body_drain(response)
    headers = {}
    if retry_after := response.headers.get("Retry-After"):
        headers["Retry-After"] = retry_after
    return UpstreamStatusError(response.status, payload, headers)


async def _first_events(response: aiohttp.ClientResponse, backend: BackendInfo) -> bytes:
    """Read a stream up to its first whole event. A stream that ends or errors first, or whose
    first event is an error, failed before the app saw anything: worth another attempt."""
    if response.status != 200:
        return b""
    first = b""
    try:
        while sse.EVENT_END not in first:
            chunk = await response.content.readany()
            if not chunk:
                break
            first += chunk
    except aiohttp.ClientError as exc:
        raise upstream_error(backend, exc) from None
    if sse.EVENT_END not in first or sse.starts_with_error(first):
        raise UpstreamError(502, f"Backend {backend.name} ended the stream before its first "
                                 "token.", code="upstream_error", retryable=True)
    return first

