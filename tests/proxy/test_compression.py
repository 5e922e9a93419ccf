"""Prompt compression: fit a request into the route's prompt-token budget."""
from __future__ import annotations

import copy

from proxy.compression import (
    MESSAGE_OVERHEAD_TOKENS,
    compress,
    tokens_estimate_text,
    whitespace_collapse,
)

CHAT = "chat/completions"


def msg(role: str, words: int, tag: str = "") -> dict:
    return {"role": role, "content": (tag + " " + "word " * words).strip()}


def _tokens(message: dict) -> int:
    return MESSAGE_OVERHEAD_TOKENS + tokens_estimate_text(message["content"])


def test_under_budget_returns_the_same_object():
    body = {"messages": [msg("user", 10)]}
    out, removed = compress(body, endpoint=CHAT, budget_tokens=1000)
    assert out is body and removed == 0


def test_no_budget_returns_the_same_object():
    body = {"messages": [msg("user", 5000)]}
    assert compress(body, endpoint=CHAT, budget_tokens=0) == (body, 0)


def test_it_keeps_the_system_prompt_and_the_latest_turns():
    system = msg("system", 20, "rules")
    old = [msg("user", 100, "u1"), msg("assistant", 100, "a1")]
    recent = [msg("user", 100, "u2"), msg("assistant", 100, "a2"), msg("user", 20, "u3")]
    body = {"model": "m", "messages": [system, *old, *recent]}
    out, removed = compress(body, endpoint=CHAT, budget_tokens=450)
    assert out["messages"] == [system, *recent]
    assert out["model"] == "m"
    assert removed == sum(_tokens(m) for m in old)


def test_it_drops_the_oldest_turns_whole():
    messages = [msg("user", 50, "u1"), msg("assistant", 50, "a1"),
                msg("user", 50, "u2"), msg("assistant", 200, "a2"), msg("user", 5, "u3")]
    out, _ = compress({"messages": messages}, endpoint=CHAT, budget_tokens=200)
    # u2's turn (u2 + a2) does not fit: it goes whole, and so does everything older
    assert out["messages"] == [messages[-1]]


def test_it_keeps_the_last_user_message_even_over_budget():
    messages = [msg("system", 10), msg("user", 30, "old"), msg("user", 1000, "question")]
    out, removed = compress({"messages": messages}, endpoint=CHAT, budget_tokens=50)
    assert out["messages"] == [messages[0], messages[2]]
    assert removed > 0


def test_a_tool_call_and_its_results_go_or_stay_together():
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "lookup", "arguments": '{"q": "' + "x " * 200 + '"}'}}]}
    result = {"role": "tool", "tool_call_id": "c1", "content": ("result " * 200).strip()}
    messages = [msg("user", 10, "u1"), call, result, msg("assistant", 10, "a1"),
                msg("user", 10, "u2")]
    kept, _ = compress({"messages": messages}, endpoint=CHAT, budget_tokens=100)
    assert kept["messages"] == [messages[-1]]  # the whole first turn went, call and result
    kept, _ = compress({"messages": messages}, endpoint=CHAT, budget_tokens=700)
    assert kept["messages"] == messages  # nothing to drop: all fits
    # the latest turn's own tool exchange is never split either
    latest = [msg("user", 10, "u1"), msg("user", 10, "u2"), call, result]
    kept, _ = compress({"messages": latest}, endpoint=CHAT, budget_tokens=50)
    assert kept["messages"] == latest[1:]


def test_whitespace_collapses_outside_code_fences_only():
    text = ("Look   at\tthis:   \n\n\n\n\nplease\n"
            "```python\ndef f():\n    return  1\n\n\n\n```\n"
            "and    then\n    indented   line")
    assert whitespace_collapse(text) == (
        "Look at this:\n\nplease\n"
        "```python\ndef f():\n    return  1\n\n\n\n```\n"
        "and then\n    indented line")


def test_an_unclosed_fence_runs_to_the_end():
    text = "a    b\n```\ncode    stays\n\n\n\n"
    assert whitespace_collapse(text) == "a b\n```\ncode    stays\n\n\n\n"


def test_whitespace_is_collapsed_first_and_may_be_enough():
    padded = {"role": "user", "content": "word" + "          word" * 60}
    body = {"messages": [msg("user", 20, "first"), padded]}
    out, removed = compress(body, endpoint=CHAT, budget_tokens=120)
    assert len(out["messages"]) == 2  # nothing dropped
    assert out["messages"][1]["content"] == "word" + " word" * 60
    assert removed == tokens_estimate_text(padded["content"]) - tokens_estimate_text(
        out["messages"][1]["content"])


def test_text_parts_are_collapsed_and_other_parts_kept():
    image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "see     this" + " " * 400}, image]}]}
    out, removed = compress(body, endpoint=CHAT, budget_tokens=5)
    assert out["messages"][0]["content"] == [{"type": "text", "text": "see this"}, image]
    assert removed > 0


def test_it_never_changes_the_body_it_was_given():
    body = {"messages": [msg("system", 5), {"role": "user", "content": "a     b\n\n\n\n" * 50},
                         msg("assistant", 200), msg("user", 10)]}
    before = copy.deepcopy(body)
    out, _ = compress(body, endpoint=CHAT, budget_tokens=30)
    assert body == before and out is not body


def test_it_counts_the_tokens_removed():
    messages = [msg("user", 400, "old"), msg("assistant", 400, "old"), msg("user", 8, "new")]
    out, removed = compress({"messages": messages}, endpoint=CHAT, budget_tokens=50)
    assert removed == _tokens(messages[0]) + _tokens(messages[1]) == 2 * (4 + 501)
    assert out["messages"] == messages[2:]


def test_a_pluggable_counter_is_used():
    messages = [msg("user", 3, "a"), msg("assistant", 3, "b"), msg("user", 3, "c")]

    def count(text: str) -> int:  # e.g. a cached /tokenize count
        return 100

    out, removed = compress({"messages": messages}, endpoint=CHAT, budget_tokens=150, count=count)
    assert out["messages"] == messages[2:]
    assert removed == 2 * (100 + MESSAGE_OVERHEAD_TOKENS)


def test_completions_prompt_gets_whitespace_collapse_only():
    body = {"model": "m", "prompt": "Once    upon\n\n\n\na time" + "   " * 100}
    out, removed = compress(body, endpoint="completions", budget_tokens=10)
    assert out == {"model": "m", "prompt": "Once upon\n\na time"}
    assert removed == tokens_estimate_text(body["prompt"]) - tokens_estimate_text(out["prompt"])
    assert compress(body, endpoint="completions", budget_tokens=1000) == (body, 0)


def test_other_endpoints_pass_untouched():
    body = {"input": "a      b" * 1000}
    assert compress(body, endpoint="embeddings", budget_tokens=1) == (body, 0)


def test_the_estimate_is_four_chars_a_token_with_words_as_a_floor():
    assert tokens_estimate_text("abcdefgh") == 2
    assert tokens_estimate_text("a b c d e f") == 6
    assert tokens_estimate_text("") == 0
