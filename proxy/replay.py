"""A cached answer in the shape asked for, and a streamed answer turned into the cached shape.

The caches store one canonical form of an answer: the non-streamed JSON body (a
`chat.completion` or `text_completion`, with its usage). `body_replay` and `stream_replay`
serve it as a request asks for it (fresh `id` and `created`); `stream_assemble` builds that
form from the SSE events of a streamed answer, after the stream has ended. An answer whose
events carry something it does not know how to merge is not assembled (so not cached).
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import orjson

CONTENT_CHUNKS = 4  # a replayed stream's content arrives in about this many chunks
_CHUNK_OBJECT = {"chat.completion": "chat.completion.chunk", "text_completion": "text_completion"}
_FINAL_OBJECT = {"chat.completion.chunk": "chat.completion", "text_completion": "text_completion"}
_TOP_KNOWN = frozenset({"id", "object", "created", "model", "choices", "usage",
                        "system_fingerprint"})
_CHOICE_KNOWN = frozenset({"index", "delta", "text", "logprobs", "finish_reason", "stop_reason",
                           "prompt_logprobs"})


# --- serving a stored answer ------------------------------------------------------------------
def answer_parse(answer: bytes) -> dict[str, Any] | None:
    """A stored answer, parsed; None if it is not one (treated as a miss)."""
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    if (not isinstance(parsed, dict) or parsed.get("object") not in _CHUNK_OBJECT
            or not isinstance(parsed.get("choices"), list)):
        return None
    return parsed


def _fresh(answer: dict[str, Any]) -> tuple[str, int]:
    prefix = "chatcmpl" if answer.get("object") == "chat.completion" else "cmpl"
    return f"{prefix}-{os.urandom(16).hex()}", int(time.time())


def body_replay(answer: dict[str, Any]) -> bytes:
    """The non-streamed JSON body, with a fresh id and creation time."""
    ident, created = _fresh(answer)
    return orjson.dumps({**answer, "id": ident, "created": created})


def stream_replay(answer: dict[str, Any], *, include_usage: bool) -> bytes:
    """The answer as a whole SSE stream: per choice a role chunk (chat), its content in a few
    chunks, a finish_reason chunk; the usage chunk when the app asked for it; `[DONE]`."""
    ident, created = _fresh(answer)
    head = {"id": ident, "object": _CHUNK_OBJECT[answer["object"]], "created": created,
            "model": answer.get("model", "")}
    chat = answer["object"] == "chat.completion"
    events: list[bytes] = []
    for choice in answer["choices"]:
        parts = _chat_parts(choice) if chat else _text_parts(choice)
        for part in parts:
            events.append(_event({**head, "choices": [part]}))
    if include_usage and answer.get("usage") is not None:
        events.append(_event({**head, "choices": [], "usage": answer["usage"]}))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _pieces(text: str) -> list[str]:
    if not text:
        return []
    size = max(1, math.ceil(len(text) / CONTENT_CHUNKS))
    return [text[i:i + size] for i in range(0, len(text), size)]


def _chat_parts(choice: dict[str, Any]) -> list[dict[str, Any]]:
    index = choice.get("index", 0)
    message = choice.get("message") or {}

    def part(delta: dict[str, Any], logprobs: Any = None, finish: Any = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    parts = [part({"role": message.get("role") or "assistant", "content": ""})]
    for name, value in message.items():  # vLLM's reasoning_content, and the like
        if name not in ("role", "content", "tool_calls") and isinstance(value, str) and value:
            parts.append(part({name: value}))
    content = message.get("content") or ""
    if choice.get("logprobs") is not None:  # logprobs belong to the tokens: one chunk
        parts.append(part({"content": content}, choice["logprobs"]))
    else:
        parts += [part({"content": piece}) for piece in _pieces(content)]
    tool_calls = message.get("tool_calls") or []
    if tool_calls:
        parts.append(part({"tool_calls": [{**call, "index": i}
                                          for i, call in enumerate(tool_calls)]}))
    last = part({}, finish=choice.get("finish_reason"))
    if "stop_reason" in choice:
        last["stop_reason"] = choice["stop_reason"]
    parts.append(last)
    return parts


def _text_parts(choice: dict[str, Any]) -> list[dict[str, Any]]:
    index = choice.get("index", 0)

    def part(text: str, logprobs: Any = None, finish: Any = None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    text = choice.get("text") or ""
    if choice.get("logprobs") is not None:
        parts = [part(text, choice["logprobs"])]
    else:
        parts = [part(piece) for piece in _pieces(text)]
    last = part("", finish=choice.get("finish_reason"))
    if "stop_reason" in choice:
        last["stop_reason"] = choice["stop_reason"]
    return [*parts, last]


# --- assembling a streamed answer ---------------------------------------------------------------
class Unsupported(Exception):
    """The stream holds something this module does not merge: don't cache it."""


def stream_assemble(raw: bytes) -> bytes | None:
    """The non-streamed body of a complete streamed chat or text completion (the raw SSE bytes
    as the backend sent them, usage chunk included), or None when it cannot be assembled: an
    error event, no `[DONE]`, no usage, a choice without finish_reason, an unknown field."""
    try:
        chunks, done = _chunks(raw)
        if not done or not chunks:
            return None
        return orjson.dumps(_merge(chunks))
    except (Unsupported, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _chunks(raw: bytes) -> tuple[list[dict[str, Any]], bool]:
    chunks, done = [], False
    for event in raw.split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n")
                          if line.startswith(b"data:"))
        if not data:
            continue
        if data == b"[DONE]":
            done = True
            continue
        payload = orjson.loads(data)
        if not isinstance(payload, dict) or "error" in payload:
            raise Unsupported("an error event")
        chunks.append(payload)
    return chunks, done


def _merge(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    first = chunks[0]
    kind = _FINAL_OBJECT.get(first.get("object"))
    if kind is None:
        raise Unsupported(f"object {first.get('object')!r}")
    chat = kind == "chat.completion"
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        for name, value in chunk.items():
            if name not in _TOP_KNOWN and value is not None:
                raise Unsupported(name)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            state = choices.setdefault(choice["index"], _State())
            state.take(choice, chat=chat)
    if usage is None or not choices:
        raise Unsupported("no usage or no choices")
    out: dict[str, Any] = {"id": first.get("id"), "object": kind, "created": first.get("created"),
                           "model": first.get("model"),
                           "choices": [choices[i].result(i, chat=chat) for i in sorted(choices)],
                           "usage": usage}
    return out


class _State:
    """One choice's deltas so far."""

    __slots__ = ("role", "strings", "tool_calls", "logprobs", "finish_reason", "stop_reason",
                 "has_stop_reason")

    def __init__(self) -> None:
        self.role = None
        self.strings: dict[str, list[str]] = {}  # content, text, reasoning_content, ...
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: dict[str, list] | None = None
        self.finish_reason = None
        self.stop_reason = None
        self.has_stop_reason = False

    def take(self, choice: dict[str, Any], *, chat: bool) -> None:
        for name, value in choice.items():
            if name not in _CHOICE_KNOWN and value is not None:
                raise Unsupported(name)
        if chat:
            for name, value in (choice.get("delta") or {}).items():
                self._delta(name, value)
        elif choice.get("text"):
            self.strings.setdefault("text", []).append(choice["text"])
        if choice.get("logprobs") is not None:
            self._logprobs(choice["logprobs"])
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        if "stop_reason" in choice:
            self.has_stop_reason = True
            if choice["stop_reason"] is not None:
                self.stop_reason = choice["stop_reason"]

    def _delta(self, name: str, value: Any) -> None:
        if value is None:
            return
        if name == "role":
            self.role = value
        elif name == "tool_calls":
            for call in value:
                self._tool_call(call)
        elif isinstance(value, str):
            self.strings.setdefault(name, []).append(value)
        else:
            raise Unsupported(f"delta.{name}")

    def _tool_call(self, call: dict[str, Any]) -> None:
        merged = self.tool_calls.setdefault(
            call.get("index", len(self.tool_calls)),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if call.get("id"):
            merged["id"] = call["id"]
        if call.get("type"):
            merged["type"] = call["type"]
        function = call.get("function") or {}
        for name in ("name", "arguments"):
            if function.get(name):
                merged["function"][name] += function[name]

    def _logprobs(self, logprobs: dict[str, Any]) -> None:
        """Chat: `{"content": [...]}`; completions: parallel lists. Concatenated per list."""
        if self.logprobs is None:
            self.logprobs = {}
        for name, value in logprobs.items():
            if value is None:
                continue
            if not isinstance(value, list):
                raise Unsupported(f"logprobs.{name}")
            self.logprobs.setdefault(name, []).extend(value)

    def result(self, index: int, *, chat: bool) -> dict[str, Any]:
        if not self.finish_reason:
            raise Unsupported("a choice without finish_reason")
        text = {name: "".join(parts) for name, parts in self.strings.items()}
        out: dict[str, Any] = {"index": index}
        if chat:
            message: dict[str, Any] = {"role": self.role or "assistant",
                                       "content": text.pop("content", None)}
            message.update(text)
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            out["message"] = message
        else:
            out["text"] = text.get("text", "")
        out["logprobs"] = self.logprobs
        out["finish_reason"] = self.finish_reason
        if self.has_stop_reason:
            out["stop_reason"] = self.stop_reason
        return out
