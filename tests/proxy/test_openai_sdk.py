"""The official openai SDK talks to real simulators through Sluice."""
import openai
import pytest

from tests.conftest import SIM_MODEL

MESSAGES = [{"role": "user", "content": "Tell me about rivers."}]


@pytest.fixture
def direct(simulators) -> openai.OpenAI:
    """The same SDK straight at one simulator: what Sluice must pass through unchanged."""
    return openai.OpenAI(base_url=simulators[0].base_url, api_key="x", max_retries=0)


def test_it_streams_a_chat_completion_with_the_simulators_text_and_usage(sdk, direct):
    expected = direct.chat.completions.create(model=SIM_MODEL, messages=MESSAGES)

    chunks = list(sdk.chat.completions.create(
        model="default", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == expected.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == expected.usage.completion_tokens


def test_it_strips_the_usage_chunk_when_the_app_did_not_ask_for_it(sdk):
    chunks = list(sdk.chat.completions.create(model="default", messages=MESSAGES, stream=True))

    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_it_still_counts_the_tokens_of_a_stream_without_a_usage_chunk(sdk, direct, flush_calls):
    expected = direct.chat.completions.create(model=SIM_MODEL, messages=MESSAGES)

    list(sdk.chat.completions.create(model="default", messages=MESSAGES, stream=True))

    [call] = flush_calls()
    assert call.prompt_tokens == expected.usage.prompt_tokens
    assert call.completion_tokens == expected.usage.completion_tokens


def test_it_answers_a_non_streaming_chat_completion(sdk, direct):
    expected = direct.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, max_tokens=7)

    answer = sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=7)

    assert answer.choices[0].message.content == expected.choices[0].message.content
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 7


def test_it_serves_legacy_completions_streamed_and_not(sdk, direct):
    expected = direct.completions.create(model=SIM_MODEL, prompt="Once upon a time")

    whole = sdk.completions.create(model="default", prompt="Once upon a time")
    streamed = list(sdk.completions.create(model="default", prompt="Once upon a time", stream=True))

    assert whole.choices[0].text == expected.choices[0].text
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected.choices[0].text


def test_it_accepts_a_served_model_name_as_well_as_a_route(sdk, flush_calls):
    sdk.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, max_tokens=3)

    [call] = flush_calls()
    assert call.route == SIM_MODEL
    assert call.served_model == SIM_MODEL


def test_it_lists_routes_and_served_models(sdk):
    ids = [m.id for m in sdk.models.list()]

    assert ids == ["default", SIM_MODEL]


def test_it_tags_responses_with_request_id_route_and_backend(sdk):
    raw = sdk.chat.completions.with_raw_response.create(
        model="default", messages=MESSAGES, max_tokens=2
    )

    assert raw.headers["x-request-id"].startswith("req-")
    assert raw.headers["x-sluice-route"] == "default"
    assert raw.headers["x-sluice-backend"] in ("sim-1", "sim-2")


def test_it_sends_streams_unbuffered(sdk):
    with sdk.chat.completions.with_streaming_response.create(
        model="default", messages=MESSAGES, stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        body = response.read()
    assert body.endswith(b"data: [DONE]\n\n")


def test_it_balances_calls_across_the_pool_in_turn(sdk, flush_calls):
    for _ in range(4):
        sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=2)

    backends = [call.backend for call in flush_calls()]
    assert sorted(backends) == ["sim-1", "sim-1", "sim-2", "sim-2"]
    assert backends[0] != backends[1]


def test_it_passes_fields_it_does_not_know_through_to_the_backend(sdk, direct):
    """Sluice checks only what it uses; `stop` here is the backend's business."""
    first = direct.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, max_tokens=12)
    stop_word = first.choices[0].message.content.split()[3]
    expected = direct.chat.completions.create(model=SIM_MODEL, messages=MESSAGES, stop=[stop_word])

    answer = sdk.chat.completions.create(model="default", messages=MESSAGES, stop=[stop_word],
                                         extra_body={"top_k": 5, "ignore_eos": False})

    assert answer.choices[0].message.content == expected.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert stop_word not in answer.choices[0].message.content
