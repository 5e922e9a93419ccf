"""Reading the request body, and the body forwarded upstream.

The field checks of each endpoint live in `proxy.validation`; every field they do not know
passes through untouched so that vLLM's own parameters (top_k, guided_json, ...) keep working.
"""
from __future__ import annotations

from typing import Any

import orjson
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from proxy.endpoints import Endpoint
from proxy.errors import ApiError, invalid
from proxy.validation import body_check


def body_read(request: HttpRequest) -> bytes:
    try:
        return request.body
    except RequestDataTooBig:
        raise ApiError(
            413, "The request body is larger than this gateway accepts (SLUICE_MAX_REQUEST_BYTES).",
            code="request_too_large",
        ) from None


def body_parse(raw: bytes, *, endpoint: Endpoint) -> dict[str, Any]:
    """Parse and check a request body; raise an OpenAI-shaped 400 on anything Sluice can't use."""
    if not raw:
        raise invalid("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("You must provide a model parameter.", param="model")
    body_check(body, endpoint=endpoint.name)
    return body


def wants_stream(body: dict[str, Any], endpoint: Endpoint) -> bool:
    return endpoint.streams and body.get("stream") is True


def wants_usage_chunk(body: dict[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    return bool(options.get("include_usage"))


def upstream_body(body: dict[str, Any], *, served_model: str, endpoint: Endpoint) -> bytes:
    """The body sent to the backend: the served model's name, and (when streaming chat or
    completions) the usage chunk always requested, so that every call's tokens are counted."""
    out = dict(body)
    out["model"] = served_model
    if endpoint.usage_chunk and body.get("stream") is True:
        out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return orjson.dumps(out)
