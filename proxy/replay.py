"""A cached answer in the shape asked for, and a streamed answer turned into the cached shape.

The caches store one canonical form of an answer: the non-streamed JSON body (a
`chat.completion` or `text_completion`, with its usage). `body_replay` and `stream_replay`
serve it as a request asks for it (fresh `id` and `created`); `stream_assemble` builds that
form from the SSE events of a streamed answer, after the stream has ended. An answer whose
events carry something it does not know how to merge is not assembled (so not cached).
"""
from __future__ import annotations

import asyncio
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
_CONTENT_ONLY = frozenset({"content"})
_CHOICE_PLAIN = frozenset({"index", "delta", "logprobs", "finish_reason", "stop_reason"})
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


_ASSEMBLY_ERRORS = (Unsupported, orjson.JSONDecodeError, KeyError, TypeError, ValueError,
                    AttributeError)


SLICE_EVENTS = 128  # events parsed between two yields to the event loop (~0.1-0.2 ms each)


def stream_assemble(raw: bytes) -> bytes | None:
    """The non-streamed body of a complete streamed chat or text completion (the raw SSE bytes
    as the backend sent them, usage chunk included), or None when it cannot be assembled: an
    error event, no `[DONE]`, no usage, a choice without finish_reason, an unknown field."""
    try:
        assembler = _Assembler()
        datas, done = _datas(raw)
        assembler.feed(_parsed(datas))
        return assembler.result() if done else None
    except _ASSEMBLY_ERRORS:
        return None


async def stream_assemble_sliced(raw: bytes) -> bytes | None:
    """`stream_assemble`, yielding to the event loop every SLICE_EVENTS events, so that a long
    answer (~1.5 µs per event) never stalls the other streams for more than a slice."""
    try:
        assembler = _Assembler()
        datas, done = _datas(raw)
        if not done:
            return None
        for start in range(0, len(datas), SLICE_EVENTS):
            if start:
                await asyncio.sleep(0)
            assembler.feed(_parsed(datas[start:start + SLICE_EVENTS]))
        return assembler.result()
    except _ASSEMBLY_ERRORS:
        return None


def _datas(raw: bytes) -> tuple[list[bytes], bool]:
    """Each event's data, and whether `[DONE]` ended the stream."""
    datas, done = [], False
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: ") and b"\n" not in event:  # vLLM's: one data line
            data = event[6:]
        else:
            data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n")
                              if line.startswith(b"data:"))
        if data == b"[DONE]":
            done = True
        elif data:
            datas.append(data)
    return datas, done


def _parsed(datas: list[bytes]) -> list[dict[str, Any]]:
    """Parsed in one go, as one JSON array: a parse per event costs more than the merge."""
    chunks = orjson.loads(b"[" + b",".join(datas) + b"]")
    for payload in chunks:
        if not isinstance(payload, dict) or "error" in payload:
            raise Unsupported("an error event")
    return chunks


class _Assembler:
    """Merges chunks, in order, into the non-streamed answer."""

    __slots__ = ("first", "chat", "choices", "usage")

    def __init__(self) -> None:
        self.first: dict[str, Any] | None = None
        self.chat = False
        self.choices: dict[int, _State] = {}
        self.usage = None

    def feed(self, chunks: list[dict[str, Any]]) -> None:
        if self.first is None and chunks:
            self.first = chunks[0]
            if _FINAL_OBJECT.get(self.first.get("object")) is None:
                raise Unsupported(f"object {self.first.get('object')!r}")
            self.chat = self.first["object"] == "chat.completion.chunk"
        chat, choices = self.chat, self.choices
        for chunk in chunks:
            if not chunk.keys() <= _TOP_KNOWN:
                for name, value in chunk.items():
                    if name not in _TOP_KNOWN and value is not None:
                        raise Unsupported(name)
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                state = choices.get(choice["index"])
                if state is None:
                    state = choices[choice["index"]] = _State()
                if chat:  # the common event, a token's text and nothing else: the short way
                    delta = choice.get("delta")
                    if (type(delta) is dict and delta.keys() == _CONTENT_ONLY
                            and choice.keys() <= _CHOICE_PLAIN
                            and choice.get("logprobs") is None
                            and not choice.get("finish_reason")
                            and type(delta["content"]) is str):
                        state.content.append(delta["content"])
                        continue
                state.take(choice, chat=chat)

    def result(self) -> bytes:
        first, choices, chat = self.first, self.choices, self.chat
        if first is None or self.usage is None or not choices:
            raise Unsupported("no usage or no choices")
        return orjson.dumps({
            "id": first.get("id"), "object": _FINAL_OBJECT[first["object"]],
            "created": first.get("created"), "model": first.get("model"),
            "choices": [choices[i].result(i, chat=chat) for i in sorted(choices)],
            "usage": self.usage,
        })


class _State:
    """One choice's deltas so far."""

    __slots__ = ("role", "content", "strings", "tool_calls", "logprobs", "finish_reason",
                 "stop_reason", "has_stop_reason")

    def __init__(self) -> None:
        self.role = None
        self.content: list[str] = []  # chat: the message's content
        self.strings: dict[str, list[str]] = {}  # text, reasoning_content, ...
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
        elif name == "content" and isinstance(value, str):
            self.content.append(value)
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
                                       "content": "".join(self.content) if self.content
                                       else None}
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
