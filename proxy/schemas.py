"""Validation of the request bodies that apps send, and the body forwarded upstream.

Only what Sluice itself relies on is checked; every other field passes through untouched so
that vLLM's own parameters (top_k, guided_json, ...) keep working.
"""
from __future__ import annotations

from typing import Any

import orjson
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from proxy.errors import ApiError, invalid

CHAT = "chat/completions"
COMPLETIONS = "completions"

_POSITIVE_INTS = ("max_tokens", "max_completion_tokens", "n")


def body_read(request: HttpRequest) -> bytes:
    try:
        return request.body
    except RequestDataTooBig:
        raise ApiError(
            413, "The request body is larger than this gateway accepts (SLUICE_MAX_REQUEST_BYTES).",
            code="request_too_large",
        ) from None


def body_parse(raw: bytes, *, endpoint: str) -> dict[str, Any]:
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
    if endpoint == CHAT:
        _check_messages(body.get("messages"))
    else:
        _check_prompt(body.get("prompt"))
    if "stream" in body and not isinstance(body["stream"], bool):
        raise invalid("`stream` must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("`stream_options` must be an object.", param="stream_options")
    for name in _POSITIVE_INTS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise invalid(f"`{name}` must be a positive integer.", param=name)
    return body


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise invalid("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("`messages` must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise invalid(
                f"`messages[{i}]` must be an object with a string `role`.", param=f"messages[{i}]"
            )


def _check_prompt(prompt: Any) -> None:
    if prompt is None:
        raise invalid("Missing required parameter: 'prompt'.", param="prompt")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        return  # a list of strings or of token ids: vLLM checks the details
    raise invalid("`prompt` must be a string or a non-empty array.", param="prompt")


def wants_stream(body: dict[str, Any]) -> bool:
    return body.get("stream") is True


def wants_usage_chunk(body: dict[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    return bool(options.get("include_usage"))


def upstream_body(body: dict[str, Any], *, served_model: str) -> bytes:
    """The body sent to the backend: the served model's name, and (when streaming) the usage
    chunk always requested, so that every call's tokens are counted."""
    out = dict(body)
    out["model"] = served_model
    if wants_stream(body):
        out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return orjson.dumps(out)
