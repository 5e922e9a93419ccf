"""Overload: per-backend concurrency limits, a bounded queue in arrival order, and 503 with
Retry-After beyond it; keys scoped to routes, and revoked keys."""
import threading

import openai
import pytest

from proxy.models import ApiKey, Backend, Route
from proxy.snapshot import snapshot_reload
from simulator.process import SimulatorProcess

MESSAGES = [{"role": "user", "content": "Wait your turn."}]


@pytest.fixture
def narrow_sim(pool):
    """One backend of `narrow` that takes two requests at once; each lasts about 0.4 s."""
    with SimulatorProcess(model="narrow", ttft_ms=1, tokens_per_s=20) as sim:
        Backend.objects.create(name="narrow-1", base_url=sim.url, model="narrow",
                               max_concurrency=2)
        snapshot_reload()
        yield sim


def concurrently(sdk, count: int) -> list:
    """Send `count` requests at once; return each one's answer or error."""
    results: list = [None] * count

    def one(i: int) -> None:
        try:
            results[i] = sdk.chat.completions.create(model="narrow", messages=MESSAGES,
                                                     max_tokens=8)
        except openai.APIStatusError as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a request hung"
    return results


def test_beyond_concurrency_plus_queue_the_excess_gets_503_and_none_is_lost(
        sdk, narrow_sim, settings, flush_calls):
    settings.SLUICE_QUEUE_MAX = 2

    results = concurrently(sdk, 7)

    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(refused) == 3
    assert {(r.status_code, r.code) for r in refused} == {(503, "queue_full")}
    assert all(r.response.headers["retry-after"] == "1" for r in refused)
    calls = flush_calls()
    assert sorted(c.status_code for c in calls) == [200] * 4 + [503] * 3
    waited = [c for c in calls if c.status_code == 200 and c.queue_ms]
    assert len(waited) == 2 and all(c.queue_ms > 100 for c in waited)


def test_the_backend_never_sees_more_than_its_max_concurrency(sdk, narrow_sim, settings):
    settings.SLUICE_QUEUE_MAX = 100
    import urllib.request

    peak = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with urllib.request.urlopen(narrow_sim.url + "/metrics", timeout=5) as resp:
                text = resp.read().decode()
            peak.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                            if line.startswith("vllm:num_requests_running")))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = concurrently(sdk, 6)
    finally:
        stop.set()
        watcher.join()

    assert all(not isinstance(r, Exception) for r in results)
    assert max(peak) == 2


def test_a_wait_past_the_queue_timeout_gets_503(sdk, narrow_sim, settings, flush_calls):
    settings.SLUICE_QUEUE_TIMEOUT_S = 0.1

    results = concurrently(sdk, 3)

    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert [(r.status_code, r.code) for r in refused] == [(503, "queue_timeout")]
    assert refused[0].response.headers["retry-after"] == "1"
    assert len(flush_calls()) == 3


# --- keys -----------------------------------------------------------------------------------

def test_a_key_scoped_to_routes_gets_403_elsewhere(gateway, pool, flush_calls):
    Route.objects.create(name="other", model="sim-model")
    key, plaintext = ApiKey.issue(name="scoped")
    key.routes.set(Route.objects.filter(name="default"))
    snapshot_reload()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=plaintext, max_retries=0)

    client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="other", messages=MESSAGES, max_tokens=2)

    assert caught.value.code == "model_not_allowed"
    assert [m.id for m in client.models.list()] == ["default"]
    assert [c.status_code for c in flush_calls()] == [200, 403]


def test_a_revoked_key_gets_401(gateway, pool):
    key, plaintext = ApiKey.issue(name="soon revoked")
    snapshot_reload()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=plaintext, max_retries=0)
    client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=2)

    key.is_active = False
    key.save()
    snapshot_reload()

    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=2)
