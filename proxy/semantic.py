"""The semantic cache: questions that mean the same reuse a stored answer.

What is compared: the text of the last user message (or a completion's string prompt) is
embedded (`proxy.embedder`) and searched among the route's stored questions
(`proxy.semantic_index`). Everything else must match exactly, through a key hash: the route,
its served model, the endpoint, every sampling parameter (all body fields but the messages,
`model`, `stream`, `stream_options` and `user`) and every earlier message of the
conversation, the system prompt included. So an answer never crosses system prompts,
settings or conversations; a multi-turn request hits only a conversation whose earlier turns
were identical and whose last question means the same.

A candidate above the similarity threshold (the route's `semantic_threshold`, else
SLUICE_SEMANTIC_THRESHOLD) is served only when `proxy.nearmiss` finds no difference that
needs another answer (negation, number, entity, direction, opposite, key word): the measured
reason is in ../shared/reference/semantic-cache.md and the README's figures.

Budget: the lookup runs on the embedder's executor, never on the event loop; it is SKIPPED
when the model is not loaded yet (loading starts on the first request of a route that
enables the cache, or at start-up through `semantic_start()`) or when the executor is
saturated. It never raises: any failure is a miss.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from proxy.embedder import Saturated, embedder_get
from proxy.nearmiss import near_miss
from proxy.semantic_index import IndexSet
from proxy.snapshot import RouteInfo

logger = logging.getLogger("sluice.semantic")

ENDPOINTS = frozenset({"chat/completions", "completions"})
_NOT_IN_KEY = frozenset({"model", "stream", "stream_options", "user", "messages", "prompt"})
MAX_QUESTION_CHARS = 2000  # longer "questions" are documents: not what this cache is for


@dataclass(frozen=True, slots=True)
class SemanticHit:
    """A stored answer (the non-streamed JSON body, bytes) and how close its question was."""

    answer: bytes
    similarity: float


MISS = "miss"
SKIPPED = "skipped"  # the embedder was saturated or not loaded: no lookup, recorded as such


@dataclass(frozen=True, slots=True)
class Question:
    key: int  # signed 64-bit hash of everything that must match exactly
    text: str


def semantic_question(route: RouteInfo, body: dict[str, Any], *,
                      endpoint: str) -> Question | None:
    """The text to embed and the exact-match key, or None when the request is not a
    single question this cache can answer (no user text, images, n > 1 ...)."""
    if endpoint not in ENDPOINTS:
        return None
    if endpoint == "chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "user":
            return None
        text = _text_of(last.get("content"))
        context = [messages[:-1], {k: v for k, v in last.items() if k != "content"}]
    else:
        text = body.get("prompt")
        if not isinstance(text, str):
            return None
        context = []
    if not text or not text.strip() or len(text) > MAX_QUESTION_CHARS:
        return None
    if body.get("n", 1) not in (1, None):
        return None
    fields = {k: v for k, v in body.items() if k not in _NOT_IN_KEY}
    try:
        payload = orjson.dumps([route.name, route.model, endpoint, fields, context],
                               option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return None
    digest = hashlib.blake2b(payload, digest_size=8).digest()
    return Question(key=int.from_bytes(digest, "little", signed=True), text=text.strip())


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # text parts only; an image makes it another question
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            parts.append(str(part.get("text", "")))
        return "\n".join(parts)
    return None


# --- process state ----------------------------------------------------------------------------
_state_lock = threading.Lock()
_indexes: IndexSet | None = None
_recent: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()  # lookup vectors for store
_RECENT_MAX = 512


def indexes_get() -> IndexSet:
    global _indexes
    if _indexes is None:
        with _state_lock:
            if _indexes is None:
                from django.conf import settings

                _indexes = IndexSet(redis_url=settings.REDIS_URL or "",
                                    sync_s=settings.SLUICE_SEMANTIC_SYNC_S)
    return _indexes


def semantic_start(routes: list[RouteInfo] | None = None) -> bool:
    """At start-up: load the model (in the background) when some route enables the semantic
    cache. Returns whether loading was started. Cheap; safe to call on every config reload."""
    if routes is None:
        from proxy.snapshot import snapshot_current

        routes = list(snapshot_current().routes.values())
    enabled = [r for r in routes if r.cache_semantic]
    if not enabled:
        return False
    embedder_get().start_loading()
    indexes = indexes_get()
    threading.Thread(target=_preload, args=(indexes, enabled), daemon=True,
                     name="sluice-semantic-preload").start()
    return True


def _preload(indexes: IndexSet, routes: list[RouteInfo]) -> None:
    for route in routes:
        try:
            indexes.get(route.name, max_entries=route.semantic_max_entries)
        except Exception:
            logger.exception("semantic cache: loading route %s failed", route.name)


def _threshold(route: RouteInfo) -> float:
    if route.semantic_threshold is not None:
        return route.semantic_threshold
    from django.conf import settings

    return settings.SLUICE_SEMANTIC_THRESHOLD


# --- the two calls of the request path --------------------------------------------------------
async def semantic_lookup(route: RouteInfo, body: dict[str, Any], *,
                          endpoint: str) -> SemanticHit | str:
    """A hit, or MISS / SKIPPED. Never blocks the event loop; never raises."""
    try:
        if not route.cache_semantic:
            return MISS
        question = semantic_question(route, body, endpoint=endpoint)
        if question is None:
            return MISS
        embedder = embedder_get()
        if not embedder.ready:
            embedder.start_loading()
            return SKIPPED
        try:
            future = embedder.submit(_lookup_sync, route, question)
        except Saturated:
            return SKIPPED
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("semantic cache: lookup failed (served as a miss)")
        return MISS


def _lookup_sync(route: RouteInfo, question: Question) -> SemanticHit | str:
    from django.conf import settings

    vector = embedder_get().encode_one(question.text)
    with _state_lock:
        _recent[(question.key, question.text)] = vector
        while len(_recent) > _RECENT_MAX:
            _recent.popitem(last=False)
    index = indexes_get().get(route.name, max_entries=route.semantic_max_entries)
    candidates = index.search(vector, key=question.key, threshold=_threshold(route),
                              limit=settings.SLUICE_SEMANTIC_CANDIDATES)
    for candidate in candidates:
        if near_miss(question.text, candidate.question) is None:
            return SemanticHit(answer=candidate.answer, similarity=candidate.similarity)
    return MISS


def semantic_store(route: RouteInfo, body: dict[str, Any], *, endpoint: str,
                   answer: bytes) -> None:
    """Index a complete, successful answer for later lookups (in the background)."""
    try:
        if not route.cache_semantic:
            return
        question = semantic_question(route, body, endpoint=endpoint)
        if question is None:
            return
        embedder = embedder_get()
        if not embedder.ready:
            embedder.start_loading()
            return
        embedder.submit(_store_sync, route, question, bytes(answer))
    except Saturated:
        logger.debug("semantic cache: embedder saturated, answer not stored")
    except Exception:
        logger.exception("semantic cache: store failed")


def _store_sync(route: RouteInfo, question: Question, answer: bytes) -> None:
    try:
        with _state_lock:
            vector = _recent.pop((question.key, question.text), None)
        if vector is None:
            vector = embedder_get().encode_one(question.text)
        indexes_get().add(route.name, vector, key=question.key, question=question.text,
                          answer=answer, ttl_s=route.cache_ttl_s,
                          max_entries=route.semantic_max_entries)
    except Exception:
        logger.exception("semantic cache: store failed")
