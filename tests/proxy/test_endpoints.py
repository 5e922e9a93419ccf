"""The rest of vLLM's API goes through the same request path as chat: embeddings, rerank,
score, tokenize/detokenize and the Responses API, with the official SDK where it has a method,
each call logged with the backend's token counts."""
import json
import urllib.error
import urllib.request

import openai
import pytest

from proxy.models import Backend
from proxy.snapshot import snapshot_reload
from simulator.process import SimulatorProcess, free_port


def post(gateway, path: str, body: dict, key: str) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        gateway.url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_embeddings_through_the_sdk_are_logged_with_their_tokens(sdk, flush_calls):
    result = sdk.embeddings.create(model="default", input=["first text", "second text"])

    assert [len(d.embedding) for d in result.data] == [384, 384]
    [call] = flush_calls()
    assert (call.endpoint, call.status_code, call.route) == ("embeddings", 200, "default")
    assert call.prompt_tokens == result.usage.prompt_tokens > 0
    assert call.completion_tokens == 0


def test_rerank_is_routed_by_model_and_logged(gateway, pool, flush_calls):
    status, headers, body = post(gateway, "/v1/rerank", {
        "model": "default", "query": "red apples",
        "documents": ["green pears", "red apples are sweet", "blue sky"]}, pool)

    assert status == 200
    assert body["results"][0]["index"] == 1
    assert headers["x-sluice-route"] == "default"
    [call] = flush_calls()
    assert (call.endpoint, call.status_code) == ("rerank", 200)
    assert call.prompt_tokens == body["usage"]["total_tokens"] > 0


def test_score_is_routed_by_model_and_logged(gateway, pool, flush_calls):
    status, _, body = post(gateway, "/v1/score", {
        "model": "default", "text_1": "red apples", "text_2": ["red apples", "blue sky"]}, pool)

    assert status == 200
    assert body["data"][0]["score"] > body["data"][1]["score"]
    [call] = flush_calls()
    assert (call.endpoint, call.prompt_tokens) == ("score", body["usage"]["prompt_tokens"])


def test_tokenize_and_detokenize_round_trip_through_the_gateway(gateway, pool, flush_calls):
    # One backend: the simulator's token ids are its own (a real vLLM pool of one model shares
    # its tokenizer's vocabulary; the simulator's grows per process).
    with SimulatorProcess(model="tok-model", ttft_ms=1) as sim:
        Backend.objects.create(name="tok-1", base_url=sim.url, model="tok-model")
        snapshot_reload()
        status, _, tokens = post(gateway, "/tokenize", {"model": "tok-model",
                                                        "prompt": "Hello there, world"}, pool)
        assert status == 200
        status, _, text = post(gateway, "/detokenize", {"model": "tok-model",
                                                        "tokens": tokens["tokens"]}, pool)

    assert status == 200
    assert text["prompt"] == "Hello there, world"
    tokenized, detokenized = flush_calls()
    assert (tokenized.endpoint, tokenized.prompt_tokens) == ("tokenize", tokens["count"])
    assert detokenized.endpoint == "detokenize"


def test_tokenize_needs_a_valid_key(gateway, pool):
    status, _, body = post(gateway, "/tokenize", {"model": "default", "prompt": "hi"}, "nope")

    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"


def test_a_response_through_the_sdk_is_logged_with_input_and_output_tokens(sdk, flush_calls):
    response = sdk.responses.create(model="default", input="Tell me a story.",
                                    max_output_tokens=12)

    assert response.output_text
    [call] = flush_calls()
    assert (call.endpoint, call.stream, call.status_code) == ("responses", False, 200)
    assert (call.prompt_tokens, call.completion_tokens) == (
        response.usage.input_tokens, response.usage.output_tokens)


def test_a_streamed_response_passes_every_event_and_is_logged(sdk, flush_calls):
    events = list(sdk.responses.create(model="default", input="Tell me a story.",
                                       max_output_tokens=12, stream=True))

    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    usage = events[-1].response.usage
    [call] = flush_calls()
    assert (call.endpoint, call.stream, call.status_code) == ("responses", True, 200)
    assert (call.prompt_tokens, call.completion_tokens) == (usage.input_tokens,
                                                            usage.output_tokens)
    assert call.ttft_ms is not None


def test_embeddings_are_retried_on_another_backend_like_chat(sdk, flush_calls):
    Backend.objects.create(name="a-dead", base_url=f"http://127.0.0.1:{free_port()}",
                           model="sim-model")
    snapshot_reload()

    for _ in range(3):
        sdk.embeddings.create(model="default", input="retry me")

    calls = flush_calls()
    assert all(c.status_code == 200 and c.backend != "a-dead" for c in calls)


def test_an_unknown_v1_path_is_an_openai_shaped_404(gateway, pool):
    status, _, body = post(gateway, "/v1/unknown", {"model": "default"}, pool)

    assert status == 404
    assert body["error"]["code"] == "unknown_url"


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/responses", "/tokenize"])
def test_new_endpoints_answer_405_to_get(gateway, path):
    try:
        urllib.request.urlopen(gateway.url + path, timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 405
        assert exc.headers["Allow"] == "POST"
    else:
        pytest.fail("GET was accepted")


def test_the_sdk_embeddings_error_for_an_unknown_model_is_404(sdk):
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="nope", input="x")
