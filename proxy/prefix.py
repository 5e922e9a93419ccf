"""A request's prefix as a chain of block hashes, for prefix-aware routing (proxy/scheduler).

vLLM caches a prompt's KV blocks by a hash that chains each 16-token block on the one before,
so two prompts share cached blocks exactly as far as their tokens agree from the start. Sluice
does not tokenize (that would cost more than the whole rest of the request path), so it does
the same over characters: the prompt as the backend will see it in order (for chat, each
message's role and text), cut into blocks of SLUICE_BALANCE_PREFIX_BLOCK_CHARS, each hash
chained on the previous one. Turn k+1 of a conversation resends turn k's messages, so turn k's
blocks are the leading blocks of turn k+1; a long shared system prompt, or a RAG context put
before the question, gives leading blocks shared by many requests. Only whole blocks count:
a prompt shorter than one block has no prefix worth routing on.

Python's str hash (SipHash, salted per process) is enough: the table lives in this process.
A 4,000-token conversation (~16 KB) hashes in about 10 µs.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings

_SEP = "\x1e"  # between messages: "ab"+"c" and "a"+"bc" must not make the same prompt


def prefix_text(body: dict[str, Any], endpoint: str) -> str:
    """The leading text of the prompt the backend will prefill ("" when there is none)."""
    if endpoint == "chat/completions":
        messages = body.get("messages")
        if isinstance(messages, list):
            return _SEP.join(_message_text(m) for m in messages if isinstance(m, dict))
    elif endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            return prompt[0]
    elif endpoint == "responses":
        parts = []
        if isinstance(body.get("instructions"), str):
            parts.append(body["instructions"])
        given = body.get("input")
        if isinstance(given, str):
            parts.append(given)
        elif isinstance(given, list):
            parts += [_message_text(m) for m in given if isinstance(m, dict)]
        return _SEP.join(parts)
    return ""


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: their text in order, others by type
        content = "".join(p.get("text") or p.get("type", "") if isinstance(p, dict) else ""
                          for p in content)
    elif not isinstance(content, str):
        content = "" if content is None else str(content)
    role = message.get("role")
    return f"{role if isinstance(role, str) else ''}\n{content}"


def prefix_hashes(body: dict[str, Any], endpoint: str) -> tuple[int, ...]:
    """The chained hashes of the prompt's whole blocks, at most SLUICE_BALANCE_PREFIX_MAX_BLOCKS."""
    text = prefix_text(body, endpoint)
    size = settings.SLUICE_BALANCE_PREFIX_BLOCK_CHARS
    count = min(len(text) // size, settings.SLUICE_BALANCE_PREFIX_MAX_BLOCKS)
    hashes = []
    chained = 0
    for start in range(0, count * size, size):
        chained = hash((chained, text[start:start + size]))
        hashes.append(chained)
    return tuple(hashes)
