"""Reading the upstream SSE stream without re-serialising it.

Bytes pass through as they came. Only the few events that mention `"usage"` or `"error"` are
parsed: the usage chunk is read (and dropped when the app did not ask for it), and an
in-stream error is noted. Everything else is forwarded as the same bytes.
"""
from __future__ import annotations

import orjson

from proxy.accounting import CallLog
from proxy.errors import error_body

EVENT_END = b"\n\n"
DONE = b"data: [DONE]"
_USAGE = b'"usage"'
_ERROR = b'"error"'


def events_scan(block: bytes, log: CallLog, *, strip_usage_chunk: bool) -> bytes:
    """`block` holds whole events (it ends with a blank line). Return the bytes to forward."""
    if _USAGE not in block and _ERROR not in block:
        return block
    kept = []
    for event in block.split(EVENT_END):
        if not event:
            continue
        if (_USAGE in event or _ERROR in event) and _event_read(event, log, strip_usage_chunk):
            continue
        kept.append(event + EVENT_END)
    return b"".join(kept)


def _event_read(event: bytes, log: CallLog, strip_usage_chunk: bool) -> bool:
    """Note usage or errors from one event; return True when the event must be dropped."""
    payload = _payload(event)
    if not isinstance(payload, dict):
        return False
    if "error" in payload and "choices" not in payload:
        log.fail(502, "upstream_stream_error")
        return False
    usage = payload.get("usage")
    if usage:
        log.usage_take(usage)
        return strip_usage_chunk and payload.get("choices") == []
    response = payload.get("response")  # the Responses API: usage in `response.completed`
    if isinstance(response, dict) and response.get("usage"):
        log.usage_take(response["usage"])
    return False


def _payload(event: bytes) -> object:
    data = b"\n".join(
        line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")
    )
    if not data or data == b"[DONE]":
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def starts_with_error(block: bytes) -> bool:
    """True when a stream's first event is an error (vLLM can fail a request that way after
    its 200, before any token): nothing useful was sent yet, so it may be retried."""
    if _ERROR not in block:
        return False
    payload = _payload(block.split(EVENT_END, 1)[0])
    return isinstance(payload, dict) and "error" in payload and "choices" not in payload


def body_usage_read(body: bytes, log: CallLog) -> None:
    """A non-streamed answer carries its usage in the top-level `usage` field."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if isinstance(payload, dict):
        if "usage" in payload:
            log.usage_take(payload["usage"])
        elif isinstance(payload.get("count"), int):  # /tokenize counts the prompt's tokens
            log.usage_take({"prompt_tokens": payload["count"]})


def error_event(message: str) -> bytes:
    """How vLLM ends a stream that failed after its 200: an error event, then [DONE]."""
    body = error_body(message, type="upstream_error", code="upstream_stream_error")
    return b"data: " + body + EVENT_END + DONE + EVENT_END


def error_normalise(payload: bytes, *, status: int) -> tuple[bytes, str]:
    """Return an OpenAI-shaped error body and its type. Current vLLM already answers
    `{"error": {...}}`; older builds answer a flat `{"object": "error", "message": ...}`."""
    try:
        parsed = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = parsed["error"]
        return payload, str(error.get("type") or "upstream_error")[:64]
    if isinstance(parsed, dict) and "message" in parsed:
        message, error_type = str(parsed["message"]), str(parsed.get("type") or "upstream_error")
    else:
        message = payload.decode(errors="replace")[:500] or f"Backend answered HTTP {status}."
        error_type = "upstream_error"
    return error_body(message, type=error_type, code=str(status)), error_type[:64]
