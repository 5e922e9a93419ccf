"""The OpenAI-compatible endpoints: thin async views over the pipeline."""
from __future__ import annotations

import time

import orjson
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from proxy import endpoints
from proxy.auth import key_authenticate
from proxy.endpoints import Endpoint
from proxy.errors import ApiError
from proxy.pipeline import proxy_handle
from proxy.routing import models_listed
from proxy.snapshot import snapshot_current

_STARTED = int(time.time())


def _method_not_allowed(request: HttpRequest, allowed: str) -> HttpResponse:
    error = ApiError(405, f"Method {request.method} is not allowed here; use {allowed}.",
                     code="method_not_allowed")
    response = error.response()
    response["Allow"] = allowed
    return response


def proxied(endpoint: Endpoint):
    """The view of one proxied endpoint: POST only, through the whole request path."""

    @csrf_exempt
    async def view(request: HttpRequest) -> HttpResponseBase:
        if request.method != "POST":
            return _method_not_allowed(request, "POST")
        return await proxy_handle(request, endpoint=endpoint)

    view.__name__ = endpoint.name.replace("/", "_")
    return view


chat_completions = proxied(endpoints.CHAT)
completions = proxied(endpoints.COMPLETIONS)
embeddings = proxied(endpoints.EMBEDDINGS)
rerank = proxied(endpoints.RERANK)
score = proxied(endpoints.SCORE)
tokenize = proxied(endpoints.TOKENIZE)
detokenize = proxied(endpoints.DETOKENIZE)
responses = proxied(endpoints.RESPONSES)


async def models(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return _method_not_allowed(request, "GET")
    snapshot = snapshot_current()
    try:
        key = key_authenticate(request.headers.get("Authorization"), snapshot)
    except ApiError as exc:
        return exc.response()
    data = [
        {"id": name, "object": "model", "created": _STARTED, "owned_by": "sluice"}
        for name in models_listed(snapshot)
        if key.routes is None or name in key.routes
    ]
    return HttpResponse(orjson.dumps({"object": "list", "data": data}),
                        content_type="application/json")


@csrf_exempt
async def not_found(request: HttpRequest, path: str) -> HttpResponse:
    """Unknown /v1 paths answer in OpenAI's shape too, not with Django's HTML page."""
    return ApiError(404, f"Unknown path /v1/{path}.", code="unknown_url").response()
