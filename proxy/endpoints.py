"""The OpenAI/vLLM endpoints Sluice proxies, and what differs between them.

Every endpoint goes through the same request path (pipeline.py): auth, validation, limits,
routing by `model`, retries and fallbacks, accounting. Only these facts differ.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # what Call.endpoint records
    upstream_path: str  # the path on the vLLM server
    streams: bool = False  # honours `stream: true`
    usage_chunk: bool = False  # streams end with a usage chunk Sluice asks for (chat, completions)


CHAT = Endpoint("chat/completions", "/v1/chat/completions", streams=True, usage_chunk=True)
COMPLETIONS = Endpoint("completions", "/v1/completions", streams=True, usage_chunk=True)
EMBEDDINGS = Endpoint("embeddings", "/v1/embeddings")
RERANK = Endpoint("rerank", "/v1/rerank")
SCORE = Endpoint("score", "/v1/score")
TOKENIZE = Endpoint("tokenize", "/tokenize")
DETOKENIZE = Endpoint("detokenize", "/detokenize")
RESPONSES = Endpoint("responses", "/v1/responses", streams=True)

ALL = (CHAT, COMPLETIONS, EMBEDDINGS, RERANK, SCORE, TOKENIZE, DETOKENIZE, RESPONSES)
