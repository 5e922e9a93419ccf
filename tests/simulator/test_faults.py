"""Runtime fault control (``GET``/``POST /sim/faults``) and the request counter (``/sim/stats``).

One simulator for the module; every test leaves the faults as the CLI set them.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from simulator.process import SimulatorProcess
from tests.simulator.support import get, named_sse_events, post, post_json

MODEL = "sim-model"
START = {"error_rate": 0.0, "error_status": 503, "mid_stream_error_rate": 0.0,
         "ttfb_delay_ms": 0.0}
MESSAGES = [{"role": "user", "content": "Tell me about rivers."}]
GENERATION = [
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}),
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": True}),
    ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "stream": True}),
    ("/v1/embeddings", {"model": MODEL, "input": "x"}),
    ("/v1/rerank", {"model": MODEL, "query": "q", "documents": ["d"]}),
    ("/v1/score", {"model": MODEL, "text_1": "a", "text_2": "b"}),
]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(model=MODEL, ttft_ms=1, tokens_per_s=5000, error_status=503,
                          seed=11) as proc:
        yield proc


@pytest.fixture(autouse=True)
def _restore_faults(sim: SimulatorProcess) -> Iterator[None]:
    yield
    assert set_faults(sim, START)[0] == 200


def set_faults(sim: SimulatorProcess, settings: Any) -> tuple[int, Any]:
    return post_json(sim.url + "/sim/faults", settings)


def sdk(sim: SimulatorProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


def time_to_headers(sim: SimulatorProcess, path: str, body: bytes) -> tuple[int, float]:
    """(status, seconds until the response headers arrived) for one POST."""
    conn = http.client.HTTPConnection(sim.host, sim.port, timeout=10)
    try:
        start = time.monotonic()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        elapsed = time.monotonic() - start
        resp.read()
        return resp.status, elapsed
    finally:
        conn.close()


# ---- reading and changing the settings -------------------------------------------------------

def test_it_starts_with_the_settings_the_cli_flags_gave(sim):
    status, body = get(sim.url + "/sim/faults")
    assert status == 200 and body == (b'{"error_rate":0.0,"error_status":503,'
                                      b'"mid_stream_error_rate":0.0,"ttfb_delay_ms":0.0}')


def test_it_changes_only_the_posted_settings_and_answers_with_all_of_them(sim):
    status, body = set_faults(sim, {"error_rate": 0.25, "ttfb_delay_ms": 5})
    assert status == 200 and body == {**START, "error_rate": 0.25, "ttfb_delay_ms": 5.0}


@pytest.mark.parametrize("settings", [
    {"error_rate": 1.5}, {"error_rate": "high"}, {"error_status": 200}, {"error_status": 503.0},
    {"mid_stream_error_rate": -0.1}, {"ttfb_delay_ms": -1}, {"error_rate": 1, "typo": 1},
    [0.5],
])
def test_it_rejects_bad_settings_and_keeps_the_old_ones(sim, settings):
    status, body = set_faults(sim, settings)
    assert status == 400 and body["error"]["type"] == "BadRequestError"
    assert set_faults(sim, {})[1] == START


# ---- errors before the first byte ------------------------------------------------------------

@pytest.mark.parametrize(("path", "body"), GENERATION)
def test_it_fails_every_generation_route_with_the_error_status_at_rate_one(sim, path, body):
    set_faults(sim, {"error_rate": 1})
    status, answer = post_json(sim.url + path, body)
    assert status == 503
    assert answer == {"error": {"message": "Simulated engine failure (error_rate=1.0).",
                                "type": "ServiceUnavailableError", "param": None, "code": 503}}


def test_it_serves_again_once_the_error_rate_is_lowered(sim):
    set_faults(sim, {"error_rate": 1})
    assert post(sim.url + "/v1/completions", {"model": MODEL, "prompt": "x"})[0] == 503
    set_faults(sim, {"error_rate": 0})
    assert post(sim.url + "/v1/completions", {"model": MODEL, "prompt": "x"})[0] == 200


def test_it_fails_about_the_configured_fraction_of_requests(sim):
    set_faults(sim, {"error_rate": 0.3})
    body = {"model": MODEL, "text_1": "a", "text_2": "b"}
    failed = sum(post(sim.url + "/v1/score", body)[0] == 503 for _ in range(100))
    assert 15 <= failed <= 45


def test_sdk_sees_an_injected_429_as_a_rate_limit_error(sim):
    set_faults(sim, {"error_rate": 1, "error_status": 429})
    with pytest.raises(openai.RateLimitError):
        sdk(sim).embeddings.create(model=MODEL, input="x")


def test_it_validates_the_request_before_injecting_an_error(sim):
    set_faults(sim, {"error_rate": 1})
    assert post(sim.url + "/v1/embeddings", {"model": MODEL})[0] == 400
    assert post(sim.url + "/v1/embeddings", {"model": "nope", "input": "x"})[0] == 404


def test_it_leaves_the_non_generation_routes_alone(sim):
    set_faults(sim, {"error_rate": 1, "ttfb_delay_ms": 500})
    start = time.monotonic()
    assert get(sim.url + "/health")[0] == get(sim.url + "/v1/models")[0] == 200
    assert get(sim.url + "/metrics")[0] == 200
    assert post(sim.url + "/tokenize", {"model": MODEL, "prompt": "x"})[0] == 200
    assert post(sim.url + "/detokenize", {"model": MODEL, "tokens": [1]})[0] == 200
    assert time.monotonic() - start < 0.4


# ---- a slow first byte -----------------------------------------------------------------------

def test_it_holds_back_the_response_headers_for_ttfb_delay_ms(sim):
    set_faults(sim, {"ttfb_delay_ms": 150})
    body = b'{"model": "sim-model", "input": "hi", "stream": true}'
    status, waited = time_to_headers(sim, "/v1/responses", body)
    assert status == 200 and 0.15 <= waited < 0.3
    set_faults(sim, {"ttfb_delay_ms": 0})
    assert time_to_headers(sim, "/v1/responses", body)[1] < 0.1


def test_it_delays_an_injected_error_too(sim):
    set_faults(sim, {"ttfb_delay_ms": 100, "error_rate": 1})
    status, waited = time_to_headers(sim, "/v1/embeddings", b'{"input": "x"}')
    assert status == 503 and waited >= 0.1


# ---- errors mid-stream -----------------------------------------------------------------------

def test_it_cuts_a_response_stream_with_an_error_event(sim):
    set_faults(sim, {"mid_stream_error_rate": 1})
    status, _, raw = post(sim.base_url + "/responses", {"model": MODEL, "input": "hi",
                                                        "stream": True, "max_output_tokens": 10})
    events = named_sse_events(raw)
    name, error = events[-1]
    assert status == 200 and name == "error" and error["type"] == "error"
    assert error["error"]["code"] == 500 and error["message"]
    assert error["sequence_number"] == len(events) - 1
    assert "response.completed" not in [n for n, _ in events]
    assert 1 <= sum(n == "response.output_text.delta" for n, _ in events) <= 5


def test_sdk_raises_api_error_when_a_response_stream_breaks(sim):
    set_faults(sim, {"mid_stream_error_rate": 1})
    seen = []
    with pytest.raises(openai.APIError, match="Simulated engine failure"):
        for event in sdk(sim).responses.create(model=MODEL, input="hi", stream=True):
            seen.append(event.type)
    assert "response.output_text.delta" in seen


def test_it_cuts_a_chat_stream_after_the_rate_is_raised_at_runtime(sim):
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 10}
    assert b'"error"' not in post(sim.url + "/v1/chat/completions", body)[2]
    set_faults(sim, {"mid_stream_error_rate": 1})
    raw = post(sim.url + "/v1/chat/completions", body)[2]
    assert raw.endswith(b"data: [DONE]\n\n") and b'"error"' in raw


# ---- the request counter ---------------------------------------------------------------------

def test_it_counts_requests_per_path_even_when_they_fail(sim):
    def embedding_calls() -> int:
        return json.loads(get(sim.url + "/sim/stats")[1])["requests"].get("/v1/embeddings", 0)

    start = embedding_calls()
    post(sim.url + "/v1/embeddings", {"model": MODEL, "input": "x"})
    post(sim.url + "/v1/embeddings", {"model": MODEL})
    assert embedding_calls() == start + 2
