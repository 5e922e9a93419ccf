"""A request's prefix as a chain of block hashes, for prefix-aware routing (proxy/scheduler).

vLLM caches a prompt's KV blocks by a hash that chains each 16-token block on the one before,
so two prompts share cached blocks exactly as far as their tokens agree from the start. Sluice
does not tokenize (that would cost more than the whole rest of the request path), so it does
the same over characters: the prompt as the backend will see it, in order (for chat, each
message's role and text), cut into blocks at fixed character offsets, each block's hash
chained on the one before. Turn k+1 of a conversation resends turn k's messages, so turn k's
blocks are the leading blocks of turn k+1; a long shared system prompt, or a RAG context put
before the question, gives leading blocks that many requests share. Only whole blocks count:
a prompt shorter than one block has no prefix worth routing on.

Two choices keep it within a few microseconds for a 4,000-token (16 KB) conversation:
- Block ends grow with the offset: every SLUICE_BALANCE_PREFIX_BLOCK_CHARS (256) up to 1 KB,
  then 25 % further each (1.25 KB, 1.6 KB, 2 KB, ... 16 KB is the 17th block, 1 MB the 36th).
  Routing needs "who holds the longest prefix", not its length to the token.
- A long block is hashed by its length, its first and its last 128 characters. Two prompts
  that differ only inside a long block's middle look alike: that costs a less good choice of
  backend, never a wrong answer.

Python's str hash (SipHash, salted per process) is enough: the table lives in this process.
"""
from __future__ import annotations

import functools
from typing import Any

from django.conf import settings

_SEP = "\x1e"  # between messages: "ab"+"c" and "a"+"bc" must not make the same prompt


def prefix_text(body: dict[str, Any], endpoint: str) -> str:
    """The leading text of the prompt the backend will prefill ("" when there is none)."""
    if endpoint == "chat/completions":
        messages = body.get("messages")
        if isinstance(messages, list):
            try:  # the common shape, at a third of the cost of the general one
                return _SEP.join([m["role"] + "\n" + m["content"] for m in messages])
            except (KeyError, TypeError):  # content parts, a null content (tool calls), ...
                return _SEP.join([_message_text(m) for m in messages if isinstance(m, dict)])
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
    if type(content) is not str:
        if isinstance(content, list):  # content parts: their text in order, others by type
            content = "".join([p.get("text") or p.get("type", "") if isinstance(p, dict)
                               else "" for p in content])
        else:
            content = "" if content is None else str(content)
    role = message.get("role")
    return (role if type(role) is str else "") + "\n" + content


_SAMPLE = 128  # characters hashed at each end of a long block


@functools.lru_cache(maxsize=8)
def block_ends(first: int, limit: int = 1 << 20) -> tuple[int, ...]:
    """Where blocks end: every `first` characters up to 4 blocks, then 25 % further each."""
    ends, end = [], first
    while end <= limit:
        ends.append(end)
        end = end + first if len(ends) < 4 else round(end * 1.25)
    return tuple(ends)


def prefix_hashes(body: dict[str, Any], endpoint: str) -> tuple[int, ...]:
    """The chained hashes of the prompt's whole blocks (see the module docstring)."""
    text = prefix_text(body, endpoint)
    length = len(text)
    hashes: list[int] = []
    chained, start = 0, 0
    for end in block_ends(settings.SLUICE_BALANCE_PREFIX_BLOCK_CHARS):
        if end > length:
            break
        if end - start <= 2 * _SAMPLE:
            chained = hash((chained, text[start:end]))
        else:
            chained = hash((chained, end, text[start:start + _SAMPLE], text[end - _SAMPLE:end]))
        hashes.append(chained)
        start = end
    return tuple(hashes)
