"""Running a batch: every line through Sluice's own request path, in the worker process.

Each line becomes a Django request handed to `proxy.pipeline.proxy_handle`, so a batch call is
authenticated, rate limited, routed, cached, retried and logged and priced exactly like an
app's call (its `Call.endpoint` then says `batch:<endpoint>`). A few lines are in flight at
once (SLUICE_BATCH_CONCURRENCY), and only while the pool has room: before each one the
backends of the batch's model are asked for vLLM's `num_requests_waiting`, and while any of
them has requests waiting the batch waits (SLUICE_BATCH_BACKOFF_S between looks), so offline
work fills idle capacity and never queues in front of interactive traffic.
"""
from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import transaction
from django.test import RequestFactory
from django.utils import timezone

from analytics.models import Call
from analytics.recorder import recorder
from batch.models import Batch, File
from batch.services import Status, file_save, lines_parse
from proxy import endpoints
from proxy.auth import MASTER
from proxy.cache import cache_close
from proxy.endpoints import Endpoint
from proxy.models import key_hash
from proxy.pipeline import proxy_handle
from proxy.ratelimit import limits_close
from proxy.routing import route_resolve
from proxy.snapshot import (
    BackendInfo,
    KeyInfo,
    Snapshot,
    snapshot_key_accept,
    snapshot_key_forget,
    snapshot_reload,
)
from proxy.upstream import session_close, session_get

logger = logging.getLogger("sluice.batch")

ENDPOINTS = {"/v1/chat/completions": endpoints.CHAT, "/v1/completions": endpoints.COMPLETIONS,
             "/v1/embeddings": endpoints.EMBEDDINGS}
# Answers that say "not now" rather than "no": the line is tried again after a pause.
RETRY_STATUSES = frozenset({429, 503})
RETRY_ATTEMPTS = 4
CHECKPOINT_S = 1.0  # how often progress is saved and a cancel looked for
# One sample of the gauge: its exact name, any labels, the value.
_WAITING = re.compile(r"^vllm:num_requests_waiting(?:\{[^}]*\})?[ \t]+(\S+)", re.MULTILINE)
LOAD_TTL_S = 0.2  # a scrape of the pool's load serves the lines dispatched within this long
# Django's own request builder: the pipeline reads only the method, headers and body.
_factory = RequestFactory()


# --- the pool's load ------------------------------------------------------------------------
def waiting_parse(text: str) -> float | None:
    """vLLM's `vllm:num_requests_waiting` from a /metrics page (summed over its label sets),
    or None when the page has no such sample."""
    values = []
    for match in _WAITING.finditer(text):
        try:
            values.append(float(match.group(1)))
        except ValueError:
            continue
    return sum(values) if values else None


def backoff_needed(waiting: Iterable[float | None]) -> bool:
    """Wait while any backend of the model has requests queued. A backend whose load is
    unknown (its /metrics did not answer) does not hold the batch back: its breaker and
    health probe deal with it, and the request path would route around it."""
    return any(w is not None and w > 0 for w in waiting)


class LoadGauge:
    """Scrapes the model's backends at most every LOAD_TTL_S, all at once."""

    def __init__(self, backends: Sequence[BackendInfo]) -> None:
        self.backends = backends
        self._at = -LOAD_TTL_S
        self._last: list[float | None] = []

    async def waiting(self) -> list[float | None]:
        if time.monotonic() - self._at >= LOAD_TTL_S:
            self._last = list(await asyncio.gather(*(_scrape(b) for b in self.backends)))
            self._at = time.monotonic()
        return self._last


async def _scrape(backend: BackendInfo) -> float | None:
    try:
        async with session_get().get(f"{backend.base_url}/metrics",
                                     timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
            if resp.status != 200:
                return None
            return waiting_parse((await resp.read()).decode("utf-8", "replace"))
    except (TimeoutError, aiohttp.ClientError):
        return None


# --- one run --------------------------------------------------------------------------------
@dataclass
class Results:
    """Output and error lines by input line number, and what the finished lines used."""

    ok: list[tuple[int, bytes]] = field(default_factory=list)
    failed: list[tuple[int, bytes]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    dispatched: int = 0  # lines sent so far (in input order)
    stopped: str = ""  # why dispatching stopped early: "cancelled" or "expired"


def batch_run(*, batch_id: int) -> str:
    """Claim a queued batch, run its lines, write its output and error files. Returns the
    status it ended in ("" when another worker had it or it was no longer queued)."""
    now = timezone.now()
    if Batch.objects.filter(pk=batch_id, status=Status.CANCELLING, in_progress_at=None).update(
            status=Status.CANCELLED, cancelled_at=now):
        return Status.CANCELLED  # cancelled before any worker took it
    if not Batch.objects.filter(pk=batch_id, status=Status.VALIDATING).update(
            status=Status.IN_PROGRESS, in_progress_at=now, heartbeat_at=now):
        return ""
    batch = Batch.objects.get(pk=batch_id)
    snapshot = snapshot_reload()
    key = _key_info(batch, snapshot)
    if key is None:
        _fail(batch, code="invalid_api_key", message="The batch's API key no longer exists.")
        return Status.FAILED
    content = File.objects.filter(public_id=batch.input_file_id).values_list(
        "content", flat=True).first()
    if content is None:
        _fail(batch, code="file_not_found", message="The input file was deleted.")
        return Status.FAILED
    endpoint = ENDPOINTS[batch.endpoint]
    lines = lines_parse(bytes(content))
    recorder.start()  # idempotent; the worker's call-log writer
    # The key's secret was never stored: this run's lines carry a random token of its own,
    # which this process accepts as the batch's key until the run ends.
    token = "sk-sluice-batch-" + secrets.token_urlsafe(24)
    snapshot_key_accept(key_hash(token), key)
    try:
        results = async_to_sync(lines_run)(batch_id=batch.pk, lines=lines, endpoint=endpoint,
                                           token=token,
                                           backends=_backends(batch.model, snapshot))
    finally:
        snapshot_key_forget(key_hash(token))
    _calls_mark(results.request_ids, endpoint)
    if results.stopped == "expired":
        _expired_lines(lines[results.dispatched:], results)
    return _finish(batch, results)


def _key_info(batch: Batch, snapshot: Snapshot) -> KeyInfo | None:
    if batch.api_key_id is None:
        return MASTER
    return next((k for k in snapshot.keys_by_hash.values() if k.id == batch.api_key_id), None)


def _backends(model: str, snapshot: Snapshot) -> tuple[BackendInfo, ...]:
    try:
        route = route_resolve(model, snapshot)
    except Exception:  # an unknown model: each line will say so in the error file
        return ()
    return snapshot.backends_by_model.get(route.model, ())


async def lines_run(*, batch_id: int, lines: list[tuple[int, dict[str, Any]]],
                    endpoint: Endpoint, token: str,
                    backends: Sequence[BackendInfo]) -> Results:
    """Dispatch the lines in order, at most SLUICE_BATCH_CONCURRENCY at once, each only once
    the pool has room; stop dispatching when the batch is cancelled or expires."""
    results = Results()
    stop = asyncio.Event()
    slots = asyncio.Semaphore(settings.SLUICE_BATCH_CONCURRENCY)
    gauge = LoadGauge(backends)
    running: set[asyncio.Task] = set()
    watcher = asyncio.create_task(_watch(batch_id, results, stop))
    if await sync_to_async(_progress_save)(batch_id, results):  # expired while queued
        stop.set()
    try:
        for number, line in lines:
            await slots.acquire()
            if not await _room_wait(gauge, stop):
                slots.release()
                break
            task = asyncio.create_task(_line_run(number, line, endpoint, token, results))
            results.dispatched += 1
            running.add(task)
            task.add_done_callback(lambda t: (running.discard(t), slots.release()))
        if running:
            await asyncio.gather(*running)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await session_close()
        await limits_close()
        await cache_close()
    return results


async def _room_wait(gauge: LoadGauge, stop: asyncio.Event) -> bool:
    """Wait until no backend of the model has requests waiting; False if cancelled."""
    while not stop.is_set():
        if not backoff_needed(await gauge.waiting()):
            return True
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.SLUICE_BATCH_BACKOFF_S)
        except TimeoutError:
            pass
    return False


async def _watch(batch_id: int, results: Results, stop: asyncio.Event) -> None:
    """Save progress every CHECKPOINT_S; notice a cancel, or the end of the window."""
    save = sync_to_async(_progress_save)
    while True:
        await asyncio.sleep(CHECKPOINT_S)
        if await save(batch_id, results):
            stop.set()
            return


def _progress_save(batch_id: int, results: Results) -> str:
    """Store the counts so far and the worker's heartbeat; say why to stop, if it should."""
    now = timezone.now()
    Batch.objects.filter(pk=batch_id).update(
        request_completed=len(results.ok), request_failed=len(results.failed),
        input_tokens=results.input_tokens, output_tokens=results.output_tokens,
        heartbeat_at=now)
    status, expires_at = Batch.objects.values_list("status", "expires_at").get(pk=batch_id)
    if status == Status.CANCELLING:
        results.stopped = "cancelled"
    elif expires_at is not None and now >= expires_at:
        results.stopped = "expired"
    return results.stopped


async def _line_run(number: int, line: dict[str, Any], endpoint: Endpoint, token: str,
                    results: Results) -> None:
    try:
        await _line_send(number, line, endpoint, token, results)
    except Exception as exc:  # a bug of ours: the line fails, the batch goes on
        logger.exception("batch line %d failed inside Sluice", number)
        results.failed.append((number, orjson.dumps({
            "id": "batch_req_" + secrets.token_hex(12), "custom_id": line["custom_id"],
            "response": None, "error": {"code": "internal_error", "message": repr(exc)},
        }) + b"\n"))


async def _line_send(number: int, line: dict[str, Any], endpoint: Endpoint, token: str,
                     results: Results) -> None:
    raw = orjson.dumps(line["body"])
    for attempt in range(RETRY_ATTEMPTS + 1):
        request = _factory.post(endpoint.upstream_path, data=raw,
                                content_type="application/json",
                                HTTP_AUTHORIZATION=f"Bearer {token}")
        response = await proxy_handle(request, endpoint=endpoint)
        request_id = response.get("x-request-id", "")
        results.request_ids.append(request_id)
        if response.status_code not in RETRY_STATUSES or attempt == RETRY_ATTEMPTS:
            break
        await asyncio.sleep(min(settings.SLUICE_BATCH_BACKOFF_S * 2**attempt, 30.0))
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = {"error": {"message": response.content.decode("utf-8", "replace")}}
    out = orjson.dumps({
        "id": "batch_req_" + secrets.token_hex(12),
        "custom_id": line["custom_id"],
        "response": {"status_code": response.status_code, "request_id": request_id,
                     "body": body},
        "error": None,
    }) + b"\n"
    if response.status_code == 200:
        results.ok.append((number, out))
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):
            results.input_tokens += _int(usage.get("prompt_tokens"))
            results.output_tokens += _int(usage.get("completion_tokens"))
    else:
        results.failed.append((number, out))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _calls_mark(request_ids: list[str], endpoint: Endpoint) -> None:
    """Write the worker's call log now and tag the batch's calls, so that they can be told
    apart from interactive ones (priced and counted like them otherwise)."""
    if not request_ids:
        return
    if not recorder.flush():
        logger.warning("call log not written yet; %d batch calls stay untagged",
                       len(request_ids))
    Call.objects.filter(request_id__in=request_ids).update(endpoint=f"batch:{endpoint.name}")


def _finish(batch: Batch, results: Results) -> str:
    """in_progress -> finalizing -> completed, cancelling -> cancelled, or expired; with the
    output and error files. A batch taken from this worker meanwhile (batches_recover thought
    it dead) is left as it is."""
    now = timezone.now()
    if Batch.objects.filter(pk=batch.pk, status=Status.IN_PROGRESS).update(
            status=Status.FINALIZING, finalizing_at=now):
        final, stamp = ((Status.EXPIRED, "expired_at") if results.stopped == "expired"
                        else (Status.COMPLETED, "completed_at"))
        current = Status.FINALIZING
    elif Batch.objects.filter(pk=batch.pk, status=Status.CANCELLING).exists():
        final, stamp, current = Status.CANCELLED, "cancelled_at", Status.CANCELLING
    else:
        logger.warning("batch %s changed hands while it ran; its results are dropped",
                       batch.public_id)
        return ""
    with transaction.atomic():
        output = _results_file(batch, results.ok, "output")
        errors = _results_file(batch, results.failed, "error")
        Batch.objects.filter(pk=batch.pk, status=current).update(
            status=final, output_file_id=output, error_file_id=errors,
            request_completed=len(results.ok), request_failed=len(results.failed),
            input_tokens=results.input_tokens, output_tokens=results.output_tokens,
            heartbeat_at=None, **{stamp: timezone.now()})
    logger.info("batch %s %s: %d ok, %d failed", batch.public_id, final, len(results.ok),
                len(results.failed))
    return final


def _expired_lines(lines: list[tuple[int, dict[str, Any]]], results: Results) -> None:
    """Lines never sent before the window closed: error lines, as OpenAI writes them."""
    for number, line in lines:
        results.failed.append((number, orjson.dumps({
            "id": "batch_req_" + secrets.token_hex(12), "custom_id": line["custom_id"],
            "response": None,
            "error": {"code": "batch_expired",
                      "message": "This request could not be executed before the completion "
                                 "window expired."},
        }) + b"\n"))


def _results_file(batch: Batch, rows: list[tuple[int, bytes]], kind: str) -> str:
    if not rows:
        return ""
    content = b"".join(out for _, out in sorted(rows))
    return file_save(key_id=batch.api_key_id, filename=f"{batch.public_id}_{kind}.jsonl",
                      purpose="batch_output", content=content).public_id


def _fail(batch: Batch, *, code: str, message: str) -> None:
    Batch.objects.filter(pk=batch.pk).update(
        status=Status.FAILED, failed_at=timezone.now(),
        errors=[{"code": code, "message": message, "param": None, "line": None}])
