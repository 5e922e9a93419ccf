"""A web process killed with SIGKILL loses no answered call: its journal is replayed.

The gateway runs as its own process (as `make run` starts it) with a long flush interval, so
that at the kill several seconds of answered calls exist only in its journal. The clients count
what they received completely; the log must hold every one of those calls, once."""
import threading
import time

import openai
import pytest
from django.db import connection
from django.db.models import Count

from analytics.models import Call
from tests.processes import GatewayProcess, TcpRelay, db_url, until_true

MASTER = "sk-master-crash"
SLOW_FLUSH = {"SLUICE_LOG_FLUSH_INTERVAL_S": "5", "SLUICE_JOURNAL_SCAN_S": "0.5"}




class SteadyLoad:
    """A few client threads sending streamed and non-streamed chats back to back; each keeps
    the request id of every answer it received whole ([DONE] for a stream)."""

    def __init__(self, url: str, *, threads: int = 6) -> None:
        self.sdk = openai.OpenAI(base_url=url + "/v1", api_key=MASTER, max_retries=0,
                                 timeout=10)
        self.answered: list[str] = []
        self.failed = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def start(self) -> "SteadyLoad":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _run(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                self.answered.append(self._call(stream=(index + n) % 2 == 0))
            except (openai.APIError, ConnectionError):
                self.failed += 1  # in flight at the kill: not an answered call

    def _call(self, *, stream: bool) -> str:
        raw = self.sdk.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": "Count me once."}],
            max_tokens=8, stream=stream)
        request_id = raw.headers["x-request-id"]
        if stream:
            # The SDK's iterator ends at [DONE]; a connection cut before it raises instead.
            chunks = list(raw.parse())
            if not chunks or chunks[-1].choices and not chunks[-1].choices[0].finish_reason:
                raise ConnectionError("stream ended early")
        else:
            raw.parse()
        return request_id


@pytest.fixture
def started():
    gateways: list[GatewayProcess] = []

    def start(**kwargs) -> GatewayProcess:
        gateway = GatewayProcess(master_key=MASTER, **kwargs).start()
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in gateways:
        gateway.kill()


def logged_ids() -> dict[str, int]:
    return dict(Call.objects.values_list("request_id").annotate(n=Count("id")))


def test_a_killed_process_loses_no_answered_call_and_logs_none_twice(pool, started):
    first = started(database_url=db_url(), env=SLOW_FLUSH)
    load = SteadyLoad(first.url).start()
    time.sleep(3)

    first.kill()  # SIGKILL: no shutdown, no flush
    load.stop()
    answered = set(load.answered)
    assert len(answered) > 100, "the load was too light to show anything"
    assert len(answered) - len(logged_ids()) > 20, "the records were written before the kill"

    started(database_url=db_url(), var_dir=first.var_dir, env=SLOW_FLUSH)

    assert until_true(lambda: answered <= logged_ids().keys())
    assert max(logged_ids().values()) == 1
    assert until_true(lambda: first.journal_segments() == [])


def test_a_replay_while_the_database_is_down_happens_once_it_is_back(pool, started):
    relay = TcpRelay(target_port=int(connection.settings_dict["PORT"] or 5432)).start()
    try:
        first = started(database_url=db_url(relay.port), env=SLOW_FLUSH)
        load = SteadyLoad(first.url, threads=2).start()
        time.sleep(1)
        relay.cut()  # the database goes down, then the process dies
        time.sleep(1)
        first.kill()
        load.stop()
        answered = set(load.answered)

        second = started(database_url=db_url(relay.port), var_dir=first.var_dir,
                         env={**SLOW_FLUSH, "SLUICE_LOG_FLUSH_INTERVAL_S": "0.2"})
        time.sleep(1.5)  # it tries, and fails, to replay
        assert Call.objects.count() == 0
        assert first.journal_segments() != []

        relay.restore()

        assert until_true(lambda: answered <= logged_ids().keys())
        assert max(logged_ids().values()) == 1
        assert until_true(lambda: first.journal_segments() == [])
        assert "replayed" in second.log()
    finally:
        relay.cut()
