"""Prompt compression: fit a request into the route's prompt-token budget.

`compress()` never changes the body it is given (the caches key on the request as the app sent
it) and returns it as is, uncopied, when it is already within the budget. Over the budget:

1. Whitespace: runs of spaces and tabs inside a line become one space, spaces at line ends go,
   and three or more line breaks become two. Never inside ``` code fences, and never the
   indentation at the start of a line (unfenced code and YAML pastes need it).
2. Chat only, if still over: keep every system/developer message, and the latest turns that
   fit; drop the oldest turns whole. A turn is a user message and everything after it up to the
   next user message (assistant answers, an assistant's tool calls and their tool results), so
   a tool call never loses its results, nor a result its call, and the kept conversation still
   starts with a user message. The last turn (the one the app is asking about) is always kept,
   even when alone it is over the budget: the backend's own context limit is the judge of that.

Completions (`prompt` a string) get the whitespace step only. Other endpoints pass untouched.

Token counts are estimates (`tokens_estimate_text`): pluggable, so that a caller holding a
real count (the backend's `/tokenize`, cached) can pass its own counter.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# ~4 characters per token is the usual average for English text with BPE tokenizers (OpenAI
# and Llama-family alike); proxy/ratelimit.py estimates the same way. Words are a floor: text of
# short words, numbers and punctuation runs closer to a token per word than 4 characters.
CHARS_PER_TOKEN = 4
# Each chat message costs a few tokens of template beyond its text (role markers, separators).
MESSAGE_OVERHEAD_TOKENS = 4

TokenCounter = Callable[[str], int]

_FENCE = "```"
# 3+ line breaks in a row (the blank lines between may hold spaces)
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_SPACE_RUNS = re.compile(r"[ \t]{2,}|\t")  # indentation (at a line's start) is kept: _run_collapse
_TRAILING_SPACES = re.compile(r"[ \t]+\n")
# Text without any of these has nothing to collapse (most text): skip the regular expressions.
_MARKS = ("  ", "\t", " \n", "\n\n\n")
_SYSTEM_ROLES = frozenset({"system", "developer"})


def tokens_estimate_text(text: str) -> int:
    """Tokens in `text`: characters / 4, rounded up, or the number of words if that is more."""
    return max(-(-len(text) // CHARS_PER_TOKEN), len(text.split()))


def prompt_tokens_estimate(body: dict[str, Any], *, endpoint: str,
                           count: TokenCounter = tokens_estimate_text) -> int:
    """The prompt tokens of a body by the same estimate as `compress` uses."""
    if endpoint == "chat/completions" and isinstance(body.get("messages"), list):
        return sum(_message_tokens(m, count) for m in body["messages"])
    if endpoint == "completions" and isinstance(body.get("prompt"), str):
        return count(body["prompt"])
    return 0


def compress(body: dict[str, Any], *, endpoint: str, budget_tokens: int,
             count: TokenCounter = tokens_estimate_text) -> tuple[dict[str, Any], int]:
    """(the body to send, the prompt tokens removed). `budget_tokens` <= 0: no budget."""
    if budget_tokens <= 0:
        return body, 0
    if endpoint == "chat/completions":
        return _chat_compress(body, budget_tokens, count)
    if endpoint == "completions":
        return _prompt_compress(body, budget_tokens, count)
    return body, 0


def whitespace_collapse(text: str) -> str:
    """Redundant whitespace out of `text`, except inside ``` fences (an unclosed fence runs to
    the end) and the indentation at the start of lines."""
    if _FENCE not in text:
        return _collapse(text).rstrip(" \t")
    parts = text.split(_FENCE)
    for i in range(0, len(parts), 2):  # even parts lie outside fences
        parts[i] = _collapse(parts[i])
    if len(parts) % 2:  # the text ends outside a fence
        parts[-1] = parts[-1].rstrip(" \t")
    return _FENCE.join(parts)


def _collapse(text: str) -> str:
    if not any(mark in text for mark in _MARKS):
        return text
    text = _TRAILING_SPACES.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return _SPACE_RUNS.sub(_run_collapse, text)


def _run_collapse(match: re.Match[str]) -> str:
    start = match.start()
    if start == 0 or match.string[start - 1] == "\n":
        return match.group(0)  # indentation
    return " "


# --- completions -----------------------------------------------------------------------------
def _prompt_compress(body: dict[str, Any], budget: int,
                     count: TokenCounter) -> tuple[dict[str, Any], int]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):  # token ids or a batch of prompts: left as sent
        return body, 0
    before = count(prompt)
    if before <= budget:
        return body, 0
    collapsed = whitespace_collapse(prompt)
    if collapsed == prompt:
        return body, 0
    return {**body, "prompt": collapsed}, max(0, before - count(collapsed))


# --- chat ------------------------------------------------------------------------------------
def _chat_compress(body: dict[str, Any], budget: int,
                   count: TokenCounter) -> tuple[dict[str, Any], int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return body, 0
    before = sum(_message_tokens(m, count) for m in messages)
    if before <= budget:
        return body, 0
    kept, after = _turns_fit(messages, budget, count)
    return {**body, "messages": kept}, max(0, before - after)


def _turns_fit(messages: list[Any], budget: int,
               count: TokenCounter) -> tuple[list[Any], int]:
    """(the messages to send, their tokens): system/developer messages and the latest whole
    turns that fit once whitespace-collapsed (at least the last turn). Turns are collapsed
    newest first: those older than the first that does not fit are never looked at again."""
    out: dict[int, Any] = {}
    room = budget
    for i, message in enumerate(messages):
        if _role(message) in _SYSTEM_ROLES:
            out[i] = _message_collapse(message)
            room -= _message_tokens(out[i], count)
    for n, (start, end) in enumerate(reversed(_turns(messages))):
        turn = {i: _message_collapse(messages[i]) for i in range(start, end)
                if _role(messages[i]) not in _SYSTEM_ROLES}
        cost = sum(_message_tokens(m, count) for m in turn.values())
        if n > 0 and cost > room:
            break  # stop at the first turn that does not fit: the kept turns stay contiguous
        room -= cost
        out.update(turn)
    return [out[i] for i in sorted(out)], budget - room


def _turns(messages: list[Any]) -> list[tuple[int, int]]:
    """[start, end) index ranges: each user message opens a turn; whatever comes before the
    first user message is a turn of its own. System/developer messages inside a range are
    pinned by the caller, not counted with the turn."""
    starts = [i for i, m in enumerate(messages) if _role(m) == "user"]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    return [(s, e) for s, e in zip(starts, [*starts[1:], len(messages)], strict=True)]


def _role(message: Any) -> str | None:
    return message.get("role") if isinstance(message, dict) else None


def _message_tokens(message: Any, count: TokenCounter) -> int:
    if not isinstance(message, dict):
        return 0
    tokens = MESSAGE_OVERHEAD_TOKENS
    content = message.get("content")
    if isinstance(content, str):
        tokens += count(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                tokens += count(part["text"])
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                tokens += _function_tokens(call.get("function"), count)
    if "function_call" in message:  # the legacy single-call field
        tokens += _function_tokens(message["function_call"], count)
    return tokens


def _function_tokens(function: Any, count: TokenCounter) -> int:
    if not isinstance(function, dict):
        return 0
    return count(str(function.get("name") or "")) + count(str(function.get("arguments") or ""))


def _message_collapse(message: Any) -> Any:
    """The message with its text whitespace-collapsed: a new dict when anything changed, the
    same object otherwise (the input body is never changed)."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, str):
        collapsed = whitespace_collapse(content)
        return message if collapsed == content else {**message, "content": collapsed}
    if isinstance(content, list):
        parts = [_part_collapse(p) for p in content]
        if any(new is not old for new, old in zip(parts, content, strict=True)):
            return {**message, "content": parts}
    return message


def _part_collapse(part: Any) -> Any:
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        collapsed = whitespace_collapse(part["text"])
        if collapsed != part["text"]:
            return {**part, "text": collapsed}
    return part
