"""Shared fixtures. The suite runs against the real PostgreSQL and Redis of this machine
(`make test` points DATABASE_URL and REDIS_URL at them) and real simulator processes."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import openai
import pytest
import uvicorn
from django.conf import settings

from analytics.recorder import recorder
from proxy.loadscrape import load_scrape_all
from proxy.models import ApiKey, Backend, Route
from proxy.snapshot import snapshot_current, snapshot_reload
from proxy.upstream import session_close
from simulator.process import SimulatorProcess

# Prometheus' multi-process files of the in-process gateway, apart from any `make run` in this
# checkout and from earlier sessions (a gateway started as a child process keeps its own,
# under its SLUICE_VAR_DIR). Set before any metric's first value opens a file: the metrics are
# labelled, so importing their modules opens none.
_METRICS_DIR = tempfile.mkdtemp(prefix="sluice-test-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _METRICS_DIR
settings.SLUICE_METRICS_DIR = Path(_METRICS_DIR)
# The in-process recorder's journal, likewise: a `make run` in this checkout must not replay
# the test suite's calls into its own database.
_JOURNAL_DIR = tempfile.mkdtemp(prefix="sluice-test-journal-")
settings.SLUICE_JOURNAL_DIR = Path(_JOURNAL_DIR)


def pytest_unconfigure(config):
    shutil.rmtree(_METRICS_DIR, ignore_errors=True)
    shutil.rmtree(_JOURNAL_DIR, ignore_errors=True)


def pytest_configure(config):
    if "postgresql" not in settings.DATABASES["default"]["ENGINE"] or not settings.REDIS_URL:
        pytest.exit(
            "The tests run against PostgreSQL and Redis: use `make test`, or set "
            "DATABASE_URL=postgres://postgres@127.0.0.1:5432/test and "
            "REDIS_URL=redis://127.0.0.1:6379/15.",
            returncode=2,
        )


# --- real processes and servers ------------------------------------------------------------
SIM_MODEL = "sim-model"


@pytest.fixture(scope="session")
def simulators():
    """Two real simulator processes serving SIM_MODEL, fast enough for tests."""
    # The same seed on both: whichever backend serves a prompt, the answer is the same.
    sims = [SimulatorProcess(model=SIM_MODEL, ttft_ms=5, tokens_per_s=2000, seed=1)
            for _ in range(2)]
    for sim in sims:
        sim.start()
    yield sims
    for sim in sims:
        sim.stop()


class ThreadedGateway:
    """config.asgi.application under uvicorn on a loopback port, in a thread of the test
    process, so that tests can count its database queries and flush its call log."""

    def __init__(self) -> None:
        from config.asgi import application

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(application, lifespan="on", log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the in-process gateway did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def pool_scrape(period_s: float = 1.0) -> None:
    """One scrape of every backend's /metrics, as the gateway's loop takes it (the session's
    test gateway takes none on its own)."""
    async def run():
        await load_scrape_all(snapshot_current(), period_s=period_s)
        await session_close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def threaded_gateway(django_db_setup, django_db_blocker):
    """One gateway for the session. Its writer thread, config refresh, health probes and load
    scrapes never fire on their own here: each test reloads the config, flushes the log,
    probes and scrapes the pool where it wants to. (A probe landing mid-test takes a dead
    backend out before the request path meets it; a scrape taken while a call runs makes
    that backend look busy to the next call.)"""
    settings.SLUICE_LOG_FLUSH_INTERVAL_S = 3600
    settings.SLUICE_CONFIG_REFRESH_S = 3600
    settings.SLUICE_HEALTH_INTERVAL_S = 3600
    settings.SLUICE_LOAD_SCRAPE_S = 0
    gateway = ThreadedGateway()
    with django_db_blocker.unblock():
        gateway.start()
    yield gateway
    with django_db_blocker.unblock():
        gateway.stop()


@pytest.fixture
def pool(transactional_db, simulators):
    """The simulators as backends of SIM_MODEL, a `default` route to it, and an API key."""
    for i, sim in enumerate(simulators, start=1):
        Backend.objects.create(name=f"sim-{i}", base_url=sim.url, model=SIM_MODEL)
    Route.objects.create(name="default", model=SIM_MODEL)
    _, plaintext = ApiKey.issue(name="tests")
    snapshot_reload()
    return plaintext


@pytest.fixture
def gateway(threaded_gateway, pool):
    """The in-process gateway serving `pool`; its call log is flushed after the test."""
    recorder.flush()  # nothing left over from an earlier test
    yield threaded_gateway
    recorder.flush()


@pytest.fixture
def sdk(gateway, pool) -> openai.OpenAI:
    """The official SDK pointed at Sluice, with no retries to hide errors."""
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=pool, max_retries=0, timeout=30)


@pytest.fixture
def flush_calls():
    """Write the buffered call log now and return every Call row, oldest first."""
    from analytics.models import Call

    def flush():
        assert recorder.flush(), "the call log could not be written"
        return list(Call.objects.order_by("created_at"))

    return flush
