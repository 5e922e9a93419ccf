"""Files and batches: create, read, cancel, and the objects in OpenAI's exact shapes.

Every function takes the caller's key (`KeyInfo`); a key sees only its own files and batches
(the master key, id None, sees those made with the master key). Unknown or foreign ids are
404s, bad input OpenAI-shaped 400s (`proxy.errors.ApiError`).
"""
from __future__ import annotations

import functools
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from batch.models import Batch, File
from proxy.errors import ApiError, invalid
from proxy.snapshot import KeyInfo

# The endpoints a batch may target, as OpenAI names them.
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
COMPLETION_WINDOW = "24h"
# A running batch's worker saves its progress every second; this long without it means dead.
STALE_S = 300.0
MAX_ERRORS = 1000  # a file of bad lines lists this many of them
logger = logging.getLogger("sluice.batch")
Status = Batch.Status
ACTIVE = (Status.VALIDATING, Status.IN_PROGRESS)


def _ts(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def not_found(kind: str, public_id: str) -> ApiError:
    return ApiError(404, f"No such {kind}: '{public_id}'.", param="id", code="not_found")


# --- files ----------------------------------------------------------------------------------
def file_object(file: File) -> dict[str, Any]:
    return {
        "id": file.public_id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": _ts(file.created_at),
        "expires_at": None,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
    }


def file_create(*, key: KeyInfo, filename: str, purpose: str, content: bytes) -> File:
    """Store an upload. Only purpose "batch" is taken, and only a JSONL of objects."""
    if purpose != "batch":
        raise invalid(f"Sluice accepts files for purpose 'batch' only, not {purpose!r}.",
                      param="purpose")
    if len(content) > settings.SLUICE_BATCH_MAX_FILE_BYTES:
        raise ApiError(413, f"The file is larger than {settings.SLUICE_BATCH_MAX_FILE_BYTES} "
                            "bytes (SLUICE_BATCH_MAX_FILE_BYTES).", param="file",
                       code="file_too_large")
    lines_parse(content)  # raises a 400 naming the first bad line
    return file_save(key_id=key.id, filename=filename or "upload.jsonl", purpose=purpose,
                      content=content)


def file_save(*, key_id: int | None, filename: str, purpose: str, content: bytes) -> File:
    return File.objects.create(public_id=_new_id("file-"), api_key_id=key_id, filename=filename,
                               purpose=purpose, bytes=len(content), content=content)


def lines_parse(content: bytes) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line; a 400 if one is not a JSON object."""
    out = []
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            line = None
        if not isinstance(line, dict):
            raise invalid(f"Line {number} of the file is not a JSON object.", param="file",
                          code="invalid_json_line")
        out.append((number, line))
    if not out:
        raise invalid("The file has no requests.", param="file", code="empty_file")
    return out


def file_get(*, key: KeyInfo, file_id: str, with_content: bool = False) -> File:
    files = File.objects.all() if with_content else File.objects.defer("content")
    file = files.filter(public_id=file_id, api_key_id=key.id).first()
    if file is None:
        raise not_found("file", file_id)
    return file


def file_list(*, key: KeyInfo, purpose: str | None, limit: int, after: str | None,
              order: str = "desc") -> dict[str, Any]:
    files = File.objects.defer("content").filter(api_key_id=key.id)
    if purpose:
        files = files.filter(purpose=purpose)
    return _page(files, after=after, limit=limit, order=order, render=file_object, kind="file")


def file_delete(*, key: KeyInfo, file_id: str) -> dict[str, Any]:
    file = file_get(key=key, file_id=file_id)
    file.delete()
    return {"id": file_id, "object": "file", "deleted": True}


# --- batches --------------------------------------------------------------------------------
def batch_object(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.public_id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model or None,
        "errors": ({"object": "list", "data": batch.errors} if batch.errors else None),
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id or None,
        "error_file_id": batch.error_file_id or None,
        "created_at": _ts(batch.created_at),
        "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(batch.expires_at),
        "finalizing_at": _ts(batch.finalizing_at),
        "completed_at": _ts(batch.completed_at),
        "failed_at": _ts(batch.failed_at),
        "expired_at": _ts(batch.expired_at),
        "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.cancelled_at),
        "request_counts": {"total": batch.request_total, "completed": batch.request_completed,
                           "failed": batch.request_failed},
        "usage": {
            "input_tokens": batch.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": batch.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": batch.input_tokens + batch.output_tokens,
        },
        "metadata": batch.metadata,
    }


def batch_create(*, key: KeyInfo, body: dict[str, Any]) -> Batch:
    """Check the request and every line of its file now, as OpenAI does: a file with bad
    lines makes a batch that is `failed` at once, its `errors` naming each line. A good one
    is `validating` until a worker takes it."""
    endpoint, window = body.get("endpoint"), body.get("completion_window")
    if endpoint not in ENDPOINTS:
        raise invalid(f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    if window != COMPLETION_WINDOW:
        raise invalid("completion_window must be '24h'.", param="completion_window")
    metadata = _metadata_check(body.get("metadata"))
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise invalid("input_file_id is required.", param="input_file_id")
    file = file_get(key=key, file_id=file_id, with_content=True)
    if file.purpose != "batch":
        raise invalid(f"File {file_id} was not uploaded for purpose 'batch'.",
                      param="input_file_id")
    lines = lines_parse(bytes(file.content))
    errors, model = lines_check(lines, endpoint=endpoint)
    now = timezone.now()
    batch = Batch(public_id=_new_id("batch_"), api_key_id=key.id, api_key_name=key.name,
                  endpoint=endpoint, completion_window=window, input_file_id=file_id,
                  model=model, metadata=metadata, request_total=len(lines), created_at=now,
                  expires_at=now + timedelta(hours=24))
    if errors:
        batch.status, batch.errors, batch.failed_at = Status.FAILED, errors[:MAX_ERRORS], now
        batch.request_total = 0
        batch.save()
        return batch
    batch.save()  # committed (no ATOMIC_REQUESTS): the worker can read it once queued
    try:
        batch_enqueue(batch_id=batch.id)
    except Exception as exc:  # the broker is down: say so now rather than never run it
        logger.error("batch %s could not be queued: %s", batch.public_id, exc)
        batch.status, batch.failed_at = Status.FAILED, timezone.now()
        batch.errors = [{"code": "queue_unavailable", "message": "The batch could not be "
                         "queued; try again later.", "param": None, "line": None}]
        batch.save(update_fields=["status", "failed_at", "errors"])
    return batch


def batch_enqueue(*, batch_id: int) -> None:
    from batch.tasks import batch_run

    batch_run.apply_async(args=[batch_id], queue=settings.SLUICE_BATCH_QUEUE)


def lines_check(lines: list[tuple[int, dict[str, Any]]], *,
                endpoint: str) -> tuple[list[dict[str, Any]], str]:
    """Every problem of every line (OpenAI's `BatchError` shape), and the batch's model."""
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()

    def error(line: int, code: str, message: str, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": line})

    for number, line in lines:
        custom_id, body = line.get("custom_id"), line.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            error(number, "missing_required_parameter", "custom_id must be a non-empty string.",
                  "custom_id")
        elif custom_id in seen:
            error(number, "duplicate_custom_id",
                  f"The custom_id {custom_id!r} appears more than once.", "custom_id")
        else:
            seen.add(custom_id)
        if line.get("method") != "POST":
            error(number, "invalid_method", "method must be 'POST'.", "method")
        if line.get("url") != endpoint:
            error(number, "invalid_url", f"url must be the batch's endpoint {endpoint}.", "url")
        if not isinstance(body, dict):
            error(number, "invalid_request", "body must be a JSON object.", "body")
            continue
        if not isinstance(body.get("model"), str) or not body["model"]:
            error(number, "missing_required_parameter", "body.model is required.", "body.model")
        else:
            models.add(body["model"])
        if body.get("stream") is True:
            error(number, "invalid_request", "Streaming is not available in a batch.",
                  "body.stream")
    if len(models) > 1:
        error(lines[0][0], "mismatched_model",
              "Every request of a batch must use the same model.", "body.model")
    return errors, (next(iter(models)) if len(models) == 1 else "")


def _metadata_check(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if (not isinstance(metadata, dict) or len(metadata) > 16
            or not all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str)
                       and len(v) <= 512 for k, v in metadata.items())):
        raise invalid("metadata: at most 16 string pairs (keys <= 64, values <= 512 chars).",
                      param="metadata")
    return metadata


def batch_get(*, key: KeyInfo, batch_id: str) -> Batch:
    batch = Batch.objects.filter(public_id=batch_id, api_key_id=key.id).first()
    if batch is None:
        raise not_found("batch", batch_id)
    return batch


def batch_list(*, key: KeyInfo, limit: int, after: str | None) -> dict[str, Any]:
    batches = Batch.objects.filter(api_key_id=key.id)
    return _page(batches, after=after, limit=limit, order="desc", render=batch_object,
                 kind="batch")


def batch_cancel(*, key: KeyInfo, batch_id: str) -> Batch:
    """validating / in_progress -> cancelling; the worker finishes what is in flight, writes
    what it has and sets `cancelled`. Cancelling a finished batch is a 400, as at OpenAI."""
    batch = batch_get(key=key, batch_id=batch_id)
    now = timezone.now()
    moved = Batch.objects.filter(pk=batch.pk, status__in=ACTIVE).update(
        status=Status.CANCELLING, cancelling_at=now)
    batch.refresh_from_db()
    if not moved and batch.status not in (Status.CANCELLING, Status.CANCELLED):
        raise ApiError(409, f"Batch {batch_id} is {batch.status} and cannot be cancelled.",
                       code="batch_not_cancellable")
    return batch


def batches_recover(*, stale_s: float = STALE_S) -> int:
    """Beat: batches whose worker stopped sending its heartbeat (it died, or was killed) are
    queued again, from the start (a line may then run twice), or expired when past their
    window; those that were being cancelled are cancelled; queued ones past their window
    expire. Returns how many batches it moved."""
    now = timezone.now()
    stale = Q(heartbeat_at__lt=now - timedelta(seconds=stale_s))
    past = Q(expires_at__lte=now)
    running = Batch.objects.filter(stale, status__in=(Status.IN_PROGRESS, Status.FINALIZING))
    moved = running.filter(past).update(status=Status.EXPIRED, expired_at=now, heartbeat_at=None)
    moved += Batch.objects.filter(past, status=Status.VALIDATING).update(
        status=Status.EXPIRED, expired_at=now)
    moved += Batch.objects.filter(stale, status=Status.CANCELLING).update(
        status=Status.CANCELLED, cancelled_at=now, heartbeat_at=None)
    for pk in running.values_list("pk", flat=True):
        if Batch.objects.filter(stale, pk=pk, status__in=(Status.IN_PROGRESS,
                                                          Status.FINALIZING)).update(
                status=Status.VALIDATING, in_progress_at=None, finalizing_at=None,
                heartbeat_at=None):
            logger.warning("batch %s: its worker went quiet; queued again", pk)
            transaction.on_commit(functools.partial(batch_enqueue, batch_id=pk))
            moved += 1
    return moved


# --- pagination -----------------------------------------------------------------------------
def _page(rows, *, after: str | None, limit: int, order: str, render,
          kind: str) -> dict[str, Any]:
    """OpenAI's cursor page: `after` is the last id of the previous page."""
    if not 1 <= limit <= 10_000:
        raise invalid("limit must be between 1 and 10000.", param="limit")
    descending = order != "asc"
    rows = rows.order_by("-pk" if descending else "pk")
    if after:
        cursor = rows.filter(public_id=after).values_list("pk", flat=True).first()
        if cursor is None:
            raise not_found(kind, after)
        rows = rows.filter(pk__lt=cursor) if descending else rows.filter(pk__gt=cursor)
    found = list(rows[: limit + 1])
    data = [render(row) for row in found[:limit]]
    return {"object": "list", "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(found) > limit}
