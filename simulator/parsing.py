"""Request-body validation for every simulated vLLM route.

Each parser turns a decoded JSON body into the few fields the simulator uses, or raises
:class:`ApiError` with the 400 vLLM would send (its error shape, the offending ``param``).
Unknown fields are ignored, as vLLM ignores them. The token counts computed here are the usage
numbers the responses report, so they follow :func:`simulator.text.count_tokens` throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simulator import text, wire


class ApiError(Exception):
    """A 4xx/5xx in vLLM's error shape, raised anywhere during validation."""

    def __init__(self, status: int, message: str, err_type: str = "BadRequestError",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.err_type, self.param = status, message, err_type, param

    def response(self) -> web.Response:
        return web.Response(status=self.status, content_type="application/json",
                            body=wire.error_body(self.message, self.err_type, self.status,
                                                 self.param))


@dataclass
class Prompt:
    """One prompt as the model sees it: text for seeding, token count for usage, and the
    token ids when the client sent ids (the prefix cache hashes those, or else the text)."""

    text: str
    tokens: int
    ids: list[int] | None = None


@dataclass
class GenRequest:
    """The validated fields of a generation request (chat, completion, response)."""

    prompts: list[Prompt]
    n: int
    max_tokens: int | None
    stop: list[str]
    stream: bool
    include_usage: bool
    continuous_usage: bool
    seed: int | None
    min_tokens: int
    ignore_eos: bool


@dataclass
class EmbedRequest:
    """``/v1/embeddings``: the inputs, and how to encode the vectors."""

    prompts: list[Prompt]
    base64: bool
    dimensions: int | None


@dataclass
class RerankRequest:
    """``/v1/rerank``: one query against documents; ``top_n`` 0 means all of them."""

    query: str
    documents: list[str]
    top_n: int
    return_documents: bool


def text_prompt(value: str) -> Prompt:
    return Prompt(value, text.count_tokens(value))


# ---- small checks ----------------------------------------------------------------------------

def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "BadRequestError", param)


def opt_int(body: dict[str, Any], key: str, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{key} must be an integer, got {value!r}", key)
    if value < minimum:
        raise bad(f"{key} must be at least {minimum}, got {value}.", key)
    return value


def opt_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{key} must be a boolean", key)
    return value


def _stop_list(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise bad("stop must be a string or a list of strings", "stop")


def _is_ids(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value))


def token_list(value: Any, param: str) -> list[int]:
    """Token ids that the vocabulary can decode (an empty list is allowed)."""
    if not isinstance(value, list) or not (value == [] or _is_ids(value)):
        raise bad(f"{param} must be a list of token ids", param)
    for tid in value:
        if not 0 <= tid < text.VOCAB_SIZE:
            raise bad(f"Token id {tid} is out of vocabulary", param)
    return value


def _ids_prompt(ids: list[int], param: str) -> Prompt:
    """A prompt given as token ids: its text is what the ids decode to."""
    return Prompt(text.detokenize(token_list(ids, param)), len(ids), ids)


# ---- chat and completions --------------------------------------------------------------------

def common(body: dict[str, Any], prompts: list[Prompt], max_tokens_keys: tuple[str, ...]
           ) -> GenRequest:
    stream = opt_bool(body, "stream", False)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise bad("stream_options must be an object", "stream_options")
        if not stream:
            raise bad("Stream options can only be defined when `stream=True`.", "stream_options")
    include_usage = bool(opts and opts.get("include_usage"))
    max_tokens = None
    for key in max_tokens_keys:
        max_tokens = opt_int(body, key, 1)
        if max_tokens is not None:
            break
    n = opt_int(body, "n", 1) or 1
    return GenRequest(prompts=prompts, n=n, max_tokens=max_tokens, stop=_stop_list(body),
                      stream=stream, include_usage=include_usage,
                      continuous_usage=include_usage and bool(opts.get("continuous_usage_stats")),
                      seed=opt_int(body, "seed", -(2 ** 63)),
                      min_tokens=opt_int(body, "min_tokens", 0) or 0,
                      ignore_eos=body.get("ignore_eos") is True)


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of messages", "messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad("each message must be an object with a string 'role'", "messages")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad("message content must be a string or a list of parts", "messages")
    return messages


def messages_prompt(body: dict[str, Any], generation_prompt: bool = True) -> Prompt:
    """The chat-templated prompt of ``messages``; embeddings default to no generation prompt."""
    messages = _check_messages(body.get("messages"))
    rendered = text.render_chat(messages,
                                bool(body.get("add_generation_prompt", generation_prompt)))
    return text_prompt(rendered)


def completion_prompts(body: dict[str, Any]) -> list[Prompt]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [text_prompt(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [text_prompt(p) for p in prompt]
        if _is_ids(prompt):
            return [Prompt(repr(prompt), len(prompt), prompt)]
        if all(_is_ids(p) for p in prompt):
            return [Prompt(repr(p), len(p), p) for p in prompt]
    raise bad("prompt must be a string, a list of strings, or a list of token ids", "prompt")


# ---- responses -------------------------------------------------------------------------------

def _item_message(item: Any) -> dict[str, Any]:
    """One Responses input item as a chat message (tool items become tool/assistant turns)."""
    if not isinstance(item, dict):
        raise bad("each input item must be an object", "input")
    kind = item.get("type", "message")
    if kind == "message":
        return _check_messages([item])[0]
    if kind == "function_call_output":
        return {"role": "tool", "content": str(item.get("output", ""))}
    if kind == "function_call":
        return {"role": "assistant", "content": str(item.get("arguments", ""))}
    raise bad(f"Unsupported input item type {kind!r}", "input")


def responses_prompt(body: dict[str, Any]) -> Prompt:
    """``instructions`` as a system turn, then ``input`` (a user string or a list of items)."""
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad("instructions must be a string", "instructions")
    messages = [{"role": "system", "content": instructions}] if instructions else []
    value = body.get("input")
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
    elif isinstance(value, list) and value:
        messages.extend(_item_message(item) for item in value)
    else:
        raise bad("input must be a string or a non-empty list of input items", "input")
    return text_prompt(text.render_chat(messages))


def responses_request(body: dict[str, Any]) -> GenRequest:
    return GenRequest(prompts=[responses_prompt(body)], n=1,
                      max_tokens=opt_int(body, "max_output_tokens", 1), stop=_stop_list(body),
                      stream=opt_bool(body, "stream", False), include_usage=False,
                      continuous_usage=False, seed=opt_int(body, "seed", -(2 ** 63)),
                      min_tokens=0, ignore_eos=body.get("ignore_eos") is True)


# ---- pooling: embeddings, rerank, score ------------------------------------------------------

def embedding_prompts(body: dict[str, Any]) -> list[Prompt]:
    """``input`` as a string, strings, token ids or token-id lists (or chat ``messages``)."""
    value = body.get("input")
    if value is None and "messages" in body:
        return [messages_prompt(body, generation_prompt=False)]
    if isinstance(value, str):
        return [text_prompt(value)]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return [text_prompt(v) for v in value]
        if _is_ids(value):
            return [_ids_prompt(value, "input")]
        if all(_is_ids(v) for v in value):
            return [_ids_prompt(v, "input") for v in value]
    raise bad("input must be a string, a list of strings, a list of token ids or a list of "
              "token-id lists", "input")


def embed_request(body: dict[str, Any], embedding_dim: int) -> EmbedRequest:
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad(f"encoding_format must be 'float' or 'base64', got {fmt!r}",
                  "encoding_format")
    dimensions = opt_int(body, "dimensions", 1)
    if dimensions is not None and dimensions > embedding_dim:
        raise bad(f"dimensions must be at most {embedding_dim} for this model, got "
                  f"{dimensions}", "dimensions")
    return EmbedRequest(embedding_prompts(body), fmt == "base64", dimensions)


def _texts(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise bad(f"{param} must be a string or a list of strings", param)


def rerank_request(body: dict[str, Any]) -> RerankRequest:
    query = body.get("query")
    if not isinstance(query, str):
        raise bad("query must be a string", "query")
    documents = body.get("documents")
    if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
        raise bad("documents must be a list of strings", "documents")
    if not documents:
        raise bad("At least one text_pair element must be given", "documents")
    return RerankRequest(query, documents, opt_int(body, "top_n", 0) or 0,
                         opt_bool(body, "return_documents", True))


# vLLM accepts the two sides of /score under any of these names.
_SCORE_KEYS = (("text_1", "text_2"), ("data_1", "data_2"), ("queries", "documents"),
               ("queries", "items"))


def score_pairs(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The (text_1, text_2) pairs to score: 1:1, 1:N (text_1 repeated) or N:N."""
    keys = next((k for k in _SCORE_KEYS if k[0] in body and k[1] in body), None)
    if keys is None:
        raise bad("text_1 and text_2 are required", "text_1")
    left, right = _texts(body[keys[0]], keys[0]), _texts(body[keys[1]], keys[1])
    if not left:
        raise bad("At least one text element must be given", keys[0])
    if not right:
        raise bad("At least one text_pair element must be given", keys[1])
    if len(left) == 1:
        left = left * len(right)
    elif len(left) != len(right):
        raise bad("Input lengths must be either 1:1, 1:N or N:N", keys[1])
    return list(zip(left, right, strict=True))


def check_pool_lengths(counts: list[int], limit: int) -> None:
    """vLLM rejects a pooling input longer than the context (it never truncates unasked)."""
    longest = max(counts, default=0)
    if longest > limit:
        raise bad(f"This model's maximum context length is {limit} tokens. However, you "
                  f"requested {longest} tokens in the input. Please reduce the length of the "
                  "input.")
