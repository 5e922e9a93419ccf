"""Bytes of the OpenAI Responses API (``POST /v1/responses``) as vLLM serves it.

vLLM builds one ``response`` object from the request (echoing instructions, sampling settings
and tools) and, when streaming, wraps it in ``response.created`` / ``response.in_progress`` /
``response.completed`` events around the output-item events, each as ``event: <type>`` plus
``data: <json>`` with a ``sequence_number`` counting from 0 and no ``[DONE]`` at the end. The
final ``response.completed`` carries the usage; the other events carry none. A max-tokens cut
sets ``status: "incomplete"`` with ``incomplete_details.reason = "max_output_tokens"`` but
vLLM still ends the stream with ``response.completed``. Per-token delta events are assembled
from pre-encoded pieces, as :mod:`simulator.wire` does for chat chunks.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from simulator.wire import error_body, jstr

# Request fields vLLM echoes into the response object, with vLLM's defaults.
_ECHOED: dict[str, Any] = {
    "instructions": None, "metadata": None, "parallel_tool_calls": True, "tool_choice": "auto",
    "tools": [], "background": False, "max_tool_calls": None, "previous_response_id": None,
    "prompt": None, "reasoning": None, "service_tier": "auto", "text": None,
    "truncation": "disabled", "user": None,
}


def _uuid_id(prefix: str) -> str:
    """Responses ids are ``resp_``/``msg_`` plus 32 hex digits (vLLM's ``random_uuid``)."""
    return f"{prefix}_{os.urandom(16).hex()}"


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """The Responses usage block: input/output naming, cached and reasoning details at 0."""
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


def message_item(item_id: str, content: str | None, status: str) -> dict[str, Any]:
    """An assistant ``message`` output item; ``content=None`` gives the empty opener."""
    parts = [] if not content else [
        {"annotations": [], "text": content, "type": "output_text", "logprobs": None}]
    return {"id": item_id, "content": parts, "role": "assistant", "status": status,
            "type": "message"}


class ResponseBuilder:
    """The ``response`` object of one request, in its in-progress and final forms."""

    def __init__(self, *, model: str, body: dict[str, Any], max_output_tokens: int) -> None:
        self.id = _uuid_id("resp")
        self.item_id = _uuid_id("msg")
        self.created_at = int(time.time())
        self.model = model
        self.max_output_tokens = max_output_tokens
        self.echo = {key: body.get(key, default) for key, default in _ECHOED.items()}
        temperature, top_p = body.get("temperature"), body.get("top_p")
        self.temperature = 1.0 if temperature is None else temperature
        self.top_p = 1.0 if top_p is None else top_p

    def build(self, *, status: str, output: list[dict[str, Any]],
              usage_block: dict[str, Any] | None) -> dict[str, Any]:
        """The object in vLLM's field order; ``usage`` is null until the response completes."""
        e = self.echo
        return {
            "id": self.id, "created_at": self.created_at,
            "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete"
                                   else None),
            "instructions": e["instructions"], "metadata": e["metadata"], "model": self.model,
            "object": "response", "output": output,
            "parallel_tool_calls": e["parallel_tool_calls"], "temperature": self.temperature,
            "tool_choice": e["tool_choice"], "tools": e["tools"], "top_p": self.top_p,
            "background": e["background"], "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": e["max_tool_calls"],
            "previous_response_id": e["previous_response_id"], "prompt": e["prompt"],
            "reasoning": e["reasoning"], "service_tier": e["service_tier"], "status": status,
            "text": e["text"], "top_logprobs": None, "truncation": e["truncation"],
            "usage": usage_block, "user": e["user"],
        }

    def final(self, content: str, finish_reason: str, input_tokens: int,
              output_tokens: int) -> dict[str, Any]:
        """The completed (or max-tokens ``incomplete``) response with its usage."""
        status = "incomplete" if finish_reason == "length" else "completed"
        return self.build(status=status, output=[message_item(self.item_id, content, "completed")],
                          usage_block=usage(input_tokens, output_tokens))


class ResponseStream:
    """SSE events of one streamed response, numbered in the order they are produced."""

    def __init__(self, builder: ResponseBuilder) -> None:
        self.builder = builder
        self.sequence = 0
        item = builder.item_id.encode()
        self._delta_head = (b'event: response.output_text.delta\ndata: {"content_index":0,'
                            b'"delta":')
        self._delta_tail = (b',"item_id":"' + item + b'","logprobs":[],"output_index":0,'
                            b'"sequence_number":')

    def event(self, event_type: str, payload: dict[str, Any]) -> bytes:
        """One ``event:``/``data:`` block; ``sequence_number`` and ``type`` close the JSON."""
        data = orjson.dumps({**payload, "sequence_number": self.sequence, "type": event_type})
        self.sequence += 1
        return b"event: " + event_type.encode() + b"\ndata: " + data + b"\n\n"

    def opening(self) -> bytes:
        """``response.created`` and ``response.in_progress``: sent before the first token."""
        start = self.builder.build(status="in_progress", output=[], usage_block=None)
        return (self.event("response.created", {"response": start})
                + self.event("response.in_progress", {"response": start}))

    def item_added(self) -> bytes:
        """The message item and its text part opening, sent with the first token."""
        item_id = self.builder.item_id
        return (self.event("response.output_item.added", {
                    "item": message_item(item_id, None, "in_progress"), "output_index": 0})
                + self.event("response.content_part.added", {
                    "content_index": 0, "item_id": item_id, "output_index": 0,
                    "part": {"annotations": [], "text": "", "type": "output_text",
                             "logprobs": []}}))

    def delta(self, piece: str) -> bytes:
        """A ``response.output_text.delta`` event carrying one token's text."""
        seq = self.sequence
        self.sequence += 1
        return (self._delta_head + jstr(piece) + self._delta_tail
                + b'%d,"type":"response.output_text.delta"}\n\n' % seq)

    def closing(self, content: str, finish_reason: str, input_tokens: int,
                output_tokens: int) -> bytes:
        """Text done, part done, item done, then ``response.completed`` with the usage."""
        item_id = self.builder.item_id
        part = {"annotations": [], "text": content, "type": "output_text", "logprobs": None}
        final = self.builder.final(content, finish_reason, input_tokens, output_tokens)
        return (self.event("response.output_text.done", {
                    "content_index": 0, "item_id": item_id, "logprobs": [], "output_index": 0,
                    "text": content})
                + self.event("response.content_part.done", {
                    "content_index": 0, "item_id": item_id, "output_index": 0, "part": part})
                + self.event("response.output_item.done", {
                    "item": message_item(item_id, content, "completed"), "output_index": 0})
                + self.event("response.completed", {"response": final}))

    def error(self, message: str) -> bytes:
        """An ``error`` event after the stream started.

        It has both the Responses ``error`` event fields and an ``error`` object in vLLM's
        shape, so the openai SDK raises ``APIError`` just as it does for a chat stream error.
        """
        err = orjson.loads(error_body(message, "InternalServerError", 500))["error"]
        return self.event("error", {"code": "server_error", "message": message, "param": None,
                                    "error": err})
