"""GET /metrics: Sluice's own numbers in Prometheus' format, counted from the call records off
the request path, and added up over every process that writes into one metrics directory.

Traffic goes through the in-process gateway with the official SDK to the real simulators;
every scrape is parsed back with prometheus_client's own parser. Counters are compared as
differences between two scrapes, since the whole test session shares one directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from django.db import connection
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from analytics.models import Call
from analytics.recorder import recorder
from config.metrics import metrics_dir_reset
from proxy.models import Backend, Price, Route
from proxy.prom_gauges import dead_processes_sweep
from proxy.snapshot import snapshot_reload
from simulator.process import SimulatorProcess
from tests.conftest import SIM_MODEL, pool_scrape
from tests.processes import ROOT, GatewayProcess, TcpRelay

MASTER = "sk-master-metrics"
Samples = dict[tuple[str, frozenset], float]


# --- helpers ----------------------------------------------------------------------------------
def scrape(url: str, token: str | None = MASTER, headers: dict | None = None) -> Samples:
    request = urllib.request.Request(url + "/metrics", headers=dict(headers or {}))
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the label sets that have every one of `labels`."""
    wanted = {(k, str(v)) for k, v in labels.items()}
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def until(condition: Callable[[], object], timeout_s: float = 10.0) -> object:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)
    return result


def scrape_until(url: str, condition: Callable[[Samples], bool],
                 timeout_s: float = 20.0) -> Samples:
    """The first scrape that meets `condition`."""
    found: list[Samples] = []
    until(lambda: condition(samples := scrape(url)) and not found.append(samples), timeout_s)
    return found[0]


def status_of(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def record_row(**fields) -> dict:
    from datetime import UTC, datetime

    row = {
        "created_at": datetime.now(UTC), "request_id": "req-" + uuid.uuid4().hex,
        "api_key_id": None, "api_key_name": "tests", "endpoint": "chat/completions",
        "route": "r", "requested_model": "m", "served_model": "m", "backend": "b",
        "status_code": 200, "error_type": "", "stream": False, "prompt_tokens": 3,
        "completion_tokens": 4, "latency_ms": 12.0, "ttft_ms": 5.0, "retries": 0,
        "fallback_used": False, "queue_ms": None, "cost_usd": Decimal(0),
        "baseline_cost_usd": Decimal(0),
    }
    return {**row, **fields}


@pytest.fixture
def master(settings):
    settings.SLUICE_MASTER_KEY = MASTER
    return MASTER


def chat(sdk: openai.OpenAI, content: str, *, stream: bool = False, **kwargs) -> None:
    messages = [{"role": "user", "content": content}]
    if stream:
        list(sdk.chat.completions.create(model="default", messages=messages, stream=True,
                                         max_tokens=8, **kwargs))
    else:
        sdk.chat.completions.create(model="default", messages=messages, max_tokens=8, **kwargs)


# --- the endpoint's guard ---------------------------------------------------------------------
def test_it_refuses_a_scrape_without_the_master_key(gateway, master):
    assert status_of(gateway.url + "/metrics") == 401
    assert status_of(gateway.url + "/metrics", {"Authorization": "Bearer sk-wrong"}) == 401
    assert status_of(gateway.url + "/metrics", {"Authorization": f"Bearer {MASTER}"}) == 200


def test_it_answers_any_scraper_when_SLUICE_METRICS_PUBLIC_is_on(gateway, master, settings):
    settings.SLUICE_METRICS_PUBLIC = True

    assert status_of(gateway.url + "/metrics") == 200


def test_it_accepts_a_staff_session(gateway, master, django_user_model):
    staff = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    client = Client()
    client.force_login(staff)
    cookie = f"sessionid={client.cookies['sessionid'].value}"

    assert status_of(gateway.url + "/metrics", {"Cookie": cookie}) == 200


# --- counters and histograms from the call records ---------------------------------------------
def test_it_counts_calls_per_route_and_status_with_their_records_tokens(
        gateway, sdk, master, flush_calls):
    before = scrape(gateway.url)
    for i in range(3):
        chat(sdk, f"Count me {i}", stream=bool(i % 2))

    calls = flush_calls()
    after = scrape(gateway.url)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert len(calls) == 3
    assert delta("sluice_requests_total", route="default", status=200) == 3
    assert delta("sluice_requests_total", route="default", model=SIM_MODEL,
                 endpoint="chat/completions") == 3
    for c in calls:  # each call is counted on the backend that served it
        assert total(after, "sluice_requests_total", backend=c.backend) >= 1
    assert delta("sluice_prompt_tokens_total", route="default") == sum(
        c.prompt_tokens for c in calls)
    assert delta("sluice_completion_tokens_total", route="default") == sum(
        c.completion_tokens for c in calls)
    assert delta("sluice_cache_requests_total", route="default", cache="bypass") == 3


def test_its_histograms_count_every_calls_latency_and_each_first_token(
        gateway, sdk, master, flush_calls):
    before = scrape(gateway.url)
    for i in range(4):
        chat(sdk, f"Time me {i}", stream=bool(i % 2))

    calls = flush_calls()
    after = scrape(gateway.url)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("sluice_request_duration_seconds_count", route="default") == 4
    assert delta("sluice_request_duration_seconds_bucket", route="default", le="+Inf") == 4
    assert delta("sluice_request_duration_seconds_sum", route="default") == pytest.approx(
        sum(c.latency_ms for c in calls) / 1000)
    with_ttft = [c for c in calls if c.ttft_ms is not None]
    assert with_ttft
    assert delta("sluice_time_to_first_token_seconds_count", route="default") == len(with_ttft)
    assert delta("sluice_time_to_first_token_seconds_sum", route="default") == pytest.approx(
        sum(c.ttft_ms for c in with_ttft) / 1000)


def test_it_counts_cost_baseline_and_savings_by_cause_as_the_records_do(
        gateway, sdk, master, flush_calls):
    Price.objects.create(model=SIM_MODEL, input_usd_per_1m=1, output_usd_per_1m=2)
    Price.objects.create(model="big-model", input_usd_per_1m=10, output_usd_per_1m=30)
    Route.objects.filter(name="default").update(baseline_model="big-model", cache_exact=True)
    snapshot_reload()
    before = scrape(gateway.url)
    question = f"What does caching save? {uuid.uuid4().hex}"

    chat(sdk, question, temperature=0)
    chat(sdk, question, temperature=0)  # the exact cache's hit

    calls = flush_calls()
    after = scrape(gateway.url)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    def net(cause: str) -> float:
        return (delta("sluice_savings_usd_total", route="default", cause=cause)
                - delta("sluice_savings_loss_usd_total", route="default", cause=cause))

    assert [c.cache for c in calls] == ["miss", "exact"]
    assert delta("sluice_cost_usd_total", route="default") == pytest.approx(
        float(sum(c.cost_usd for c in calls)))
    assert delta("sluice_baseline_cost_usd_total", route="default") == pytest.approx(
        float(sum(c.baseline_cost_usd for c in calls)))
    assert calls[1].saved_cache_usd > 0 and calls[0].saved_routing_usd > 0
    assert net("cache_exact") == pytest.approx(float(calls[1].saved_cache_usd))
    assert net("routing") == pytest.approx(float(sum(c.saved_routing_usd for c in calls)))
    assert delta("sluice_cache_requests_total", route="default", cache="exact") == 1
    assert delta("sluice_cache_requests_total", route="default", cache="miss") == 1


def test_it_counts_a_failed_call_as_an_error_of_its_type(gateway, pool, master, flush_calls):
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=pool, max_retries=0)
    before = scrape(gateway.url)

    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-route", messages=[
            {"role": "user", "content": "Hello?"}])

    [call] = flush_calls()
    after = scrape(gateway.url)
    labels = {"route": call.route, "status": 404, "type": call.error_type}
    assert call.status_code == 404 and call.error_type
    assert total(after, "sluice_request_errors_total", **labels) - total(
        before, "sluice_request_errors_total", **labels) == 1
    assert total(after, "sluice_requests_total", status=404) - total(
        before, "sluice_requests_total", status=404) == 1


# --- gauges from each process's pool state ------------------------------------------------------
def test_its_gauges_show_each_backends_breaker_slots_and_queue(gateway, master):
    # Gauges are published every interval: wait until the last test's requests have left too.
    samples = scrape_until(gateway.url, lambda m: [
        (total(m, "sluice_backend_breaker_state", backend=f"sim-{i}", state="closed"),
         total(m, "sluice_backend_in_flight", backend=f"sim-{i}", model=SIM_MODEL))
        for i in (1, 2)] == [(1, 0), (1, 0)])

    for name in ("sim-1", "sim-2"):
        assert total(samples, "sluice_backend_breaker_state", backend=name, state="open") == 0
        assert total(samples, "sluice_backend_in_flight", backend=name, model=SIM_MODEL) == 0
        assert total(samples, "sluice_backend_max_concurrency", backend=name) == 256
    assert ("sluice_queue_length", frozenset({("model", SIM_MODEL)})) in samples
    assert total(samples, "sluice_queue_length", model=SIM_MODEL) == 0


def test_its_load_gauges_show_what_each_backend_reported(gateway, master):
    pool_scrape()
    samples = scrape_until(gateway.url, lambda m: (
        "sluice_backend_kv_cache_usage_ratio",
        frozenset({("backend", "sim-1"), ("model", SIM_MODEL)})) in m)

    assert total(samples, "sluice_backend_running_requests", backend="sim-1") >= 0
    assert total(samples, "sluice_backend_waiting_requests", backend="sim-2") >= 0


@pytest.fixture
def slow_route(pool):
    with SimulatorProcess(model="slow-model", ttft_ms=5, tokens_per_s=20) as sim:
        Backend.objects.create(name="slow", base_url=sim.url, model="slow-model")
        Route.objects.create(name="slow", model="slow-model")
        snapshot_reload()
        yield sim


def test_its_in_flight_gauge_counts_an_open_stream(gateway, sdk, master, slow_route):
    def in_flight() -> float:
        return total(scrape(gateway.url), "sluice_backend_in_flight", backend="slow")

    stream = sdk.chat.completions.create(model="slow", stream=True, max_tokens=60,
                                         messages=[{"role": "user", "content": "Slowly."}])
    next(iter(stream))

    until(lambda: in_flight() == 1)
    list(stream)
    until(lambda: in_flight() == 0)


# --- several processes, one directory ---------------------------------------------------------
_CHILD = """
import os, sys
from decimal import Decimal
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()
from analytics.prometheus import calls_observe, pending_set
row = {"route": sys.argv[1], "backend": "b", "served_model": "m", "status_code": 200,
       "endpoint": "chat/completions", "prompt_tokens": 10, "completion_tokens": 20,
       "latency_ms": 50.0, "ttft_ms": None, "cost_usd": Decimal("0.5")}
calls_observe([row, dict(row)])
pending_set(5)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_two_processes_writing_into_one_metrics_dir_add_up(gateway, master, transactional_db):
    route = f"two-{uuid.uuid4().hex[:8]}"
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    child = subprocess.Popen([sys.executable, "-c", _CHILD, route], cwd=ROOT,
                             env={**os.environ, "SLUICE_METRICS_DIR": directory},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        recorder.record(record_row(route=route, backend="b", served_model="m",
                                   prompt_tokens=1, cost_usd=Decimal("0.25")))
        assert recorder.flush()

        samples = scrape(gateway.url)

        assert total(samples, "sluice_requests_total", route=route) == 3
        assert total(samples, "sluice_prompt_tokens_total", route=route) == 21
        assert total(samples, "sluice_cost_usd_total", route=route) == pytest.approx(1.25)
        assert total(samples, "sluice_request_duration_seconds_count", route=route) == 3
        assert total(samples, "sluice_call_log_pending") >= 5
    finally:
        child.communicate("\n", timeout=10)


def test_a_dead_processes_live_gauges_go_and_its_counters_stay(gateway, master):
    route = f"gone-{uuid.uuid4().hex[:8]}"
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    dead_processes_sweep(directory)  # what earlier tests' children left
    child = subprocess.Popen([sys.executable, "-c", _CHILD, route], cwd=ROOT,
                             env={**os.environ, "SLUICE_METRICS_DIR": directory},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    alive = total(scrape(gateway.url), "sluice_call_log_pending")
    child.kill()  # no shut-down: its files stay behind
    child.wait()

    assert child.pid in dead_processes_sweep(directory)
    samples = scrape(gateway.url)
    assert alive - total(samples, "sluice_call_log_pending") == 5
    assert total(samples, "sluice_requests_total", route=route) == 2


# --- the database down -----------------------------------------------------------------------
def test_it_counts_each_call_once_through_a_database_outage(pool, tmp_path):
    s = connection.settings_dict
    relay = TcpRelay(target_port=int(s["PORT"] or 5432)).start()
    gateway = GatewayProcess(
        master_key=MASTER, var_dir=str(tmp_path),
        database_url=f"postgres://{s['USER'] or 'postgres'}@127.0.0.1:{relay.port}/{s['NAME']}")
    try:
        gateway.start()
        sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0)
        relay.cut()
        for i in range(4):
            chat(sdk, f"Outage {i}", stream=bool(i % 2))

        down = scrape_until(gateway.url, lambda m: total(
            m, "sluice_requests_total", route="default") == 4)
        assert total(down, "sluice_call_log_pending") == 4
        assert Call.objects.count() == 0

        relay.restore()
        until(lambda: Call.objects.count() == 4, 20)
        up = scrape_until(gateway.url, lambda m: total(m, "sluice_call_log_pending") == 0)
        assert total(up, "sluice_requests_total", route="default") == 4
        assert (tmp_path / "prometheus").is_dir()  # its own directory, beside its var dir
    finally:
        gateway.kill()
        relay.cut()


def test_a_journaled_record_replayed_by_the_next_process_is_not_counted_again(pool, tmp_path):
    s = connection.settings_dict
    relay = TcpRelay(target_port=int(s["PORT"] or 5432)).start()
    url = f"postgres://{s['USER'] or 'postgres'}@127.0.0.1:{relay.port}/{s['NAME']}"
    first = GatewayProcess(master_key=MASTER, var_dir=str(tmp_path), database_url=url)
    second = GatewayProcess(master_key=MASTER, var_dir=str(tmp_path), database_url=url)
    try:
        first.start()
        sdk = openai.OpenAI(base_url=first.url + "/v1", api_key=MASTER, max_retries=0)
        relay.cut()
        for i in range(3):
            chat(sdk, f"Journal me {i}")
        scrape_until(first.url, lambda m: total(m, "sluice_requests_total", route="default") == 3)
        assert first.terminate()
        assert len(first.journal_segments()) == 1

        relay.restore()
        second.start()  # same var dir: same metrics dir, and the journal to replay
        until(lambda: Call.objects.count() == 3, 20)

        samples = scrape(second.url)
        assert total(samples, "sluice_requests_total", route="default") == 3
    finally:
        first.kill()
        second.kill()
        relay.cut()


# --- processes that are not the gateway's ---------------------------------------------------
@pytest.mark.parametrize("exists", [True, False], ids=["existing-dir", "missing-dir"])
def test_a_simulator_that_inherits_the_metrics_dir_is_unaffected(tmp_path, exists):
    directory = tmp_path / "metrics"
    if exists:
        directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}

    with SimulatorProcess(model="m", ttft_ms=1, tokens_per_s=5000, env=env) as sim:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                           "max_tokens": 3}).encode()
        request = urllib.request.Request(sim.base_url + "/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(sim.url + "/metrics", timeout=10) as response:
            text = response.read().decode()

    families = {f.name for f in text_string_to_metric_families(text)}
    assert "vllm:num_requests_running" in families
    assert (list(directory.iterdir()) == []) if exists else not directory.exists()


def test_make_run_empties_the_metrics_dir_of_an_earlier_run(tmp_path):
    for name in ("counter_111.db", "histogram_111.db", "gauge_livesum_111.db"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "keep.txt").write_text("not ours")

    assert metrics_dir_reset(Path(tmp_path)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_the_workers_of_one_uvicorn_add_up_in_every_scrape(pool, tmp_path):
    s = connection.settings_dict
    gateway = GatewayProcess(
        master_key=MASTER, var_dir=str(tmp_path), workers=2,
        database_url=f"postgres://{s['USER'] or 'postgres'}@127.0.0.1:{s['PORT'] or 5432}"
                     f"/{s['NAME']}")
    try:
        gateway.start(timeout_s=40)
        sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0)
        # Each worker enforces max_concurrency on its own: both publish theirs.
        scrape_until(gateway.url, lambda m: total(
            m, "sluice_backend_max_concurrency", backend="sim-1") == 2 * 256, 40)
        for i in range(6):
            chat(sdk, f"Which worker? {i}", stream=bool(i % 2))

        until(lambda: Call.objects.count() == 6, 20)
        # Whichever worker answers the scrape, it counts every worker's calls.
        for _ in range(4):
            samples = scrape_until(gateway.url, lambda m: total(
                m, "sluice_requests_total", route="default") == 6)
            assert total(samples, "sluice_request_duration_seconds_count") == 6
        assert gateway.terminate()
        # A worker that shut down takes its live gauges along; its counters stay.
        left = sorted(p.name.split("_")[0] for p in (tmp_path / "prometheus").glob("*.db"))
        assert "gauge" not in left and {"counter", "histogram"} <= set(left)
    finally:
        gateway.kill()
