"""Field checks of each endpoint's request body, before any backend sees it.

Every field that OpenAI's API reference (or vLLM's protocol, for rerank, score, tokenize and
detokenize) gives a type, range or enum is checked here; each failure raises an OpenAI-shaped 400
(`proxy.errors.invalid`) whose `param` names the field the way OpenAI does (`messages[2].role`,
`tools[0].function.name`) and whose `code` is OpenAI's (`invalid_type`, `invalid_value`,
`integer_above_max_value`, ...). Fields nobody defines pass through untouched, so vLLM's own
(`guided_json`, `chat_template_kwargs`, ...) keep working.

The design is a table per endpoint, field -> checker, walked over the keys the body actually has:
a typical chat body costs a few microseconds, and nothing is allocated unless a check fails.

Decisions (each one a module constant or a comment where it is made):
- `null` means absent, for every optional field: vLLM (the backend) treats it so, and careless
  clients send it. A required field that is null is missing.
- Integer fields take JSON integers only: `n: 2.0` is refused, as OpenAI does; so is `true`
  anywhere a number goes (Python's bool is an int, JSON's is not).
- The limits are OpenAI's documented ones (stop 4, top_logprobs 20, completion logprobs 5,
  embedding inputs 2048, tools 128, metadata 16 pairs); `n` and the token limits are settings.
- NUL and other control characters are allowed in text: they are valid JSON, tokenizers take
  them, and Sluice stores no prompt text.
- Where vLLM extends an OpenAI enum (content parts `audio_url`/`video_url`, `response_format`
  `structural_tag`, `encoding_format` `bytes`), the extension is accepted.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

from proxy.errors import ApiError, invalid

Check = Callable[[Any, str], None]  # (value, param) -> None; raises ApiError; never sees None

STOP_MAX = 4  # OpenAI's "up to 4 sequences"; vLLM takes more, but OpenAI clients never send more
TOP_LOGPROBS_MAX = 20
COMPLETION_LOGPROBS_MAX = 5
EMBEDDING_INPUTS_MAX = 2048
TOOLS_MAX = 128
METADATA_PAIRS_MAX = 16
METADATA_KEY_MAX_CHARS = 64
METADATA_VALUE_MAX_CHARS = 512
SAFETY_IDENTIFIER_MAX_CHARS = 128
NAME_MAX_CHARS = 64
NAME_PATTERN = re.compile(r"[a-zA-Z0-9_-]+")  # function and schema names, as OpenAI documents
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # vLLM's seed range (a torch long)
MODEL_MAX_CHARS = 200  # what the call log's requested_model column holds
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_ECHO_CHARS = 80  # how much of a bad value an error message repeats


# --- errors, in OpenAI's words ------------------------------------------------------------
def _kind(value: Any) -> str:
    return {
        type(None): "null", bool: "a boolean", int: "an integer", float: "a decimal",
        str: "a string", list: "an array", dict: "an object",
    }.get(type(value), "an unknown type")


def _shown(value: Any) -> str:
    """A bad value as an error message repeats it: short, whatever the client sent."""
    text = repr(value[: _ECHO_CHARS + 1] if type(value) is str else value)
    return text if len(text) <= _ECHO_CHARS else text[:_ECHO_CHARS] + "..."


def _wrong_type(param: str, expected: str, value: Any) -> ApiError:
    return invalid(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param=param, code="invalid_type",
    )


def _missing(param: str) -> ApiError:
    return invalid(f"Missing required parameter: '{param}'.", param=param,
                   code="missing_required_parameter")


def _not_one_of(param: str, value: Any, allowed: Iterable[str]) -> ApiError:
    names = [f"'{name}'" for name in allowed]
    listed = ", ".join(names[:-1]) + f", and {names[-1]}" if len(names) > 1 else names[0]
    return invalid(f"Invalid value for '{param}': {_shown(value)}. Supported values are: {listed}.",
                   param=param, code="invalid_value")


def _bad_value(param: str, why: str) -> ApiError:
    return invalid(f"Invalid value for '{param}': {why}", param=param, code="invalid_value")


def _out_of_range(param: str, value: int | float, bound: int | float, *, above: bool,
                  kind: str = "integer", strict: bool = False) -> ApiError:
    """`kind` is the field's type ("integer" or "decimal"), as OpenAI's codes name it; `strict`
    says the bound itself is out of range."""
    side, sign = ("above maximum", "<") if above else ("below minimum", ">")
    return invalid(
        f"Invalid '{param}': {kind} {side} value. Expected a value {sign}{'' if strict else '='} "
        f"{bound}, but got {_shown(value)} instead.",
        param=param, code=f"{kind}_{'above_max' if above else 'below_min'}_value",
    )


def _bad_length(param: str, what: str, size: int, bound: int, *, above: bool) -> ApiError:
    if not above and size == 0:
        return invalid(
            f"Invalid '{param}': empty {what}. Expected a {what} with minimum length {bound}, "
            f"but got an empty {what} instead.", param=param, code=f"empty_{what}",
        )
    side = "maximum" if above else "minimum"
    return invalid(
        f"Invalid '{param}': {what} too {'long' if above else 'short'}. Expected a {what} with "
        f"{side} length {bound}, but got a {what} with length {size} instead.",
        param=param, code=f"{what}_{'above_max' if above else 'below_min'}_length",
    )


# --- scalar checkers ----------------------------------------------------------------------
def _boolean(value: Any, param: str) -> None:
    if type(value) is not bool:
        raise _wrong_type(param, "a boolean", value)


def _string(value: Any, param: str) -> None:
    if type(value) is not str:
        raise _wrong_type(param, "a string", value)


def _object(value: Any, param: str) -> None:
    if type(value) is not dict:
        raise _wrong_type(param, "an object", value)


def _string_max(limit: int) -> Check:
    def check(value: Any, param: str) -> None:
        _string(value, param)
        if len(value) > limit:
            raise _bad_length(param, "string", len(value), limit, above=True)
    return check


def _name(value: Any, param: str) -> None:
    """A function or schema name: OpenAI's ^[a-zA-Z0-9_-]{1,64}$ (templates print it raw)."""
    _string(value, param)
    if not value:
        raise _bad_length(param, "string", 0, 1, above=False)
    if len(value) > NAME_MAX_CHARS:
        raise _bad_length(param, "string", len(value), NAME_MAX_CHARS, above=True)
    if NAME_PATTERN.fullmatch(value) is None:
        raise _bad_value(param, "string does not match pattern. Expected a string that matches "
                                "the pattern '^[a-zA-Z0-9_-]+$'.")


def _model(value: Any, param: str) -> None:
    """The one body field the call log records: PostgreSQL refuses NUL, and a name longer
    than the column would fail the whole batch of records it is written with."""
    _string(value, param)
    if len(value) > MODEL_MAX_CHARS:
        raise _bad_length(param, "string", len(value), MODEL_MAX_CHARS, above=True)
    if CONTROL_CHARS.search(value) is not None:
        raise _bad_value(param, "a model name cannot contain control characters.")


def _integer(lo: int | None = None, hi: int | None = None, *, hi_setting: str = "") -> Check:
    """An integer in [lo, hi]; `hi_setting` names a Django setting read at call time, so that
    tests and operators can change it without a restart."""
    def check(value: Any, param: str) -> None:
        if type(value) is not int:
            raise _wrong_type(param, "an integer", value)
        if lo is not None and value < lo:
            raise _out_of_range(param, value, lo, above=False)
        top = getattr(settings, hi_setting) if hi_setting else hi
        if top is not None and value > top:
            raise _out_of_range(param, value, top, above=True)
    return check


def _number(lo: float | None = None, hi: float | None = None, *, above_lo: bool = False) -> Check:
    """A JSON number (integer or decimal, never a boolean) in [lo, hi], or (lo, hi] with
    `above_lo`. orjson already refuses NaN and infinities."""
    def check(value: Any, param: str) -> None:
        kind = type(value)
        if kind is not float and kind is not int:
            raise _wrong_type(param, "a decimal", value)
        if lo is not None and (value <= lo if above_lo else value < lo):
            raise _out_of_range(param, value, lo, above=False, kind="decimal", strict=above_lo)
        if hi is not None and value > hi:
            raise _out_of_range(param, value, hi, above=True, kind="decimal")
    return check


def _enum(*allowed: str) -> Check:
    choices = frozenset(allowed)

    def check(value: Any, param: str) -> None:
        if type(value) is not str:
            raise _wrong_type(param, "a string", value)
        if value not in choices:
            raise _not_one_of(param, value, allowed)
    return check


Option = tuple[tuple[type, ...], Check]  # (the JSON types it takes, its check)


def _either(*options: Option, expected: str) -> Check:
    """A union such as `string or array`: the option whose JSON type matches decides."""
    def check(value: Any, param: str) -> None:
        for kinds, sub in options:
            if type(value) in kinds:
                return sub(value, param)
        raise _wrong_type(param, expected, value)
    return check


# --- composite checkers -------------------------------------------------------------------
def _array(item: Check | None = None, *, min_items: int = 0, max_items: int | None = None) -> Check:
    def check(value: Any, param: str) -> None:
        if type(value) is not list:
            raise _wrong_type(param, "an array", value)
        if len(value) < min_items:
            raise _bad_length(param, "array", len(value), min_items, above=False)
        if max_items is not None and len(value) > max_items:
            raise _bad_length(param, "array", len(value), max_items, above=True)
        if item is not None:
            for i, element in enumerate(value):
                item(element, f"{param}[{i}]")
    return check


def _shape(fields: dict[str, Check], *, required: tuple[str, ...] = ()) -> Check:
    """An object whose known keys are checked; unknown keys pass, as vLLM's models allow."""
    def check(value: Any, param: str) -> None:
        _object(value, param)
        for key in required:
            if value.get(key) is None:
                raise _missing(f"{param}.{key}")
        for key, sub in fields.items():
            field = value.get(key)
            if field is not None:
                sub(field, f"{param}.{key}")
    return check


def _type_of(value: Any, param: str, tag: str = "type") -> str:
    """The string `tag` of an object whose other fields depend on it."""
    _object(value, param)
    kind = value.get(tag)
    if kind is None:
        raise _missing(f"{param}.{tag}")
    if type(kind) is not str:
        raise _wrong_type(f"{param}.{tag}", "a string", kind)
    return kind


def _tagged(variants: dict[str, Check], *, tag: str = "type") -> Check:
    """An object whose `tag` picks the shape of the rest (content parts, tools, messages)."""
    allowed = tuple(variants)

    def check(value: Any, param: str) -> None:
        kind = _type_of(value, param, tag)
        variant = variants.get(kind)
        if variant is None:
            raise _not_one_of(f"{param}.{tag}", kind, allowed)
        variant(value, param)
    return check


def _token_ids(value: Any, param: str) -> None:
    """A list of token ids; they are non-negative integers (vLLM checks the vocabulary)."""
    for i, token in enumerate(value):
        if type(token) is not int:
            raise _wrong_type(f"{param}[{i}]", "an integer", token)
        if token < 0:
            raise _out_of_range(f"{param}[{i}]", token, 0, above=False)


def _texts_or_tokens(*, max_items: int | None, empty_text: bool) -> Check:
    """OpenAI's prompt/input union: a string, or a non-empty array of strings, of token ids,
    or of non-empty token-id arrays, never mixed. `max_items` bounds the number of inputs: a
    flat token-id array is one input, however long."""
    expected = "one of a string, an array of strings, of integers, or of integer arrays"

    def check(value: Any, param: str) -> None:
        if type(value) is str:
            if not value and not empty_text:
                raise _bad_length(param, "string", 0, 1, above=False)
            return
        if type(value) is not list:
            raise _wrong_type(param, expected, value)
        if not value:
            raise _bad_length(param, "array", 0, 1, above=False)
        first = type(value[0])
        if max_items is not None and len(value) > max_items and first is not int:
            raise _bad_length(param, "array", len(value), max_items, above=True)
        if first is str:
            _texts(value, param, empty_text=empty_text)
        elif first is int:
            _token_ids(value, param)
        elif first is list:
            _token_id_arrays(value, param)
        else:
            raise _wrong_type(f"{param}[0]", "a string, an integer or an array", value[0])
    return check


def _texts(value: list, param: str, *, empty_text: bool) -> None:
    for i, text in enumerate(value):
        if type(text) is not str:
            raise _wrong_type(f"{param}[{i}]", "a string", text)
        if not text and not empty_text:
            raise _bad_length(f"{param}[{i}]", "string", 0, 1, above=False)


def _token_id_arrays(value: list, param: str) -> None:
    for i, tokens in enumerate(value):
        if type(tokens) is not list:
            raise _wrong_type(f"{param}[{i}]", "an array", tokens)
        if not tokens:
            raise _bad_length(f"{param}[{i}]", "array", 0, 1, above=False)
        _token_ids(tokens, f"{param}[{i}]")


def _stop(value: Any, param: str) -> None:
    if type(value) is str:
        return
    if type(value) is not list:
        raise _wrong_type(param, "one of a string or an array of strings", value)
    if len(value) > STOP_MAX:
        raise _bad_length(param, "array", len(value), STOP_MAX, above=True)
    _texts(value, param, empty_text=True)


def _logit_bias(value: Any, param: str) -> None:
    """Token ids (as JSON object keys) to a bias in [-100, 100]."""
    _object(value, param)
    for key, bias in value.items():
        if not (key.isascii() and key.isdigit()):
            raise _bad_value(param, f"key {_shown(key)} is not a token id (a non-negative "
                                    f"integer written as a string).")
        _BIAS(bias, f"{param}.{key}")


def _metadata(value: Any, param: str) -> None:
    """Up to 16 string pairs: keys up to 64 characters, values up to 512."""
    _object(value, param)
    if len(value) > METADATA_PAIRS_MAX:
        raise invalid(
            f"Invalid '{param}': too many properties. Expected an object with at most "
            f"{METADATA_PAIRS_MAX} properties, but got an object with {len(value)} properties "
            f"instead.", param=param, code="object_above_max_properties",
        )
    for key, text in value.items():
        if len(key) > METADATA_KEY_MAX_CHARS:
            raise _bad_length(param, "string", len(key), METADATA_KEY_MAX_CHARS, above=True)
        _METADATA_VALUE(text, f"{param}.{key}")


_BIAS = _number(-100, 100)
_METADATA_VALUE = _string_max(METADATA_VALUE_MAX_CHARS)
_TEXT: Option = ((str,), _string)


# --- chat messages ------------------------------------------------------------------------
def _url_part(key: str) -> Check:
    """`{"type": key, key: {"url": str}}`: image_url, and vLLM's audio_url and video_url."""
    return _shape({key: _shape({"url": _string}, required=("url",))}, required=(key,))


def _passes(value: Any, param: str) -> None:
    """Nothing more to check: the rest of this object is the backend's to judge."""


_TEXT_PART = _shape({"text": _string}, required=("text",))
_IMAGE_PART = _shape(
    {"image_url": _shape({"url": _string, "detail": _enum("auto", "low", "high", "original")},
                         required=("url",))},
    required=("image_url",),
)
_AUDIO_PART = _shape(
    {"input_audio": _shape({"data": _string, "format": _enum("wav", "mp3")},
                           required=("data", "format"))},
    required=("input_audio",),
)
_FILE_PART = _shape(
    {"file": _shape({"file_data": _string, "file_id": _string, "filename": _string})},
    required=("file",),
)
# vLLM's multimodal parts (chat_utils.ChatCompletionContentPartParam) beyond OpenAI's.
_VLLM_PARTS: dict[str, Check] = {
    "audio_url": _url_part("audio_url"), "video_url": _url_part("video_url"),
    "image_embeds": _passes, "audio_embeds": _passes, "prompt_embeds": _passes,
    "input_text": _passes, "input_image": _passes,
}
# OpenAI gives system/developer/tool messages text parts only; vLLM renders images there for
# multimodal templates, so every non-assistant message takes every input part.
_INPUT_PART = _tagged({
    "text": _TEXT_PART, "image_url": _IMAGE_PART, "input_audio": _AUDIO_PART,
    "file": _FILE_PART, **_VLLM_PARTS,
})
_ASSISTANT_PART = _tagged({
    "text": _TEXT_PART,
    "refusal": _shape({"refusal": _string}, required=("refusal",)),
    "thinking": _passes,  # vLLM's interleaved reasoning part
})


def _content(part: Check) -> Check:
    """Message content: a string, or a non-empty array of parts."""
    return _either(_TEXT, ((list,), _array(part, min_items=1)),
                   expected="one of a string or an array of objects")


_FUNCTION_CALL = _shape({"name": _string, "arguments": _string}, required=("name", "arguments"))
_TOOL_CALL = _tagged({
    "function": _shape({"id": _string, "function": _FUNCTION_CALL}, required=("id", "function")),
    "custom": _shape(
        {"id": _string,
         "custom": _shape({"name": _string, "input": _string}, required=("name", "input"))},
        required=("id", "custom"),
    ),
})
_USER_FIELDS = {"content": _content(_INPUT_PART), "name": _string}
_USER = _shape(_USER_FIELDS, required=("content",))
_TOOL = _shape({**_USER_FIELDS, "tool_call_id": _string}, required=("content", "tool_call_id"))
_FUNCTION = _shape({"content": _string, "name": _string}, required=("name",))
_ASSISTANT_SHAPE = _shape({
    "content": _content(_ASSISTANT_PART),
    "name": _string,
    "refusal": _string,
    "tool_calls": _array(_TOOL_CALL),
    "function_call": _FUNCTION_CALL,
    "audio": _shape({"id": _string}, required=("id",)),
})


def _assistant(message: dict, param: str) -> None:
    """Content may be null only where the turn is a call (or an earlier audio reply)."""
    _ASSISTANT_SHAPE(message, param)
    if message.get("content") is None and not (
        message.get("tool_calls") or message.get("function_call") or message.get("audio")
    ):
        raise _missing(f"{param}.content")


_MESSAGE = _tagged(
    {"system": _USER, "developer": _USER, "user": _USER, "assistant": _assistant,
     "tool": _TOOL, "function": _FUNCTION},
    tag="role",
)
_MESSAGES = _array(_MESSAGE, min_items=1)


# --- tools and formats --------------------------------------------------------------------
_FUNCTION_DEFINITION = _shape(
    {"name": _name, "description": _string, "parameters": _object, "strict": _boolean},
    required=("name",),
)
_TOOLS = _array(
    _tagged({
        "function": _shape({"function": _FUNCTION_DEFINITION}, required=("function",)),
        "custom": _shape(
            {"custom": _shape({"name": _name, "description": _string, "format": _object},
                              required=("name",))},
            required=("custom",),
        ),
    }),
    max_items=TOOLS_MAX,
)
_NAMED = _shape({"name": _string}, required=("name",))
_TOOL_CHOICE = _either(
    ((str,), _enum("none", "auto", "required")),
    ((dict,), _tagged({
        "function": _shape({"function": _NAMED}, required=("function",)),
        "custom": _shape({"custom": _NAMED}, required=("custom",)),
        "allowed_tools": _shape(
            {"allowed_tools": _shape({"mode": _enum("auto", "required"), "tools": _array()},
                                     required=("mode", "tools"))},
            required=("allowed_tools",),
        ),
    })),
    expected="one of a string or an object",
)
_FUNCTION_CHOICE = _either(((str,), _enum("none", "auto")), ((dict,), _NAMED),
                           expected="one of a string or an object")
_RESPONSE_FORMAT = _tagged({
    "text": _passes,
    "json_object": _passes,
    "json_schema": _shape(
        {"json_schema": _shape(
            {"name": _name, "description": _string, "schema": _object, "strict": _boolean},
            required=("name",),
        )},
        required=("json_schema",),
    ),
    "structural_tag": _passes,  # vLLM's; vLLM checks its body
})
_STREAM_OPTIONS = _shape({
    "include_usage": _boolean, "include_obfuscation": _boolean,
    "continuous_usage_stats": _boolean,  # vLLM's
})
_REASONING_EFFORT = _enum("none", "minimal", "low", "medium", "high", "xhigh", "max")
_SERVICE_TIER = _enum("auto", "default", "flex", "scale", "priority", "fast")
_LOW_MEDIUM_HIGH = _enum("low", "medium", "high")  # verbosity, search_context_size


# --- endpoint tables ----------------------------------------------------------------------
_MAX_TOKENS = _integer(1, hi_setting="SLUICE_MAX_TOKENS_LIMIT")
_COMMON: dict[str, Check] = {"model": _model}  # schemas.body_parse has seen it is a string

# Sampling fields that chat and completions share (OpenAI's, then vLLM's with a clear type).
_SAMPLING: dict[str, Check] = {
    **_COMMON,
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "n": _integer(1, hi_setting="SLUICE_MAX_N"),
    "max_tokens": _MAX_TOKENS,
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "logit_bias": _logit_bias,
    "seed": _integer(INT64_MIN, INT64_MAX),
    "stop": _stop,
    "stream": _boolean,
    "stream_options": _STREAM_OPTIONS,
    "user": _string,
    "response_format": _RESPONSE_FORMAT,
    "top_k": _integer(-1),
    "min_p": _number(0, 1),
    "repetition_penalty": _number(0, above_lo=True),
    "min_tokens": _integer(0, hi_setting="SLUICE_MAX_TOKENS_LIMIT"),
}

CHAT_FIELDS: dict[str, Check] = {
    **_SAMPLING,
    "messages": _MESSAGES,
    "max_completion_tokens": _MAX_TOKENS,
    "logprobs": _boolean,
    "top_logprobs": _integer(0, TOP_LOGPROBS_MAX),
    "tools": _TOOLS,
    "tool_choice": _TOOL_CHOICE,
    "parallel_tool_calls": _boolean,
    "functions": _array(_FUNCTION_DEFINITION, max_items=TOOLS_MAX),
    "function_call": _FUNCTION_CHOICE,
    "modalities": _array(_enum("text", "audio")),
    "audio": _shape({"format": _enum("wav", "aac", "mp3", "flac", "opus", "pcm16"),
                     "voice": _either(_TEXT, ((dict,), _shape({"id": _string}, required=("id",))),
                                      expected="one of a string or an object")},
                    required=("format", "voice")),
    "prediction": _shape({"type": _enum("content"), "content": _content(_TEXT_PART)},
                         required=("type", "content")),
    "reasoning_effort": _REASONING_EFFORT,
    "service_tier": _SERVICE_TIER,
    "verbosity": _LOW_MEDIUM_HIGH,
    "metadata": _metadata,
    "store": _boolean,
    "web_search_options": _shape({"search_context_size": _LOW_MEDIUM_HIGH,
                                  "user_location": _object}),
    "prompt_cache_key": _string,
    "prompt_cache_retention": _enum("in_memory", "24h"),
    "safety_identifier": _string_max(SAFETY_IDENTIFIER_MAX_CHARS),
}

COMPLETIONS_FIELDS: dict[str, Check] = {
    **_SAMPLING,
    "prompt": _texts_or_tokens(max_items=None, empty_text=True),
    # 0 is OpenAI's minimum here: with `echo` it scores the prompt alone (see _echo_rule).
    "max_tokens": _integer(0, hi_setting="SLUICE_MAX_TOKENS_LIMIT"),
    "suffix": _string,
    "echo": _boolean,
    "best_of": _integer(1, hi_setting="SLUICE_MAX_N"),
    "logprobs": _integer(0, COMPLETION_LOGPROBS_MAX),
}

EMBEDDINGS_FIELDS: dict[str, Check] = {
    **_COMMON,
    "input": _texts_or_tokens(max_items=EMBEDDING_INPUTS_MAX, empty_text=False),
    "messages": _MESSAGES,  # vLLM's chat-style embedding request
    "encoding_format": _enum("float", "base64", "bytes", "bytes_only"),
    "dimensions": _integer(1),
    "user": _string,
    "add_special_tokens": _boolean,
}


def _response_part(value: Any, param: str) -> None:
    """A Responses content part: any string `type`; text parts carry a string `text`."""
    if _type_of(value, param) in ("input_text", "output_text"):
        _TEXT_PART(value, param)


_RESPONSE_MESSAGE = _shape(
    {"role": _enum("user", "assistant", "system", "developer"),
     "content": _either(_TEXT, ((list,), _array(_response_part)),
                        expected="one of a string or an array of objects")},
    required=("role", "content"),
)
_RESPONSE_ITEMS: dict[str, Check] = {
    "message": _RESPONSE_MESSAGE,
    "function_call": _shape({"call_id": _string, "name": _string, "arguments": _string},
                            required=("call_id", "name", "arguments")),
    "function_call_output": _shape(
        {"call_id": _string,
         "output": _either(_TEXT, ((list,), _array(_response_part)),
                           expected="one of a string or an array of objects")},
        required=("call_id", "output"),
    ),
}


def _response_item(value: Any, param: str) -> None:
    """One input item: a message (typed or the easy `{role, content}` form), a function call
    or its output, or any other item with a string `type` (OpenAI's many tool items)."""
    _object(value, param)
    kind = value.get("type")
    if kind is None:
        kind = "message" if "role" in value else "item_reference"
    if type(kind) is not str:
        raise _wrong_type(f"{param}.type", "a string", kind)
    if kind == "item_reference":
        _shape({"id": _string}, required=("id",))(value, param)
        return
    _RESPONSE_ITEMS.get(kind, _passes)(value, param)


_RESPONSE_FUNCTION = _shape(
    {"name": _name, "description": _string, "parameters": _object, "strict": _boolean},
    required=("name",),
)


def _response_tool(value: Any, param: str) -> None:
    """Function tools are checked like chat's; OpenAI's hosted tools need only their type."""
    if _type_of(value, param) == "function":
        _RESPONSE_FUNCTION(value, param)


def _response_tool_choice(value: Any, param: str) -> None:
    """A forced tool: `{"type": "function", "name": ...}` or a hosted tool's type."""
    if _type_of(value, param) == "function":
        _NAMED(value, param)


_RESPONSE_TEXT = _shape({
    "format": _tagged({
        "text": _passes,
        "json_object": _passes,
        "json_schema": _shape(
            {"name": _name, "schema": _object, "description": _string, "strict": _boolean},
            required=("name", "schema"),
        ),
    }),
    "verbosity": _LOW_MEDIUM_HIGH,
})

RESPONSES_FIELDS: dict[str, Check] = {
    **_COMMON,
    "input": _either(_TEXT, ((list,), _array(_response_item)),
                     expected="one of a string or an array of objects"),
    "instructions": _string,
    "max_output_tokens": _MAX_TOKENS,
    "max_tool_calls": _integer(1),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "top_logprobs": _integer(0, TOP_LOGPROBS_MAX),
    "stream": _boolean,
    "stream_options": _STREAM_OPTIONS,
    "tools": _array(_response_tool),
    "tool_choice": _either(((str,), _enum("none", "auto", "required")),
                           ((dict,), _response_tool_choice),
                           expected="one of a string or an object"),
    "parallel_tool_calls": _boolean,
    "text": _RESPONSE_TEXT,
    "store": _boolean,
    "background": _boolean,
    "previous_response_id": _string,
    "metadata": _metadata,
    "include": _array(_string),
    "reasoning": _shape({"effort": _REASONING_EFFORT,
                         "summary": _enum("auto", "concise", "detailed"),
                         "generate_summary": _enum("auto", "concise", "detailed")}),
    "service_tier": _SERVICE_TIER,
    "truncation": _enum("auto", "disabled"),
    "user": _string,
    "prompt_cache_key": _string,
    "prompt_cache_retention": _enum("in_memory", "24h"),
    "safety_identifier": _string_max(SAFETY_IDENTIFIER_MAX_CHARS),
}


# vLLM's score and rerank inputs: text, or `{"content": [parts]}` for multimodal models.
_MULTIMODAL = _shape({"content": _array(_INPUT_PART)}, required=("content",))
_TEXT_DOCUMENT = _shape({"text": _string}, required=("text",))


def _document_object(value: dict, param: str) -> None:
    """A rerank document object: vLLM's multimodal `{"content": [...]}` or `{"text": ...}`."""
    (_MULTIMODAL if "content" in value else _TEXT_DOCUMENT)(value, param)


_DOCUMENT = _either(_TEXT, ((dict,), _document_object), expected="one of a string or an object")
_SCORE_INPUT = _either(
    _TEXT,
    ((list,), _array(_either(_TEXT, ((dict,), _MULTIMODAL),
                             expected="one of a string or an object"), min_items=1)),
    ((dict,), _MULTIMODAL),
    expected="one of a string, an array or an object",
)
_SCORE_PAIRS = (("text_1", "text_2"), ("data_1", "data_2"), ("queries", "documents"),
                ("queries", "items"))

RERANK_FIELDS: dict[str, Check] = {
    **_COMMON,
    "query": _either(_TEXT, ((dict,), _MULTIMODAL), expected="one of a string or an object"),
    "documents": _either(((list,), _array(_DOCUMENT, min_items=1)), ((dict,), _MULTIMODAL),
                         expected="one of an array or an object"),
    "top_n": _integer(0),  # vLLM's default, 0, means every document
    "return_documents": _boolean,
    "user": _string,
}
SCORE_FIELDS: dict[str, Check] = {
    **_COMMON,
    **{name: _SCORE_INPUT for pair in _SCORE_PAIRS for name in pair},
    "user": _string,
}
TOKENIZE_FIELDS: dict[str, Check] = {
    **_COMMON,
    "prompt": _string,
    "messages": _MESSAGES,
    "tools": _TOOLS,
    "add_special_tokens": _boolean,
    "add_generation_prompt": _boolean,
    "continue_final_message": _boolean,
    "return_token_strs": _boolean,
}
DETOKENIZE_FIELDS: dict[str, Check] = {
    **_COMMON,
    **_COMMON,
    "tokens": _either(((list,), _token_ids), expected="an array of integers"),
}


# --- rules across fields ------------------------------------------------------------------
def _stream_rule(body: dict[str, Any]) -> None:
    """OpenAI refuses stream_options without stream; vLLM does too."""
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise _bad_value("stream_options", "'stream_options' is only allowed when 'stream' is "
                                           "true.")


def _logprobs_rule(body: dict[str, Any]) -> None:
    """top_logprobs asks for alternatives to tokens whose logprobs must be on; 0 asks nothing."""
    if body.get("top_logprobs") and body.get("logprobs") is not True:
        raise _bad_value("top_logprobs", "'logprobs' must be true when 'top_logprobs' is used.")


def _tool_choice_rule(body: dict[str, Any]) -> None:
    """A named tool_choice (or legacy function_call) must name a function the request defines:
    vLLM would otherwise fail while building the guided-decoding schema."""
    choice = body.get("tool_choice")
    if type(choice) is dict and choice.get("type") == "function":
        names = [tool["function"]["name"] for tool in body.get("tools") or ()
                 if tool.get("type") == "function"]
        _named_check(choice["function"]["name"], names, "tool_choice.function.name")
    call = body.get("function_call")
    if type(call) is dict:
        names = [function["name"] for function in body.get("functions") or ()]
        _named_check(call["name"], names, "function_call.name")


def _named_check(name: str, names: list[str], param: str) -> None:
    if name not in names:
        raise _bad_value(param, f"no function named {_shown(name)} is among the request's "
                                f"{'tools' if param.startswith('tool') else 'functions'}.")


def _best_of_rule(body: dict[str, Any]) -> None:
    best_of, n = body.get("best_of"), body.get("n") or 1
    if best_of is not None and best_of < n:
        raise _out_of_range("best_of", best_of, n, above=False)


def _echo_rule(body: dict[str, Any]) -> None:
    """max_tokens 0 generates nothing: useful only to echo (score) the prompt, as vLLM does."""
    if body.get("max_tokens") == 0 and body.get("echo") is not True:
        raise _out_of_range("max_tokens", 0, 1, above=False)


def _one_of_rule(*names: str) -> Callable[[dict[str, Any]], None]:
    """The body needs one of `names` (a vLLM request type picked by which field is present)."""
    def rule(body: dict[str, Any]) -> None:
        if all(body.get(name) is None for name in names):
            raise _missing(names[0])
    return rule


def _score_rule(body: dict[str, Any]) -> None:
    """Score takes its two sides under any of vLLM's names: text_1/text_2, queries/documents..."""
    for first, second in _SCORE_PAIRS:
        if body.get(first) is not None and body.get(second) is not None:
            return
    for first, second in _SCORE_PAIRS:
        if body.get(first) is not None or body.get(second) is not None:
            raise _missing(second if body.get(first) is not None else first)
    raise _missing("text_1")


Rule = Callable[[dict[str, Any]], None]
_CHAT_RULES: tuple[Rule, ...] = (
    _one_of_rule("messages"), _stream_rule, _logprobs_rule, _tool_choice_rule,
)
ENDPOINTS: dict[str, tuple[dict[str, Check], tuple[Rule, ...]]] = {
    "chat/completions": (CHAT_FIELDS, _CHAT_RULES),
    "completions": (COMPLETIONS_FIELDS, (
        _one_of_rule("prompt", "prompt_embeds"), _stream_rule, _best_of_rule, _echo_rule,
    )),
    "embeddings": (EMBEDDINGS_FIELDS, (_one_of_rule("input", "messages"),)),
    "responses": (RESPONSES_FIELDS, (_one_of_rule("input"), _stream_rule)),
    "rerank": (RERANK_FIELDS, (_one_of_rule("query"), _one_of_rule("documents"))),
    "score": (SCORE_FIELDS, (_score_rule,)),
    "tokenize": (TOKENIZE_FIELDS, (_one_of_rule("prompt", "messages"),)),
    "detokenize": (DETOKENIZE_FIELDS, (_one_of_rule("tokens"),)),
}


def body_check(body: dict[str, Any], *, endpoint: str) -> None:
    """Raise an OpenAI-shaped 400 for the first field of `body` that its endpoint refuses.

    Fields are checked in the body's order, then the rules that relate fields; of a body for
    an endpoint Sluice has no table for, only `model` is checked.
    """
    fields, rules = ENDPOINTS.get(endpoint, _NO_CHECKS)
    for name, value in body.items():
        check = fields.get(name)
        if check is not None and value is not None:
            check(value, name)
    for rule in rules:
        rule(body)


_NO_CHECKS: tuple[dict[str, Check], tuple[Rule, ...]] = (_COMMON, ())
