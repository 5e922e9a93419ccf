"""A failing pool never reaches the app as a failure it could have been spared: retries before
the first byte, fallback chains, circuit breakers and timeouts, end to end through the gateway
with real simulators and the official SDK."""
import json
import time
import urllib.request

import openai
import pytest

from proxy import failover
from proxy.models import Backend, Route
from proxy.pool import backend_state
from proxy.snapshot import snapshot_current, snapshot_reload
from simulator.process import SimulatorProcess, free_port

MESSAGES = [{"role": "user", "content": "Stay up."}]


@pytest.fixture(autouse=True)
def fresh_retry_budget(monkeypatch):
    """Each test starts with the whole retry budget (it is per process)."""
    monkeypatch.setattr(failover, "budget", failover.RetryBudget())


@pytest.fixture
def sims():
    """Simulators started on demand, stopped after the test."""
    started = []

    def start(model: str, **options) -> SimulatorProcess:
        sim = SimulatorProcess(model=model, **{"ttft_ms": 1, "tokens_per_s": 5000, **options})
        started.append(sim.start())
        return sim

    yield start
    for sim in started:
        sim.stop()


def backend_add(name: str, model: str, url: str, **fields) -> None:
    Backend.objects.create(name=name, base_url=url, model=model, **fields)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def state_of(name: str):
    [backend] = [b for b in snapshot_current().backends if b.name == name]
    return backend_state(backend)


def requests_seen(sim: SimulatorProcess, path: str = "/v1/chat/completions") -> int:
    with urllib.request.urlopen(sim.url + "/sim/stats", timeout=5) as resp:
        return json.loads(resp.read())["requests"].get(path, 0)


def chat(sdk, model: str, **extra):
    return sdk.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, **{"max_tokens": 3, **extra})


# --- retries before the first byte ----------------------------------------------------------

def test_a_refused_connection_is_retried_on_another_backend(sdk, sims, flush_calls):
    live = sims("m")
    backend_add("a-dead", "m", dead_url())
    backend_add("b-live", "m", live.url)
    snapshot_reload()

    answers = [chat(sdk, "m") for _ in range(4)]

    assert all(a.http_response.status_code == 200 for a in answers)
    calls = flush_calls()
    assert {c.backend for c in calls} == {"b-live"}
    assert sorted(c.retries for c in calls) == [0, 0, 0, 1]
    assert state_of("a-dead").breaker.state == "open"  # refused: out at once


def test_a_5xx_before_the_first_byte_is_retried_and_the_response_says_so(sdk, sims, flush_calls):
    broken = sims("m", error_rate=1.0)
    live = sims("m")
    backend_add("a-broken", "m", broken.url)
    backend_add("b-live", "m", live.url)
    snapshot_reload()

    answers = [chat(sdk, "m") for _ in range(4)]

    retried = [a for a in answers if a.headers.get("x-sluice-retries") == "1"]
    assert retried and all(a.headers["x-sluice-backend"] == "b-live" for a in retried)
    assert requests_seen(broken) == len(retried)
    calls = flush_calls()
    assert [c.status_code for c in calls] == [200] * 4
    assert sum(c.retries for c in calls) == len(retried)


def test_a_429_from_vllm_is_retried_on_another_backend(sdk, sims, flush_calls):
    busy = sims("m", error_rate=1.0, error_status=429)
    live = sims("m")
    backend_add("a-busy", "m", busy.url)
    backend_add("b-live", "m", live.url)
    snapshot_reload()

    answers = [chat(sdk, "m") for _ in range(4)]

    assert [a.http_response.status_code for a in answers] == [200] * 4
    assert {a.headers["x-sluice-backend"] for a in answers} == {"b-live"}
    assert requests_seen(busy) == sum(c.retries for c in flush_calls()) > 0


def test_a_stream_is_retried_when_its_first_event_is_late(sdk, sims, flush_calls):
    """vLLM sends a stream's headers at once; a backend that then stalls before the first token
    is given up on at the route's TTFB timeout and the stream starts on another backend."""
    stalled = sims("m", ttft_ms=3000)
    live = sims("m")
    backend_add("a-stalled", "m", stalled.url)
    backend_add("b-live", "m", live.url)
    Route.objects.create(name="quick", model="m", ttfb_timeout_s=0.3)
    snapshot_reload()

    texts = []
    for _ in range(2):
        stream = sdk.chat.completions.create(model="quick", messages=MESSAGES, stream=True,
                                             max_tokens=5)
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

    assert all(texts)
    calls = flush_calls()
    assert [(c.backend, c.status_code) for c in calls] == [("b-live", 200)] * 2
    assert sum(c.retries for c in calls) == requests_seen(stalled) >= 1
    assert max(c.ttft_ms for c in calls) < 1500


def test_when_every_attempt_fails_the_backends_own_error_reaches_the_app(sdk, sims,
                                                                        flush_calls):
    broken = sims("m", error_rate=1.0)
    backend_add("only", "m", broken.url)
    Route.objects.create(name="twice", model="m", max_attempts=2)
    snapshot_reload()

    with pytest.raises(openai.InternalServerError) as caught:
        chat(sdk, "twice")

    assert caught.value.status_code == 500
    assert "Simulated engine failure" in caught.value.message
    assert requests_seen(broken) == 2
    [call] = flush_calls()
    assert (call.status_code, call.retries, call.backend) == (500, 1, "only")


def test_an_exhausted_retry_budget_stops_retries(sdk, sims, settings, flush_calls):
    settings.SLUICE_RETRY_BUDGET_MIN = 0
    settings.SLUICE_RETRY_BUDGET_PERCENT = 0
    broken = sims("m", error_rate=1.0)
    live = sims("m")
    backend_add("a-broken", "m", broken.url)
    backend_add("b-live", "m", live.url)
    snapshot_reload()

    statuses = []
    for _ in range(2):
        try:
            statuses.append(chat(sdk, "m").http_response.status_code)
        except openai.APIStatusError as exc:
            statuses.append(exc.status_code)

    assert sorted(statuses) == [200, 500]
    assert sum(c.retries for c in flush_calls()) == 0


def test_a_client_error_from_the_backend_is_not_retried(sdk, sims, flush_calls):
    small = sims("m", max_model_len=64)
    other = sims("m", max_model_len=64)
    backend_add("a", "m", small.url)
    backend_add("b", "m", other.url)
    snapshot_reload()

    with pytest.raises(openai.BadRequestError):
        chat(sdk, "m", max_tokens=1000)

    assert requests_seen(small) + requests_seen(other) == 1
    [call] = flush_calls()
    assert (call.status_code, call.retries) == (400, 0)


def test_the_total_timeout_bounds_the_whole_call(sdk, sims, flush_calls):
    slow = sims("m", tokens_per_s=10)
    backend_add("slow", "m", slow.url)
    Route.objects.create(name="brief", model="m", total_timeout_s=0.3)
    snapshot_reload()

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        chat(sdk, "brief", max_tokens=50)

    assert time.monotonic() - started < 1.5
    assert (caught.value.status_code, caught.value.code) == (504, "upstream_timeout")
    [call] = flush_calls()
    assert (call.status_code, call.error_type, call.retries) == (504, "upstream_timeout", 0)


def test_the_total_timeout_ends_a_long_stream_with_an_error_event(sdk, sims, flush_calls):
    slow = sims("m", tokens_per_s=20)
    backend_add("slow", "m", slow.url)
    Route.objects.create(name="brief", model="m", total_timeout_s=0.5)
    snapshot_reload()

    stream = sdk.chat.completions.create(model="brief", messages=MESSAGES, stream=True,
                                         max_tokens=100)
    received = 0
    with pytest.raises(openai.APIError) as caught:
        for _chunk in stream:
            received += 1

    assert received >= 1
    assert "total timeout" in str(caught.value)
    [call] = flush_calls()
    assert (call.status_code, call.error_type) == (502, "upstream_stream_error")
    assert call.latency_ms < 1500


# --- fallback chains ------------------------------------------------------------------------

def test_a_fallback_route_serves_when_the_primary_models_backends_are_all_down(
        sdk, sims, flush_calls):
    small = sims("small-model")
    backend_add("large-1", "large-model", dead_url())
    backend_add("large-2", "large-model", dead_url())
    backend_add("small-1", "small-model", small.url)
    Route.objects.create(name="chat-small", model="small-model")
    Route.objects.create(name="chat-large", model="large-model", fallbacks="chat-small")
    snapshot_reload()

    first = chat(sdk, "chat-large")
    second = chat(sdk, "chat-large")

    for answer in (first, second):
        assert answer.http_response.status_code == 200
        assert answer.headers["x-sluice-fallback"] == "small-model"
        assert answer.parse().model == "small-model"
    calls = flush_calls()
    assert [(c.route, c.served_model, c.backend, c.fallback_used) for c in calls] == [
        ("chat-large", "small-model", "small-1", True)] * 2
    assert calls[0].retries == 2  # both large backends refused, then the fallback
    assert calls[1].retries == 0  # their breakers are open now: straight to the fallback


def test_a_healthy_primary_is_not_bypassed(sdk, sims, flush_calls):
    large = sims("large-model")
    small = sims("small-model")
    backend_add("large-1", "large-model", large.url)
    backend_add("small-1", "small-model", small.url)
    Route.objects.create(name="chat-large", model="large-model", fallbacks="small-model")
    snapshot_reload()

    answer = chat(sdk, "chat-large")

    assert "x-sluice-fallback" not in answer.headers
    [call] = flush_calls()
    assert (call.served_model, call.fallback_used) == ("large-model", False)


def test_with_every_breaker_open_it_fails_fast_with_503_and_retry_after(sdk, flush_calls):
    backend_add("gone", "m", dead_url(), breaker_cooldown_s=30)
    snapshot_reload()
    state_of("gone").breaker.trip("refused")

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        chat(sdk, "m")

    assert time.monotonic() - started < 0.5
    assert caught.value.status_code == 503
    assert caught.value.code == "no_backend_available"
    assert 25 <= int(caught.value.response.headers["retry-after"]) <= 30
    [call] = flush_calls()
    assert (call.status_code, call.error_type) == (503, "no_backend_available")


# --- circuit breakers -------------------------------------------------------------------------

def faults_set(sim: SimulatorProcess, **faults) -> None:
    request = urllib.request.Request(sim.url + "/sim/faults", data=json.dumps(faults).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=5).read()


def test_under_load_the_breaker_opens_moves_traffic_probes_and_closes(sdk, sims, flush_calls):
    flaky = sims("m")
    steady = sims("m")
    backend_add("a-flaky", "m", flaky.url, breaker_failures=3, breaker_cooldown_s=0.5)
    backend_add("b-steady", "m", steady.url)
    snapshot_reload()

    for _ in range(4):
        chat(sdk, "m")
    assert state_of("a-flaky").breaker.state == "closed"

    faults_set(flaky, error_rate=1.0)
    sick = [chat(sdk, "m") for _ in range(12)]
    assert all(a.http_response.status_code == 200 for a in sick)  # every failure retried
    assert state_of("a-flaky").breaker.state == "open"
    seen_while_open = requests_seen(flaky)
    for _ in range(5):
        chat(sdk, "m")
    # No traffic while open, but for at most one probe request: the backend still answers its
    # /health, and a passing health probe ends the cooldown early.
    assert requests_seen(flaky) - seen_while_open <= 1

    faults_set(flaky, error_rate=0.0)
    time.sleep(0.6)  # the cooldown
    recovered = [chat(sdk, "m").headers["x-sluice-backend"] for _ in range(6)]

    assert state_of("a-flaky").breaker.state == "closed"
    assert "a-flaky" in recovered
    assert all(c.status_code == 200 for c in flush_calls())


def test_the_ops_api_lists_each_backends_breaker_load_and_errors(gateway, sdk, sims, settings):
    settings.SLUICE_MASTER_KEY = "sk-ops"
    live = sims("m")
    backend_add("a-dead", "m", dead_url())
    backend_add("b-live", "m", live.url)
    snapshot_reload()
    for _ in range(3):
        chat(sdk, "m")

    request = urllib.request.Request(gateway.url + "/api/backends",
                                     headers={"Authorization": "Bearer sk-ops"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        rows = {row["name"]: row for row in json.loads(resp.read())}

    assert rows["a-dead"]["state"] == "open"
    assert rows["a-dead"]["error_rate"] == 1.0
    assert "unreachable" in rows["a-dead"]["reason"]
    assert rows["b-live"]["state"] == "closed"
    assert rows["b-live"]["error_rate"] == 0.0
    assert rows["b-live"]["latency_ms"] > 0
    assert rows["b-live"]["in_flight"] == 0
    assert rows["b-live"]["max_concurrency"] == 256


# --- readiness --------------------------------------------------------------------------------

def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_ready_answers_200_with_the_database_and_a_healthy_backend(gateway):
    status, body = get(gateway.url + "/ready")

    assert status == 200
    assert body["status"] == "ready"


def test_ready_answers_503_when_no_backend_can_take_traffic(gateway):
    for name in ("sim-1", "sim-2"):
        state_of(name).breaker.trip("test")

    status, body = get(gateway.url + "/ready")

    assert status == 503
    assert body["reasons"] == ["no healthy backend"]
