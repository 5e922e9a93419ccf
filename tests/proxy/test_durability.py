"""Nothing is lost: a database outage, a shutdown during one, and in-flight streams at SIGTERM.

These run the gateway as its own process (as `make run` does) against the real PostgreSQL,
reached through a relay that the test cuts and restores."""
import threading
import time

import openai
import pytest
from django.db import connection

from analytics.models import Call
from tests.processes import GatewayProcess, TcpRelay, db_url, until_true

MASTER = "sk-master-durability"
MESSAGES = [{"role": "user", "content": "Are my calls safe?"}]



def wait_for_calls(n: int, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and Call.objects.count() < n:
        time.sleep(0.1)
    return Call.objects.count()



@pytest.fixture
def relay():
    relay = TcpRelay(target_port=int(connection.settings_dict["PORT"] or 5432)).start()
    yield relay
    relay.cut()


@pytest.fixture
def gateways():
    started: list[GatewayProcess] = []

    def start(**kwargs) -> GatewayProcess:
        gateway = GatewayProcess(master_key=MASTER, **kwargs).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.kill()


def call_through(gateway: GatewayProcess, *, stream: bool) -> str:
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0, timeout=30)
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
            model="default", messages=MESSAGES, stream=True) if c.choices)
    answer = sdk.chat.completions.create(model="default", messages=MESSAGES)
    return answer.choices[0].message.content


def test_a_database_outage_fails_no_call_and_loses_no_record(pool, relay, gateways):
    gateway = gateways(database_url=db_url(relay.port))

    relay.cut()
    answers = [call_through(gateway, stream=i % 2 == 0) for i in range(6)]
    time.sleep(0.5)  # the writer tries, and fails, in the meantime
    assert all(answers)
    assert Call.objects.count() == 0

    relay.restore()

    assert wait_for_calls(6) == 6
    assert set(Call.objects.values_list("status_code", flat=True)) == {200}


def test_a_shutdown_during_an_outage_leaves_records_in_the_journal_for_the_next_process(
        pool, relay, gateways):
    first = gateways(database_url=db_url(relay.port))
    relay.cut()
    for i in range(3):
        call_through(first, stream=bool(i % 2))

    assert first.terminate()
    assert len(first.journal_segments()) == 1
    assert Call.objects.count() == 0

    relay.restore()
    gateways(database_url=db_url(relay.port), var_dir=first.var_dir)

    assert wait_for_calls(3) == 3
    assert until_true(lambda: first.journal_segments() == [])


def test_sigterm_lets_an_in_flight_stream_finish_and_records_it(pool, gateways, slow_backend):
    gateway = gateways(database_url=db_url(int(connection.settings_dict["PORT"] or 5432)))
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0, timeout=30)
    stream = sdk.chat.completions.create(model="slow", messages=MESSAGES, stream=True,
                                         max_tokens=30)
    chunks = [next(iter(stream))]
    stopped_cleanly: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped_cleanly.append(gateway.terminate()))

    stopper.start()
    chunks += list(stream)
    stopper.join()

    assert stopped_cleanly == [True]
    assert chunks[-1].choices[0].finish_reason == "length"
    [call] = Call.objects.all()
    assert (call.status_code, call.completion_tokens) == (200, 30)


@pytest.fixture
def slow_backend(pool):
    from proxy.models import Backend, Route
    from simulator.process import SimulatorProcess

    with SimulatorProcess(model="slow-model", ttft_ms=5, tokens_per_s=20) as sim:
        Backend.objects.create(name="slow", base_url=sim.url, model="slow-model")
        Route.objects.create(name="slow", model="slow-model")
        yield sim
