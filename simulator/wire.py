"""Byte builders for vLLM's OpenAI-compatible responses.

A stream is hundreds of near-identical chunks, so each stream precomputes the constant JSON
around the token text once and splices the (cached) JSON string of each token in between:
no dict building or serialising per token. Field order and presence follow vLLM's pydantic
models as serialised by its server (see shared/reference/vllm-wire.md).
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


@lru_cache(maxsize=8192)
def jstr(value: str | None) -> bytes:
    """JSON encoding of a string (or null); vocabulary tokens hit the cache."""
    return orjson.dumps(value)


def new_id(prefix: str) -> str:
    """vLLM ids are a prefix plus 32 random hex digits."""
    return f"{prefix}-{os.urandom(16).hex()}"


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens}


def _usage_bytes(prompt_tokens: int, completion_tokens: int) -> bytes:
    return (b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}'
            % (prompt_tokens, prompt_tokens + completion_tokens, completion_tokens))


class StreamWire:
    """SSE chunks for one streamed chat or text completion.

    ``continuous_usage`` appends running usage (prompt tokens, this choice's tokens so far) to
    every chunk, as vLLM does for ``stream_options.continuous_usage_stats``.
    """

    def __init__(self, *, chat: bool, model: str, prompt_tokens: int,
                 continuous_usage: bool = False) -> None:
        self.chat = chat
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.prompt_tokens = prompt_tokens
        self.continuous_usage = continuous_usage
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        self._head = (b'data: {"id":"%s","object":"%s","created":%d,"model":%s,"choices":'
                      % (self.id.encode(), obj, int(time.time()), jstr(model)))
        self._choice_head = self._head + b'[{"index":'
        self._text_key = b',"delta":{"content":' if chat else b',"text":'
        # After the token text: close delta (chat only), then the per-choice tail.
        self._mid = (b'},"logprobs":null,"finish_reason":' if chat
                     else b',"logprobs":null,"finish_reason":')
        self._plain_tail = (b'null}]}\n\n' if chat else b'null,"stop_reason":null}]}\n\n')

    def _close(self, completion_tokens: int) -> bytes:
        if self.continuous_usage:
            return b"," + _usage_bytes(self.prompt_tokens, completion_tokens) + b"}\n\n"
        return b"}\n\n"

    def role(self, index: int) -> bytes:
        """The chat opener: ``delta: {"role":"assistant","content":""}``."""
        return (self._choice_head + b"%d" % index
                + b',"delta":{"role":"assistant","content":""},"logprobs":null,'
                  b'"finish_reason":null}]' + self._close(0))

    def token(self, index: int, text: str, completion_tokens: int) -> bytes:
        """A mid-stream chunk carrying one token's text."""
        if self.continuous_usage:
            tail = (b'null}]' if self.chat else b'null,"stop_reason":null}]')
            tail += self._close(completion_tokens)
        else:
            tail = self._plain_tail
        return (self._choice_head + b"%d" % index + self._text_key + jstr(text) + self._mid
                + tail)

    def final(self, index: int, text: str, finish_reason: str, stop_reason: str | None,
              completion_tokens: int) -> bytes:
        """The last chunk of a choice: its last token text plus finish and stop reasons."""
        return (self._choice_head + b"%d" % index + self._text_key + jstr(text) + self._mid
                + jstr(finish_reason) + b',"stop_reason":' + jstr(stop_reason) + b"}]"
                + self._close(completion_tokens))

    def usage(self, completion_tokens: int) -> bytes:
        """The ``stream_options.include_usage`` chunk: empty choices plus totals."""
        return (self._head + b"[]," + _usage_bytes(self.prompt_tokens, completion_tokens)
                + b"}\n\n")


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> bytes:
    """vLLM's current error shape: ``{"error": {message, type, param, code}}``."""
    return orjson.dumps({"error": {"message": message, "type": err_type, "param": param,
                                   "code": code}})


def error_event(message: str, err_type: str = "InternalServerError", code: int = 500) -> bytes:
    """An error after the stream started: an SSE event (the caller follows it with [DONE])."""
    return b"data: " + error_body(message, err_type, code) + b"\n\n"


def chat_response(*, model: str, choices: list[tuple[str, str, str | None]], prompt_tokens: int,
                  completion_tokens: int) -> bytes:
    """A non-streamed ``chat.completion``; ``choices`` are (text, finish_reason, stop_reason)."""
    return orjson.dumps({
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text, "tool_calls": []},
             "logprobs": None, "finish_reason": finish, "stop_reason": stop}
            for i, (text, finish, stop) in enumerate(choices)
        ],
        "usage": usage_dict(prompt_tokens, completion_tokens),
        "prompt_logprobs": None,
    })


def completion_response(*, model: str, choices: list[tuple[str, str, str | None]],
                        prompt_tokens: int, completion_tokens: int) -> bytes:
    """A non-streamed ``text_completion``; ``choices`` are (text, finish_reason, stop_reason)."""
    return orjson.dumps({
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": finish,
             "stop_reason": stop, "prompt_logprobs": None}
            for i, (text, finish, stop) in enumerate(choices)
        ],
        "usage": usage_dict(prompt_tokens, completion_tokens),
    })


def models_response(*, model: str, max_model_len: int, created: int) -> bytes:
    """``GET /v1/models`` as vLLM lists its one served model."""
    perm = {"id": f"modelperm-{os.urandom(16).hex()}", "object": "model_permission",
            "created": created, "allow_create_engine": False, "allow_sampling": True,
            "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
            "allow_fine_tuning": False, "organization": "*", "group": None,
            "is_blocking": False}
    return orjson.dumps({"object": "list", "data": [{
        "id": model, "object": "model", "created": created, "owned_by": "vllm", "root": model,
        "parent": None, "max_model_len": max_model_len, "permission": [perm]}]})


def embedding_response(*, model: str, embeddings: list[list[float] | str],
                       prompt_tokens: int) -> bytes:
    """``POST /v1/embeddings``: one ``embedding`` item per input; ``usage`` at the top level
    counts the input tokens (``completion_tokens`` is 0, as vLLM's UsageInfo serialises)."""
    return orjson.dumps({
        "id": new_id("embd"), "object": "list", "created": int(time.time()), "model": model,
        "data": [{"index": i, "object": "embedding", "embedding": e}
                 for i, e in enumerate(embeddings)],
        "usage": usage_dict(prompt_tokens, 0),
    })


def rerank_response(*, model: str, results: list[dict[str, Any]], prompt_tokens: int) -> bytes:
    """``POST /v1/rerank`` (Jina/Cohere style): ``usage`` has only prompt and total tokens."""
    return orjson.dumps({
        "id": new_id("rerank"), "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        "results": results,
    })


def score_response(*, model: str, scores: list[float], prompt_tokens: int) -> bytes:
    """``POST /v1/score``: one ``score`` item per pair, usage like embeddings."""
    return orjson.dumps({
        "id": new_id("score"), "object": "list", "created": int(time.time()), "model": model,
        "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
        "usage": usage_dict(prompt_tokens, 0),
    })


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)
