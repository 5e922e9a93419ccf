"""/v1/files and /v1/batches: thin async views over batch.services.

They run on the middleware-less /v1 handler (config/asgi.py), authenticate with the proxy's
API keys from the in-memory snapshot, and answer errors in OpenAI's shape.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from batch import services
from proxy.auth import key_authenticate
from proxy.errors import ApiError, invalid
from proxy.snapshot import KeyInfo, snapshot_current

Handler = Callable[..., Awaitable[HttpResponse]]


def _json(payload: dict[str, Any]) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload), content_type="application/json")


def api_view(**handlers: Handler) -> Callable[..., Awaitable[HttpResponse]]:
    """One URL, a handler per method (`get=`, `post=`, `delete=`): each gets the request, the
    caller's key and the URL's arguments; an ApiError becomes its OpenAI-shaped answer."""
    allowed = ", ".join(sorted(m.upper() for m in handlers))

    @csrf_exempt
    async def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        handler = handlers.get(request.method.lower())
        try:
            if handler is None:
                error = ApiError(405, f"Method {request.method} is not allowed here; use "
                                      f"{allowed}.", code="method_not_allowed")
                error.headers["Allow"] = allowed
                raise error
            key = key_authenticate(request.headers.get("Authorization"), snapshot_current())
            return await handler(request, key, **kwargs)
        except ApiError as exc:
            return exc.response()

    return view


def _run(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """A service call off the event loop (the ORM is synchronous)."""
    return sync_to_async(func, thread_sensitive=True)


def _limit(request: HttpRequest, default: int) -> int:
    raw = request.GET.get("limit")
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid("limit must be an integer.", param="limit") from None


# --- files ----------------------------------------------------------------------------------
def _upload(request: HttpRequest, key: KeyInfo) -> dict[str, Any]:
    upload = request.FILES.get("file")
    if upload is None:
        raise invalid("Send the file as multipart/form-data field 'file'.", param="file")
    if upload.size > settings.SLUICE_BATCH_MAX_FILE_BYTES:  # before reading it
        raise ApiError(413, "The file is larger than SLUICE_BATCH_MAX_FILE_BYTES.",
                       param="file", code="file_too_large")
    file = services.file_create(key=key, filename=upload.name or "", content=upload.read(),
                                purpose=request.POST.get("purpose", ""))
    return services.file_object(file)


async def _files_create(request: HttpRequest, key: KeyInfo) -> HttpResponse:
    return _json(await _run(_upload)(request, key))


async def _files_list(request: HttpRequest, key: KeyInfo) -> HttpResponse:
    page = await _run(services.file_list)(
        key=key, purpose=request.GET.get("purpose"), limit=_limit(request, 10_000),
        after=request.GET.get("after"), order=request.GET.get("order", "desc"))
    return _json(page)


async def _file_retrieve(request: HttpRequest, key: KeyInfo, file_id: str) -> HttpResponse:
    file = await _run(services.file_get)(key=key, file_id=file_id)
    return _json(services.file_object(file))


async def _file_delete(request: HttpRequest, key: KeyInfo, file_id: str) -> HttpResponse:
    return _json(await _run(services.file_delete)(key=key, file_id=file_id))


async def _file_content(request: HttpRequest, key: KeyInfo, file_id: str) -> HttpResponse:
    file = await _run(services.file_get)(key=key, file_id=file_id, with_content=True)
    return HttpResponse(bytes(file.content), content_type="application/octet-stream")


files = api_view(get=_files_list, post=_files_create)
file_detail = api_view(get=_file_retrieve, delete=_file_delete)
file_content = api_view(get=_file_content)


# --- batches --------------------------------------------------------------------------------
async def _batches_create(request: HttpRequest, key: KeyInfo) -> HttpResponse:
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    batch = await _run(services.batch_create)(key=key, body=body)
    return _json(services.batch_object(batch))


async def _batches_list(request: HttpRequest, key: KeyInfo) -> HttpResponse:
    page = await _run(services.batch_list)(key=key, limit=_limit(request, 20),
                                           after=request.GET.get("after"))
    return _json(page)


async def _batch_retrieve(request: HttpRequest, key: KeyInfo, batch_id: str) -> HttpResponse:
    batch = await _run(services.batch_get)(key=key, batch_id=batch_id)
    return _json(services.batch_object(batch))


async def _batch_cancel(request: HttpRequest, key: KeyInfo, batch_id: str) -> HttpResponse:
    batch = await _run(services.batch_cancel)(key=key, batch_id=batch_id)
    return _json(services.batch_object(batch))


batches = api_view(get=_batches_list, post=_batches_create)
batch_detail = api_view(get=_batch_retrieve)
batch_cancel = api_view(post=_batch_cancel)
