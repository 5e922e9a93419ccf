"""The OpenAI-compatible endpoints: thin async views over the pipeline."""
from __future__ import annotations

import time

import orjson
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from proxy.auth import key_authenticate
from proxy.errors import ApiError
from proxy.pipeline import completion_handle
from proxy.routing import models_listed
from proxy.schemas import CHAT, COMPLETIONS
from proxy.snapshot import snapshot_current

_STARTED = int(time.time())


def _method_not_allowed(request: HttpRequest, allowed: str) -> HttpResponse:
    error = ApiError(405, f"Method {request.method} is not allowed here; use {allowed}.",
                     code="method_not_allowed")
    response = error.response()
    response["Allow"] = allowed
    return response


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    return await completion_handle(request, endpoint=CHAT)


@csrf_exempt
async def completions(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return _method_not_allowed(request, "POST")
    return await completion_handle(request, endpoint=COMPLETIONS)


async def models(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    snapshot = snapshot_current()
    try:
        key_authenticate(request.headers.get("Authorization"), snapshot)
    except ApiError as exc:
        return exc.response()
    data = [
        {"id": name, "object": "model", "created": _STARTED, "owned_by": "sluice"}
        for name in models_listed(snapshot)
    ]
    return HttpResponse(orjson.dumps({"object": "list", "data": data}),
                        content_type="application/json")


@csrf_exempt
async def not_found(request: HttpRequest, path: str) -> HttpResponse:
    """Unknown /v1 paths answer in OpenAI's shape too, not with Django's HTML page."""
    return ApiError(404, f"Unknown path /v1/{path}.", code="unknown_url").response()
