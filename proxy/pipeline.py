"""The request path, top to bottom. Each step is a call into its own module.

1. authenticate the key          (auth: in-memory snapshot, no database)
2. validate the body             (schemas, validation: OpenAI-shaped 400s)
3. resolve the route             (routing; auth: the key may use it, else 403)
4. rate limit                    (ratelimit: RPM and TPM per key and per route)
5. cost steps                    (cache: exact, semantic; downroute: small-model routing by
                                  the classifier, prompt compression)
6. pick a backend, send, retry   (scheduler: the route's policy, load and prefix aware;
                                  failover + pool: breaker, slots and queue, timeouts,
                                  retries before the first byte, the fallback chain)
7. relay                         (bytes passed through; a broken stream ends with an error event)
8. account                       (accounting + sse: usage, cost, one record to the writer)

Nothing here awaits the database: the record goes to a buffered writer.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from proxy import replay, sse
from proxy.accounting import CallLog
from proxy.auth import key_authenticate, route_permit
from proxy.cache import ENDPOINTS as CACHE_ENDPOINTS
from proxy.cache import CachePlan, cache_lookup, cache_plan, cache_store, cacheable_answer
from proxy.downroute import compression_apply, downroute_apply
from proxy.endpoints import Endpoint
from proxy.errors import ApiError, error_body, internal_error
from proxy.failover import Opened, upstream_open
from proxy.ratelimit import limits_settle, limits_take, tokens_estimate
from proxy.routing import route_resolve
from proxy.scheduler import hint_build
from proxy.schemas import body_parse, body_read, wants_stream, wants_usage_chunk
from proxy.semantic import SemanticHit, semantic_lookup, semantic_store
from proxy.snapshot import RouteInfo, Snapshot, snapshot_current
from proxy.upstream import body_drain

logger = logging.getLogger("sluice.proxy")

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def proxy_handle(request: HttpRequest, *, endpoint: Endpoint) -> HttpResponseBase:
    """Serve one POST to a proxied endpoint (chat, completions, embeddings, responses, ...)."""
    log = CallLog(endpoint=endpoint.name)
    snapshot = snapshot_current()
    try:
        log.key = key_authenticate(request.headers.get("Authorization"), snapshot)
        body = body_parse(body_read(request), endpoint=endpoint)
        log.requested_model = body["model"]
        log.stream = wants_stream(body, endpoint)
        route = log.route = route_resolve(body["model"], snapshot)
        route_permit(log.key, route)
        log.grant = await limits_take(  # a cached answer still counts against the key's RPM
            log.key, route, tokens=tokens_estimate(body, endpoint=endpoint.name)
        )
        # 5. Cost steps. Caches first: exact, then semantic. A route with neither pays one
        # attribute test here, and its record says cache="bypass".
        caching = None
        if route.cache_exact or route.cache_semantic:
            caching = cache_plan(route, body, endpoint=endpoint.name,
                                 cache_control=request.headers.get("Cache-Control"))
            if caching is not None:
                cached = await _cache_lookup(caching, log, body, endpoint)
                if cached is not None:
                    return _cached_serve(cached, log, body, snapshot)
        # Steps from here on must not change `body` in place: on a miss the caches store the
        # answer under the request as the app sent it (`caching`, and `body` for semantic).
        # 5b. Small-model routing: the classifier may point `log.route` at the small model.
        downroute_apply(log, body, endpoint=endpoint, headers=request.headers,
                        snapshot=snapshot)
        # 5c. Prompt compression: what is sent may be shorter than what the app sent.
        sent = compression_apply(log, body, endpoint=endpoint)
        # 6. The backend: the route's policy weighs load, prefix and session (what is sent is
        # what the backend will have in its prefix cache).
        hint = hint_build(log.route, sent, endpoint=endpoint.name, headers=request.headers)
        opened = await upstream_open(log, snapshot, endpoint, sent, hint)
    except ApiError as exc:
        log.fail(exc.status, exc.code or exc.type)
        log.finish(snapshot)
        return _tagged(exc.response(), log)
    except asyncio.CancelledError:  # the app hung up before the backend answered
        log.fail(499, "client_closed")
        log.finish(snapshot)
        raise
    except Exception:  # a bug of ours: still an OpenAI-shaped answer, and still a record
        logger.exception("request %s failed inside Sluice", log.request_id)
        log.fail(500, "internal_error")
        log.finish(snapshot)
        return _tagged(internal_error().response(), log)

    upstream = opened.response
    if upstream.status == 200 and log.stream:
        relay = _stream_relay(
            opened, log, snapshot,
            strip_usage_chunk=endpoint.usage_chunk and not wants_usage_chunk(body),
            keep=(_Keep(caching, body, endpoint, route)
                  if caching is not None and caching.store else None),
        )
        weakref.finalize(relay, _stream_dropped, upstream, log, snapshot)
        response = RelayResponse(relay, content_type="text/event-stream")
        for name, value in STREAM_HEADERS.items():
            response[name] = value
        return _tagged(response, log)
    try:
        async with asyncio.timeout(max(0.0, opened.deadline - time.monotonic())):
            if upstream.status != 200:
                response = await _upstream_error_relay(upstream, log)
            else:
                response = await _body_relay(upstream, log)
                if caching is not None and caching.store:
                    _Keep(caching, body, endpoint, route).answer(log, response.content)
    except TimeoutError:
        upstream.close()
        log.fail(504, "upstream_timeout")
        response = ApiError(504, f"Backend {log.backend} did not finish within the route's "
                                 "total timeout.", type="upstream_error",
                            code="upstream_timeout").response()
    except asyncio.CancelledError:
        upstream.close()
        log.fail(499, "client_closed")
        raise
    finally:
        log.finish(snapshot)
    return _tagged(response, log)


class RelayResponse(StreamingHttpResponse):
    """A stream of bytes the relay makes whole: the ASGI layer sends `relay`'s parts as they
    are (config.asgi_direct), without Django's two wrapping generators per part."""

    def __init__(self, relay: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(relay, **kwargs)
        self.relay = relay


async def _body_relay(upstream: aiohttp.ClientResponse, log: CallLog) -> HttpResponse:
    """A non-streamed answer: read it whole, take its usage, return its bytes untouched."""
    try:
        payload = await upstream.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        upstream.close()
        log.fail(502, "upstream_error")
        body = error_body(f"Backend {log.backend} failed mid-answer: {exc!r}.",
                          type="upstream_error", code="upstream_error")
        return HttpResponse(body, status=502, content_type="application/json")
    upstream.release()
    sse.body_usage_read(payload, log)
    return HttpResponse(payload, status=200, content_type="application/json")


async def _upstream_error_relay(upstream: aiohttp.ClientResponse, log: CallLog) -> HttpResponse:
    """The backend refused: pass its status on, in OpenAI's error shape."""
    payload = await body_drain(upstream)
    shaped, error_type = sse.error_normalise(payload, status=upstream.status)
    log.fail(upstream.status, error_type)
    return HttpResponse(shaped, status=upstream.status, content_type="application/json")


async def _stream_relay(
    opened: Opened,
    log: CallLog,
    snapshot: Snapshot,
    *,
    strip_usage_chunk: bool,
    keep: _Keep | None,
) -> AsyncIterator[bytes]:
    """Forward whole SSE events as they arrive (starting with those read ahead while the
    attempt could still be retried), read usage on the way, and close the books however the
    stream ends: done, broken upstream, or the client hanging up. With `keep` (a caching
    route), the backend's bytes are also kept aside, to be cached once the stream is over."""
    upstream = opened.response
    pending = opened.first
    raw, room = None, 0
    if keep is not None:  # SSE framing is ~2-4x the answer's JSON
        raw, room = [pending], settings.SLUICE_CACHE_MAX_ENTRY_BYTES * 4
    # The route's total timeout: one timer per stream (not a clock read per chunk) that cuts
    # the upstream connection, which the read below then reports.
    expired = []

    def expire() -> None:
        expired.append(True)
        upstream.close()

    expiry = asyncio.get_running_loop().call_later(
        max(0.0, opened.deadline - time.monotonic()), expire)
    done = False  # [DONE] went out: the app has the whole answer
    try:
        while True:
            cut = pending.rfind(sse.EVENT_END)
            if cut >= 0:
                block, pending = pending[: cut + 2], pending[cut + 2 :]
                out = sse.events_scan(block, log, strip_usage_chunk=strip_usage_chunk)
                if raw is not None and sse.DONE in block:
                    # The answer is complete: hand it over before the app gets [DONE], as an
                    # app that hangs up at [DONE] may cancel this generator at any later point.
                    keep.stream(log, raw)
                    raw = None
                if out:
                    log.first_token()
                    if not done and sse.DONE in block:
                        # Recorded (in the journal) before the app has the whole answer, so a
                        # process killed at any later moment loses no answered call.
                        done = True
                        log.finish(snapshot)
                    yield out
            chunk = await upstream.content.readany()
            if not chunk:
                break
            pending += chunk
            if raw is not None:
                raw.append(chunk)
                room -= len(chunk)
                if room < 0:  # too long to cache: stop keeping it
                    raw = None
        if pending.strip():
            yield pending
        upstream.release()
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.fail(502, "upstream_stream_error")
        why = "the route's total timeout expired" if expired else repr(exc)
        yield sse.error_event(f"Backend {log.backend} failed mid-stream: {why}.")
    except (asyncio.CancelledError, GeneratorExit):
        # An app leaving after the backend's error event is still a 502; one leaving after
        # [DONE] (while the backend closes its end) got its whole answer.
        if not log.error_type and not done:
            log.fail(499, "client_closed")
        raise
    finally:
        expiry.cancel()
        upstream.close()  # a no-op once released; otherwise it cancels the upstream request
        log.finish(snapshot)


async def _cache_lookup(plan: CachePlan, log: CallLog, body: dict[str, Any],
                        endpoint: Endpoint) -> dict[str, Any] | None:
    """The exact cache, then the semantic one: a stored answer (parsed), or None. Sets
    `log.cache` to what happened."""
    if not plan.lookup:  # Cache-Control: no-cache: answer afresh (and store it)
        return None
    log.cache = "miss"
    if plan.key is not None:
        stored = await cache_lookup(plan.key)
        answer = replay.answer_parse(stored) if stored is not None else None
        if answer is not None:
            log.cache = "exact"
            return answer
    if plan.semantic:
        try:
            found = await semantic_lookup(log.route, body, endpoint=endpoint.name)
        except Exception:  # it promises not to raise; a cache must never fail a request anyway
            logger.exception("request %s: the semantic lookup failed", log.request_id)
            return None
        if isinstance(found, SemanticHit):
            answer = replay.answer_parse(found.answer)
            if answer is not None:
                log.cache = "semantic"
                if plan.key is not None and plan.store:
                    # The same words again next time: an exact hit, without the embedder.
                    cache_store(plan.key, found.answer, ttl_s=log.route.cache_ttl_s)
                return answer
        else:
            log.cache = found  # "miss", or "skipped" when the embedder could not look
    return None


def _cached_serve(answer: dict[str, Any], log: CallLog, body: dict[str, Any],
                  snapshot: Snapshot) -> HttpResponse:
    """A cached answer in the shape asked for. No backend, no backend tokens; the record
    keeps the tokens the answer would have cost (pricing zeroes its cost by `log.cache`)."""
    log.served_model = log.route.model
    log.usage_take(answer.get("usage"))
    limits_settle(log.grant, tokens=0)  # TPM guards the pool's capacity: a hit used none
    if log.stream:
        payload = replay.stream_replay(answer, include_usage=wants_usage_chunk(body))
        response = HttpResponse(payload, content_type="text/event-stream")
        for name, value in STREAM_HEADERS.items():
            response[name] = value
        log.first_token()
    else:
        response = HttpResponse(replay.body_replay(answer), content_type="application/json")
    log.finish(snapshot)
    return _tagged(response, log)


_keeping: set[asyncio.Task] = set()  # streamed answers being assembled for the caches


class _Keep:
    """Stores a miss's answer in the caches that apply, if it is complete and successful (a
    200 with every choice finished, no error event, served by the route's own model: a
    fallback's answer is not the route's). Never fails the call."""

    __slots__ = ("plan", "body", "endpoint", "route")

    def __init__(self, plan: CachePlan, body: dict[str, Any], endpoint: Endpoint,
                 route: RouteInfo) -> None:
        # `route` as the lookup saw it: small-model routing may have pointed the call's own
        # at another model since, and the entry must be found by the next lookup.
        self.plan, self.body, self.endpoint, self.route = plan, body, endpoint, route

    def stream(self, log: CallLog, raw: list[bytes]) -> None:
        """A streamed answer is assembled into the stored form in a task of its own, in
        slices: off the stream's path, and never a long stall for the other streams."""
        if self._worth_keeping(log):  # judged now: the app may hang up once it has [DONE]
            task = asyncio.get_running_loop().create_task(self._assemble(log, b"".join(raw)))
            _keeping.add(task)
            task.add_done_callback(_keeping.discard)

    async def _assemble(self, log: CallLog, raw: bytes) -> None:
        try:
            assembled = await replay.stream_assemble_sliced(raw)
        except Exception:  # a bug of ours: no entry, and say so
            logger.exception("request %s: assembling its answer failed", log.request_id)
            return
        if assembled is not None:
            self._store(log, assembled)

    def answer(self, log: CallLog, answer: bytes) -> None:
        if self._worth_keeping(log):
            self._store(log, answer)

    @staticmethod
    def _worth_keeping(log: CallLog) -> bool:
        return log.status_code == 200 and not log.error_type and not log.fallback_used

    def _store(self, log: CallLog, answer: bytes) -> None:
        try:
            if cacheable_answer(answer) is None:
                return
            route = self.route
            if self.plan.key is not None:
                cache_store(self.plan.key, answer, ttl_s=route.cache_ttl_s)
            if self.plan.semantic:
                semantic_store(route, self.body, endpoint=self.endpoint.name, answer=answer)
        except Exception:  # a cache that fails must not fail a call already served
            logger.exception("request %s: storing its answer failed", log.request_id)


def _stream_dropped(upstream: aiohttp.ClientResponse, log: CallLog, snapshot: Snapshot) -> None:
    """A client gone before Django starts sending leaves the relay never started, so its
    `finally` never runs: close the books here instead (a no-op for any relay that ran)."""
    if not log.finished:
        upstream.close()
        log.fail(499, "client_closed")
        log.finish(snapshot)


def _tagged(response: HttpResponseBase, log: CallLog) -> HttpResponseBase:
    response["x-request-id"] = log.request_id
    if log.route is not None:
        response["x-sluice-route"] = log.route.name
        if log.endpoint in CACHE_ENDPOINTS:
            response["x-sluice-cache"] = log.cache
    if log.backend:
        response["x-sluice-backend"] = log.backend
        response["x-sluice-backend-reason"] = log.backend_reason
    if log.retries:
        response["x-sluice-retries"] = str(log.retries)
    if log.fallback_used:
        response["x-sluice-fallback"] = log.served_model
    if log.decision:
        score = "" if log.decision_score is None else f"; score={log.decision_score:.3f}"
        response["x-sluice-decision"] = log.decision + score
    if log.grant is not None:
        for name, value in log.grant.headers.items():
            response[name] = value
    return response
