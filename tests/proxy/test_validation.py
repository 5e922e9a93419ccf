"""Request validation: every field OpenAI (or vLLM) gives a type, range or enum is checked
before any backend sees the request, and the 400 names the field as OpenAI would.

Most tests call `body_check` directly with tables of bad bodies and the `param` and `code` the
400 must carry; a few go through the real gateway to show that a refused request never reaches
a simulator, is logged as a call, and that valid bodies with vLLM's own fields still work.

Cost (not a timed unit test; measured with timeit on the development machine): a typical chat
body, 3 messages plus temperature, max_tokens, stream and stream_options, validates in ~4 µs;
GOOD_CHATS["a tool round trip"] (5 messages, a tool, a named tool_choice) in ~9 µs:

    DJANGO_SETTINGS_MODULE=config.settings .venv/bin/python -m timeit \\
      -s "import django; django.setup(); from tests.proxy.test_validation import TYPICAL_CHAT" \\
      -s "from proxy.validation import body_check" \\
      "body_check(TYPICAL_CHAT, endpoint='chat/completions')"
"""
from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request

import openai
import pytest

from proxy.errors import ApiError
from proxy.validation import EMBEDDING_INPUTS_MAX, STOP_MAX, TOOLS_MAX, body_check

USER = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
TYPICAL_CHAT = {
    "model": "default",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of Norway?"},
        {"role": "assistant", "content": "Oslo."},
    ],
    "temperature": 0.7,
    "max_tokens": 256,
    "stream": True,
    "stream_options": {"include_usage": True},
}


def chat(**fields) -> dict:
    return {"model": "default", "messages": [USER], **fields}


def refusal(body: dict, endpoint: str = "chat/completions") -> ApiError:
    with pytest.raises(ApiError) as caught:
        body_check(body, endpoint=endpoint)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    return caught.value


def assert_refused(body: dict, param: str, code: str, endpoint: str = "chat/completions"):
    error = refusal(body, endpoint)
    assert (error.param, error.code) == (param, code), error.message


# --- chat: top-level fields ---------------------------------------------------------------
BAD_CHAT_FIELDS = [
    ({"messages": None}, "messages", "missing_required_parameter"),
    ({"messages": []}, "messages", "empty_array"),
    ({"messages": "hi"}, "messages", "invalid_type"),
    ({"model": "m" * 201}, "model", "string_above_max_length"),
    ({"model": "gpt\x00-4"}, "model", "invalid_value"),
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"temperature": True}, "temperature", "invalid_type"),
    ({"temperature": 2.5}, "temperature", "decimal_above_max_value"),
    ({"temperature": -0.1}, "temperature", "decimal_below_min_value"),
    ({"top_p": 1.01}, "top_p", "decimal_above_max_value"),
    ({"n": 0}, "n", "integer_below_min_value"),
    ({"n": 2.0}, "n", "invalid_type"),
    ({"n": True}, "n", "invalid_type"),
    ({"n": 10**6}, "n", "integer_above_max_value"),
    ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ({"max_tokens": "10"}, "max_tokens", "invalid_type"),
    ({"max_tokens": 10**12}, "max_tokens", "integer_above_max_value"),
    ({"max_completion_tokens": -1}, "max_completion_tokens", "integer_below_min_value"),
    ({"presence_penalty": 2.5}, "presence_penalty", "decimal_above_max_value"),
    ({"frequency_penalty": -3}, "frequency_penalty", "decimal_below_min_value"),
    ({"logit_bias": [1]}, "logit_bias", "invalid_type"),
    ({"logit_bias": {"hello": 5}}, "logit_bias", "invalid_value"),
    ({"logit_bias": {"-5": 5}}, "logit_bias", "invalid_value"),
    ({"logit_bias": {"50256": 101}}, "logit_bias.50256", "decimal_above_max_value"),
    ({"logit_bias": {"50256": "1"}}, "logit_bias.50256", "invalid_type"),
    ({"logprobs": "yes"}, "logprobs", "invalid_type"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
    ({"top_logprobs": 5}, "top_logprobs", "invalid_value"),
    ({"stop": 3}, "stop", "invalid_type"),
    ({"stop": ["a"] * (STOP_MAX + 1)}, "stop", "array_above_max_length"),
    ({"stop": ["a", 1]}, "stop[1]", "invalid_type"),
    ({"seed": 1.5}, "seed", "invalid_type"),
    ({"seed": 2**63}, "seed", "integer_above_max_value"),
    ({"user": 42}, "user", "invalid_type"),
    ({"stream": "true"}, "stream", "invalid_type"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"stream": False, "stream_options": {}}, "stream_options", "invalid_value"),
    ({"stream": True, "stream_options": []}, "stream_options", "invalid_type"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage", "invalid_type"),
    ({"response_format": "json"}, "response_format", "invalid_type"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema",
     "missing_required_parameter"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format.json_schema.name", "missing_required_parameter"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
     "response_format.json_schema.name", "invalid_value"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls", "invalid_type"),
    ({"modalities": ["text", "video"]}, "modalities[1]", "invalid_value"),
    ({"audio": {"format": "wav"}}, "audio.voice", "missing_required_parameter"),
    ({"audio": {"format": "ogg", "voice": "alloy"}}, "audio.format", "invalid_value"),
    ({"prediction": {"type": "content"}}, "prediction.content", "missing_required_parameter"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort", "invalid_value"),
    ({"service_tier": "gold"}, "service_tier", "invalid_value"),
    ({"verbosity": 1}, "verbosity", "invalid_type"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "object_above_max_properties"),
    ({"metadata": {"k": 1}}, "metadata.k", "invalid_type"),
    ({"metadata": {"k" * 65: "v"}}, "metadata", "string_above_max_length"),
    ({"metadata": {"k": "v" * 513}}, "metadata.k", "string_above_max_length"),
    ({"store": "no"}, "store", "invalid_type"),
    ({"safety_identifier": "s" * 129}, "safety_identifier", "string_above_max_length"),
    ({"top_k": -2}, "top_k", "integer_below_min_value"),
    ({"top_k": 1.5}, "top_k", "invalid_type"),
    ({"min_p": 1.5}, "min_p", "decimal_above_max_value"),
    ({"repetition_penalty": 0}, "repetition_penalty", "decimal_below_min_value"),
    ({"min_tokens": -1}, "min_tokens", "integer_below_min_value"),
]


@pytest.mark.parametrize(("fields", "param", "code"), BAD_CHAT_FIELDS,
                         ids=[f"{p}-{c}" for _, p, c in BAD_CHAT_FIELDS])
def test_it_refuses_a_bad_chat_field_naming_it(fields, param, code):
    assert_refused(chat(**fields), param, code)


# --- chat: messages -----------------------------------------------------------------------
def user_parts(*parts) -> list:
    return [{"role": "user", "content": list(parts)}]


BAD_MESSAGES = [
    (["hi"], "messages[0]", "invalid_type"),
    ([{"content": "hi"}], "messages[0].role", "missing_required_parameter"),
    ([{"role": "robot", "content": "hi"}], "messages[0].role", "invalid_value"),
    ([{"role": 1, "content": "hi"}], "messages[0].role", "invalid_type"),
    ([USER, USER, {"role": "usr", "content": "hi"}], "messages[2].role", "invalid_value"),
    ([{"role": "user"}], "messages[0].content", "missing_required_parameter"),
    ([{"role": "system", "content": None}], "messages[0].content", "missing_required_parameter"),
    ([{"role": "user", "content": 5}], "messages[0].content", "invalid_type"),
    ([{"role": "user", "content": {"text": "hi"}}], "messages[0].content", "invalid_type"),
    ([{"role": "user", "content": []}], "messages[0].content", "empty_array"),
    ([{"role": "user", "content": "hi", "name": 5}], "messages[0].name", "invalid_type"),
    (user_parts("hi"), "messages[0].content[0]", "invalid_type"),
    (user_parts({"text": "hi"}), "messages[0].content[0].type", "missing_required_parameter"),
    (user_parts({"type": "video"}), "messages[0].content[0].type", "invalid_value"),
    (user_parts({"type": "text"}), "messages[0].content[0].text", "missing_required_parameter"),
    (user_parts({"type": "text", "text": 1}), "messages[0].content[0].text", "invalid_type"),
    (user_parts({"type": "text", "text": "a"}, {"type": "image_url", "image_url": "http://x"}),
     "messages[0].content[1].image_url", "invalid_type"),
    (user_parts({"type": "image_url", "image_url": {}}),
     "messages[0].content[0].image_url.url", "missing_required_parameter"),
    (user_parts({"type": "image_url", "image_url": {"url": "http://x", "detail": "ultra"}}),
     "messages[0].content[0].image_url.detail", "invalid_value"),
    (user_parts({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}),
     "messages[0].content[0].input_audio.format", "invalid_value"),
    (user_parts({"type": "file", "file": "abc"}), "messages[0].content[0].file", "invalid_type"),
    (user_parts({"type": "refusal", "refusal": "no"}), "messages[0].content[0].type",
     "invalid_value"),
    (user_parts({"type": "audio_url", "audio_url": {"url": 1}}),
     "messages[0].content[0].audio_url.url", "invalid_type"),
    ([USER, {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[1].content[0].type", "invalid_value"),
    ([USER, {"role": "assistant"}], "messages[1].content", "missing_required_parameter"),
    ([USER, {"role": "assistant", "content": None, "tool_calls": CALL}],
     "messages[1].tool_calls", "invalid_type"),
    ([USER, {"role": "assistant", "tool_calls": [{**CALL, "id": None}]}],
     "messages[1].tool_calls[0].id", "missing_required_parameter"),
    ([USER, {"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}],
     "messages[1].tool_calls[0].type", "invalid_value"),
    ([USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f"}}]}],
     "messages[1].tool_calls[0].function.arguments", "missing_required_parameter"),
    ([USER, {"role": "assistant",
             "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {"city": "Oslo"}}}]}],
     "messages[1].tool_calls[0].function.arguments", "invalid_type"),
    ([USER, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "12C"}],
     "messages[2].tool_call_id", "missing_required_parameter"),
    ([USER, {"role": "tool", "content": "12C", "tool_call_id": 7}],
     "messages[1].tool_call_id", "invalid_type"),
    ([{"role": "function", "content": "12C"}], "messages[0].name", "missing_required_parameter"),
]


@pytest.mark.parametrize(("messages", "param", "code"), BAD_MESSAGES,
                         ids=[f"{p}-{c}" for _, p, c in BAD_MESSAGES])
def test_it_refuses_a_bad_message_naming_its_path(messages, param, code):
    assert_refused(chat(messages=messages), param, code)


# --- chat: tools --------------------------------------------------------------------------
def with_function(**function) -> dict:
    return {"type": "function", "function": {"name": "get_weather", **function}}


BAD_TOOLS = [
    ({"tools": {"type": "function"}}, "tools", "invalid_type"),
    ({"tools": ["get_weather"]}, "tools[0]", "invalid_type"),
    ({"tools": [{"function": TOOL["function"]}]}, "tools[0].type", "missing_required_parameter"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "invalid_value"),
    ({"tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter"),
    ({"tools": [TOOL, with_function(name="get weather")]}, "tools[1].function.name",
     "invalid_value"),
    ({"tools": [with_function(name="f" * 65)]}, "tools[0].function.name",
     "string_above_max_length"),
    ({"tools": [with_function(name="")]}, "tools[0].function.name", "empty_string"),
    ({"tools": [with_function(parameters="{}")]}, "tools[0].function.parameters",
     "invalid_type"),
    ({"tools": [with_function(description=["a"])]}, "tools[0].function.description",
     "invalid_type"),
    ({"tools": [TOOL] * (TOOLS_MAX + 1)}, "tools", "array_above_max_length"),
    ({"tool_choice": "any"}, "tool_choice", "invalid_value"),
    ({"tool_choice": 1}, "tool_choice", "invalid_type"),
    ({"tools": [TOOL], "tool_choice": {"type": "function"}}, "tool_choice.function",
     "missing_required_parameter"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
     "tool_choice.function.name", "invalid_value"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     "tool_choice.function.name", "invalid_value"),
    ({"functions": [{"name": "f"}], "function_call": {"name": "g"}}, "function_call.name",
     "invalid_value"),
    ({"function_call": "required"}, "function_call", "invalid_value"),
]


@pytest.mark.parametrize(("fields", "param", "code"), BAD_TOOLS,
                         ids=[f"{p}-{c}" for _, p, c in BAD_TOOLS])
def test_it_refuses_a_bad_tool_naming_its_path(fields, param, code):
    assert_refused(chat(**fields), param, code)


# --- chat: what passes --------------------------------------------------------------------
GOOD_CHATS = {
    "typical": TYPICAL_CHAT,
    "a tool round trip": chat(
        messages=[
            {"role": "developer", "content": "Use tools."}, USER,
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text",
                                                                     "text": "12C"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "It is 12C."},
                                              {"type": "refusal", "refusal": "No more."}]},
        ],
        tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    ),
    "multimodal parts, vLLM's included": chat(messages=user_parts(
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
        {"type": "audio_url", "audio_url": {"url": "https://x/a.mp3"}},
        {"type": "video_url", "video_url": {"url": "https://x/v.mp4"}},
    )),
    "null for every optional field": chat(
        temperature=None, top_p=None, n=None, max_tokens=None, stop=None, seed=None,
        logit_bias=None, tools=None, tool_choice=None, response_format=None, user=None,
        stream=None, stream_options=None, metadata=None,
    ),
    "vLLM's own fields": chat(
        top_k=-1, min_p=0.05, repetition_penalty=1.1, min_tokens=1, guided_json={"type": "object"},
        chat_template_kwargs={"enable_thinking": False}, ignore_eos=True, priority=-1,
        response_format={"type": "structural_tag", "structures": [], "triggers": []},
        some_future_field={"anything": [1, "x", None]},
    ),
    "every bound at its limit": chat(
        temperature=2, top_p=0, n=1, max_tokens=1, presence_penalty=-2, frequency_penalty=2.0,
        logit_bias={"50256": -100, "13": 100.0}, logprobs=True, top_logprobs=20,
        stop=["a"] * STOP_MAX, seed=-(2**63), metadata={f"k{i}": "v" for i in range(16)},
    ),
    "a stop string and a json schema": chat(
        stop="\n\n", stream=False,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "answer", "schema": {"type": "object"},
                                         "strict": True}},
    ),
    "NUL and control characters in content": chat(messages=[{"role": "user",
                                                             "content": "a\x00b\x1b[0m"}]),
    "top_logprobs 0 without logprobs": chat(top_logprobs=0),
    "legacy functions": chat(functions=[{"name": "f", "parameters": {}}],
                             function_call={"name": "f"}),
    "every chat option OpenAI lists": chat(
        modalities=["text", "audio"], audio={"format": "wav", "voice": "alloy"},
        prediction={"type": "content", "content": "draft"}, reasoning_effort="low",
        service_tier="auto", verbosity="high", store=True, prompt_cache_key="k",
        prompt_cache_retention="24h", safety_identifier="user-1",
        web_search_options={"search_context_size": "low"},
    ),
}


@pytest.mark.parametrize("body", GOOD_CHATS.values(), ids=GOOD_CHATS.keys())
def test_it_passes_a_valid_chat(body):
    body_check(body, endpoint="chat/completions")


def test_it_leaves_the_body_untouched():
    body = GOOD_CHATS["vLLM's own fields"]
    before = copy.deepcopy(body)

    body_check(body, endpoint="chat/completions")

    assert body == before


# --- chat: decisions ----------------------------------------------------------------------
def test_it_reads_the_max_n_setting_at_call_time(settings):
    settings.SLUICE_MAX_N = 4
    body_check(chat(n=4), endpoint="chat/completions")

    error = refusal(chat(n=5))

    assert (error.param, error.code) == ("n", "integer_above_max_value")
    assert "<= 4" in error.message


def test_it_reads_the_max_tokens_setting_at_call_time(settings):
    settings.SLUICE_MAX_TOKENS_LIMIT = 100

    error = refusal(chat(max_completion_tokens=101))

    assert (error.param, error.code) == ("max_completion_tokens", "integer_above_max_value")


def test_it_words_errors_as_openai_does():
    error = refusal(chat(temperature="hot"))

    assert error.message == ("Invalid type for 'temperature': expected a decimal, but got a "
                             "string instead.")
    assert json.loads(error.body()) == {"error": {
        "message": error.message, "type": "invalid_request_error", "param": "temperature",
        "code": "invalid_type",
    }}


def test_it_lists_the_supported_values_of_an_enum():
    error = refusal(chat(messages=[{"role": "robot", "content": "hi"}]))

    assert error.message == (
        "Invalid value for 'messages[0].role': 'robot'. Supported values are: 'system', "
        "'developer', 'user', 'assistant', 'tool', and 'function'."
    )


def test_it_does_not_repeat_a_huge_value_in_the_message():
    error = refusal(chat(reasoning_effort="x" * 100_000))

    assert len(error.message) < 300


def test_it_names_the_first_bad_field_in_body_order():
    error = refusal({"model": "default", "top_p": 5, "temperature": 5, "messages": [USER]})

    assert error.param == "top_p"


def test_it_checks_only_the_model_for_an_endpoint_without_a_table():
    body_check({"model": "default", "anything": [None]}, endpoint="models")

    assert refusal({"model": "a\x00"}, endpoint="models").param == "model"


# --- completions --------------------------------------------------------------------------
def completion(**fields) -> dict:
    return {"model": "default", "prompt": "Once upon a time", **fields}


BAD_COMPLETIONS = [
    ({"prompt": None}, "prompt", "missing_required_parameter"),
    ({"prompt": 5}, "prompt", "invalid_type"),
    ({"prompt": []}, "prompt", "empty_array"),
    ({"prompt": ["a", 1]}, "prompt[1]", "invalid_type"),
    ({"prompt": [1, -1]}, "prompt[1]", "integer_below_min_value"),
    ({"prompt": [1, 2.0]}, "prompt[1]", "invalid_type"),
    ({"prompt": [[1], []]}, "prompt[1]", "empty_array"),
    ({"prompt": [[1], [2, "a"]]}, "prompt[1][1]", "invalid_type"),
    ({"prompt": [[1], 2]}, "prompt[1]", "invalid_type"),
    ({"prompt": [{"text": "a"}]}, "prompt[0]", "invalid_type"),
    ({"logprobs": True}, "logprobs", "invalid_type"),
    ({"logprobs": 6}, "logprobs", "integer_above_max_value"),
    ({"echo": "yes"}, "echo", "invalid_type"),
    ({"suffix": 1}, "suffix", "invalid_type"),
    ({"best_of": 0}, "best_of", "integer_below_min_value"),
    ({"n": 3, "best_of": 2}, "best_of", "integer_below_min_value"),
    ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ({"max_tokens": -1, "echo": True}, "max_tokens", "integer_below_min_value"),
    ({"temperature": 3}, "temperature", "decimal_above_max_value"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"stop": [""] * 5}, "stop", "array_above_max_length"),
]


@pytest.mark.parametrize(("fields", "param", "code"), BAD_COMPLETIONS,
                         ids=[f"{p}-{c}" for _, p, c in BAD_COMPLETIONS])
def test_it_refuses_a_bad_completion_field_naming_it(fields, param, code):
    assert_refused(completion(**fields), param, code, endpoint="completions")


GOOD_COMPLETIONS = {
    "a string": completion(),
    "an empty string": completion(prompt=""),
    "strings": completion(prompt=["a", "b"]),
    "token ids": completion(prompt=[1, 2, 3]),
    "token id arrays": completion(prompt=[[1, 2], [3]]),
    "vLLM's prompt_embeds instead": {"model": "default", "prompt_embeds": "AAAA"},
    "echo with max_tokens 0 scores the prompt": completion(echo=True, max_tokens=0, logprobs=5),
    "best_of above n": completion(n=2, best_of=3, suffix="", stream=True,
                                  stream_options={"include_usage": False}),
}


@pytest.mark.parametrize("body", GOOD_COMPLETIONS.values(), ids=GOOD_COMPLETIONS.keys())
def test_it_passes_a_valid_completion(body):
    body_check(body, endpoint="completions")


# --- embeddings ---------------------------------------------------------------------------
def embedding(**fields) -> dict:
    return {"model": "default", "input": "hello", **fields}


BAD_EMBEDDINGS = [
    ({"input": None}, "input", "missing_required_parameter"),
    ({"input": ""}, "input", "empty_string"),
    ({"input": []}, "input", "empty_array"),
    ({"input": ["a", ""]}, "input[1]", "empty_string"),
    ({"input": {"text": "a"}}, "input", "invalid_type"),
    ({"input": ["a"] * (EMBEDDING_INPUTS_MAX + 1)}, "input", "array_above_max_length"),
    ({"input": [[1]] * (EMBEDDING_INPUTS_MAX + 1)}, "input", "array_above_max_length"),
    ({"input": [[1], [True]]}, "input[1][0]", "invalid_type"),
    ({"encoding_format": "int8"}, "encoding_format", "invalid_value"),
    ({"dimensions": 0}, "dimensions", "integer_below_min_value"),
    ({"dimensions": "256"}, "dimensions", "invalid_type"),
    ({"user": ["u"]}, "user", "invalid_type"),
    ({"input": None, "messages": [{"role": "user"}]}, "messages[0].content",
     "missing_required_parameter"),
]


@pytest.mark.parametrize(("fields", "param", "code"), BAD_EMBEDDINGS,
                         ids=[f"{p}-{c}" for _, p, c in BAD_EMBEDDINGS])
def test_it_refuses_a_bad_embedding_field_naming_it(fields, param, code):
    assert_refused(embedding(**fields), param, code, endpoint="embeddings")


GOOD_EMBEDDINGS = {
    "a string": embedding(encoding_format="base64", dimensions=256, user="u"),
    "the most strings OpenAI takes": embedding(input=["a"] * EMBEDDING_INPUTS_MAX),
    "token ids": embedding(input=[1, 2, 3], encoding_format="float"),
    "one input longer than 2048 tokens": embedding(input=[7] * (EMBEDDING_INPUTS_MAX + 1)),
    "token id arrays": embedding(input=[[1, 2], [3]]),
    "vLLM's chat-style request": {"model": "default", "messages": [USER]},
    "vLLM's bytes encoding": embedding(encoding_format="bytes", normalize=True),
}


@pytest.mark.parametrize("body", GOOD_EMBEDDINGS.values(), ids=GOOD_EMBEDDINGS.keys())
def test_it_passes_a_valid_embedding_request(body):
    body_check(body, endpoint="embeddings")


# --- responses ----------------------------------------------------------------------------
def response(**fields) -> dict:
    return {"model": "default", "input": "Tell me a joke.", **fields}


BAD_RESPONSES = [
    ({"input": None}, "input", "missing_required_parameter"),
    ({"input": 5}, "input", "invalid_type"),
    ({"input": ["hi"]}, "input[0]", "invalid_type"),
    ({"input": [{"role": "bot", "content": "x"}]}, "input[0].role", "invalid_value"),
    ({"input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter"),
    ({"input": [{"type": "message", "role": "user", "content": [{"text": "x"}]}]},
     "input[0].content[0].type", "missing_required_parameter"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
     "input[0].content[0].text", "invalid_type"),
    ({"input": [{"type": "function_call_output", "output": "12C"}]}, "input[0].call_id",
     "missing_required_parameter"),
    ({"input": [{"type": 3}]}, "input[0].type", "invalid_type"),
    ({"input": [{}]}, "input[0].id", "missing_required_parameter"),
    ({"instructions": 5}, "instructions", "invalid_type"),
    ({"max_output_tokens": 0}, "max_output_tokens", "integer_below_min_value"),
    ({"temperature": -1}, "temperature", "decimal_below_min_value"),
    ({"top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema",
     "missing_required_parameter"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type", "invalid_value"),
    ({"text": {"verbosity": "loud"}}, "text.verbosity", "invalid_value"),
    ({"tools": [{"type": "function"}]}, "tools[0].name", "missing_required_parameter"),
    ({"tools": [{"name": "f"}]}, "tools[0].type", "missing_required_parameter"),
    ({"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ({"tool_choice": {"type": "function"}}, "tool_choice.name", "missing_required_parameter"),
    ({"reasoning": {"effort": "maximum"}}, "reasoning.effort", "invalid_value"),
    ({"truncation": "middle"}, "truncation", "invalid_value"),
    ({"previous_response_id": 5}, "previous_response_id", "invalid_type"),
    ({"metadata": {"k": 1}}, "metadata.k", "invalid_type"),
    ({"include": [1]}, "include[0]", "invalid_type"),
    ({"stream_options": {"include_obfuscation": False}}, "stream_options", "invalid_value"),
]


@pytest.mark.parametrize(("fields", "param", "code"), BAD_RESPONSES,
                         ids=[f"{p}-{c}" for _, p, c in BAD_RESPONSES])
def test_it_refuses_a_bad_responses_field_naming_it(fields, param, code):
    assert_refused(response(**fields), param, code, endpoint="responses")


def test_it_passes_a_valid_responses_request():
    body_check(response(
        input=[
            {"role": "developer", "content": "Be brief."},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "Weather?"},
                         {"type": "input_image", "image_url": "https://x/i.png"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "12C"},
            {"type": "reasoning", "summary": []},
            {"id": "msg_1"},
        ],
        instructions="Answer.", max_output_tokens=64, temperature=0.2, top_p=0.9, stream=True,
        tools=[{"type": "function", "name": "get_weather", "parameters": {}},
               {"type": "web_search"}],
        tool_choice={"type": "function", "name": "get_weather"}, store=False,
        text={"format": {"type": "json_schema", "name": "w", "schema": {}}, "verbosity": "low"},
        previous_response_id="resp_1", metadata={"k": "v"}, reasoning={"effort": "high"},
        truncation="auto", include=["reasoning.encrypted_content"],
    ), endpoint="responses")


# --- vLLM's rerank, score, tokenize, detokenize -------------------------------------------
BAD_POOLING = [
    ("rerank", {"documents": ["a"]}, "query", "missing_required_parameter"),
    ("rerank", {"query": 5, "documents": ["a"]}, "query", "invalid_type"),
    ("rerank", {"query": "q"}, "documents", "missing_required_parameter"),
    ("rerank", {"query": "q", "documents": []}, "documents", "empty_array"),
    ("rerank", {"query": "q", "documents": "a"}, "documents", "invalid_type"),
    ("rerank", {"query": "q", "documents": ["a", 5]}, "documents[1]", "invalid_type"),
    ("rerank", {"query": "q", "documents": [{"title": "a"}]}, "documents[0].text",
     "missing_required_parameter"),
    ("rerank", {"query": "q", "documents": ["a"], "top_n": -1}, "top_n",
     "integer_below_min_value"),
    ("rerank", {"query": "q", "documents": ["a"], "top_n": "3"}, "top_n", "invalid_type"),
    ("score", {}, "text_1", "missing_required_parameter"),
    ("score", {"text_1": "a"}, "text_2", "missing_required_parameter"),
    ("score", {"queries": "a"}, "documents", "missing_required_parameter"),
    ("score", {"text_1": 5, "text_2": "b"}, "text_1", "invalid_type"),
    ("score", {"text_1": "a", "text_2": []}, "text_2", "empty_array"),
    ("score", {"text_1": "a", "text_2": ["b", 1]}, "text_2[1]", "invalid_type"),
    ("tokenize", {}, "prompt", "missing_required_parameter"),
    ("tokenize", {"prompt": 5}, "prompt", "invalid_type"),
    ("tokenize", {"messages": []}, "messages", "empty_array"),
    ("tokenize", {"prompt": "a", "add_special_tokens": "yes"}, "add_special_tokens",
     "invalid_type"),
    ("detokenize", {}, "tokens", "missing_required_parameter"),
    ("detokenize", {"tokens": "1 2"}, "tokens", "invalid_type"),
    ("detokenize", {"tokens": [1, -2]}, "tokens[1]", "integer_below_min_value"),
    ("detokenize", {"tokens": [1, 2.0]}, "tokens[1]", "invalid_type"),
]


@pytest.mark.parametrize(("endpoint", "fields", "param", "code"), BAD_POOLING,
                         ids=[f"{e}-{p}-{c}" for e, _, p, c in BAD_POOLING])
def test_it_refuses_a_bad_vllm_endpoint_field_naming_it(endpoint, fields, param, code):
    assert_refused({"model": "default", **fields}, param, code, endpoint=endpoint)


MULTIMODAL = {"content": [{"type": "image_url", "image_url": {"url": "https://x/i.png"}}]}
GOOD_POOLING = {
    "rerank strings": ("rerank", {"query": "q", "documents": ["a", "b"], "top_n": 1}),
    "rerank text objects, all of them": ("rerank", {"query": "q", "documents": [{"text": "a"}],
                                                    "top_n": 0, "return_documents": True}),
    "rerank multimodal": ("rerank", {"query": MULTIMODAL, "documents": MULTIMODAL}),
    "score text pairs": ("score", {"text_1": "a", "text_2": ["b", "c"]}),
    "score queries and documents": ("score", {"queries": ["a"], "documents": [MULTIMODAL]}),
    "tokenize a prompt": ("tokenize", {"prompt": "hi", "add_special_tokens": False}),
    "tokenize messages": ("tokenize", {"messages": [USER], "add_generation_prompt": True}),
    "detokenize nothing": ("detokenize", {"tokens": []}),
    "detokenize tokens": ("detokenize", {"tokens": [1, 2, 3]}),
}


@pytest.mark.parametrize(("endpoint", "fields"), GOOD_POOLING.values(), ids=GOOD_POOLING.keys())
def test_it_passes_a_valid_vllm_endpoint_request(endpoint, fields):
    body_check({"model": "default", **fields}, endpoint=endpoint)


# --- end to end through the gateway -------------------------------------------------------
def post(gateway, path: str, body: dict, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        gateway.url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def backend_requests(simulators) -> int:
    """Requests both simulators have served on the paths a client call is sent to (the
    gateway's background health probes hit /health and /metrics meanwhile)."""
    total = 0
    for sim in simulators:
        with urllib.request.urlopen(sim.url + "/sim/stats", timeout=5) as resp:
            counts = json.loads(resp.read())["requests"]
        total += sum(n for path, n in counts.items() if path.startswith(CLIENT_PATHS))
    return total


CLIENT_PATHS = ("/v1/", "/v2/", "/rerank", "/score", "/tokenize", "/detokenize")


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", chat(temperature=5), "temperature"),
    ("/v1/chat/completions", chat(stream=True, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {}}]}]), "messages[0].content[0].image_url.url"),
    ("/v1/completions", completion(prompt=[1, "a"]), "prompt[1]"),
    ("/v1/embeddings", embedding(input=""), "input"),
    ("/v1/responses", response(max_output_tokens=0), "max_output_tokens"),
    ("/v1/rerank", {"model": "default", "query": "q", "documents": []}, "documents"),
    ("/v1/score", {"model": "default", "text_1": "a"}, "text_2"),
], ids=["chat", "streamed chat", "completion", "embeddings", "responses", "rerank", "score"])
def test_a_refused_request_never_reaches_a_backend(gateway, pool, simulators, path, body, param):
    before = backend_requests(simulators)

    status, payload = post(gateway, path, body, pool)

    assert status == 400
    assert payload["error"]["param"] == param
    assert backend_requests(simulators) == before


def test_a_refused_request_is_logged_with_its_status_and_error_type(gateway, pool, flush_calls):
    status, _ = post(gateway, "/v1/chat/completions", chat(n=0), pool)

    calls = flush_calls()

    assert status == 400
    assert [(c.status_code, c.error_type) for c in calls] == [(400, "integer_below_min_value")]
    assert calls[0].backend == ""


def test_a_model_name_the_call_log_cannot_hold_is_refused(gateway, pool, flush_calls):
    for model in ("m" * 300, "gpt\x00"):
        status, payload = post(gateway, "/v1/chat/completions", chat(model=model), pool)
        assert (status, payload["error"]["param"]) == (400, "model")

    assert [c.status_code for c in flush_calls()] == [400, 400]


def test_the_sdk_sees_the_param_of_a_refused_request(sdk, simulators):
    before = backend_requests(simulators)

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "get weather"}}],
        )

    assert caught.value.param == "tools[0].function.name"
    assert caught.value.code == "invalid_value"
    assert backend_requests(simulators) == before


def test_a_chat_with_vllm_extras_reaches_a_backend_and_succeeds(sdk, simulators):
    before = backend_requests(simulators)

    result = sdk.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1,
                    "chat_template_kwargs": {"enable_thinking": False}, "ignore_eos": True},
    )

    assert result.choices[0].message.content
    assert backend_requests(simulators) == before + 1
