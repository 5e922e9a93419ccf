"""Field checks of each endpoint's request body, before any backend sees it.

Each check raises an OpenAI-shaped 400 (`proxy.errors.invalid`) whose `param` names the field.
Fields OpenAI does not define pass through untouched (vLLM's `top_k`, `guided_json`, ...).
"""
from __future__ import annotations

from typing import Any, Callable

from proxy.errors import invalid

_POSITIVE_INTS = ("max_tokens", "max_completion_tokens", "n")


def chat_check(body: dict[str, Any]) -> None:
    _messages_check(body.get("messages"))
    _streaming_check(body)
    _positive_ints_check(body)


def completions_check(body: dict[str, Any]) -> None:
    _prompt_check(body.get("prompt"))
    _streaming_check(body)
    _positive_ints_check(body)


def model_only_check(body: dict[str, Any]) -> None:
    """Endpoints whose fields vLLM checks itself (for now)."""


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "chat/completions": chat_check,
    "completions": completions_check,
}


def body_check(body: dict[str, Any], *, endpoint: str) -> None:
    CHECKS.get(endpoint, model_only_check)(body)


def _streaming_check(body: dict[str, Any]) -> None:
    if "stream" in body and not isinstance(body["stream"], bool):
        raise invalid("`stream` must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("`stream_options` must be an object.", param="stream_options")


def _positive_ints_check(body: dict[str, Any]) -> None:
    for name in _POSITIVE_INTS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise invalid(f"`{name}` must be a positive integer.", param=name)


def _messages_check(messages: Any) -> None:
    if messages is None:
        raise invalid("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("`messages` must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise invalid(
                f"`messages[{i}]` must be an object with a string `role`.", param=f"messages[{i}]"
            )


def _prompt_check(prompt: Any) -> None:
    if prompt is None:
        raise invalid("Missing required parameter: 'prompt'.", param="prompt")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        return  # a list of strings or of token ids: vLLM checks the details
    raise invalid("`prompt` must be a string or a non-empty array.", param="prompt")
