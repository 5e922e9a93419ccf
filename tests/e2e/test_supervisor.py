"""`make run` survives its children: one that exits is restarted with backoff (a simulator on
its own port) while the others keep serving, and a simulator killed under load fails no call
that had not yet received a byte."""
from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import openai
import pytest

from config.run import Child, RestartPolicy
from tests.e2e.test_make_run import MAIN_MODEL, MakeRun, make_run_start

# Fast enough that a restarted backend rejoins within a test: health probes every 0.5 s,
# and an open breaker half-opens after 1 s.
FAST_RECOVERY = {"SLUICE_HEALTH_INTERVAL_S": "0.5", "SLUICE_BREAKER_COOLDOWN_S": "1"}


def until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Wait for `condition`, polling; fail with `what` when it does not come true in time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def http_status(url: str) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.fixture
def start_run(tmp_path):
    """Starts `make run` with extra env; kills whatever is left of it afterwards."""
    runs: list[MakeRun] = []

    def start(**env: str) -> MakeRun:
        runs.append(make_run_start(tmp_path, **env))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()


# --- the restart policy, on real short-lived processes --------------------------------------

def crash(child: Child, *, noticed_at: float) -> float:
    """Let the child exit, have the supervisor notice at `noticed_at`, let the delay pass;
    returns the delay the child was given."""
    child.process.wait(timeout=10)
    child.tick(noticed_at)
    delay = child.restart_at - noticed_at
    child.tick(child.restart_at)
    assert child.restart_at is None and child.process is not None  # restarted
    return delay


def test_it_restarts_an_exited_child_with_doubling_backoff_up_to_a_cap(capsys):
    child = Child("crasher", ["-c", "raise SystemExit(3)"], stop_grace_s=1)
    child.start(0.0)

    delays = [crash(child, noticed_at=0.1 * i) for i in range(8)]

    assert delays == pytest.approx([0.5, 1, 2, 4, 8, 16, 30, 30])
    err = capsys.readouterr().err
    assert "sluice run: crasher exited with 3; restarting in 0.5 s\n" in err
    assert "sluice run: crasher exited with 3; restarting in 30 s\n" in err
    assert "sluice run: crasher restarted (pid " in err
    child.stop()


def test_it_resets_the_backoff_once_a_child_has_stayed_up():
    child = Child("crasher", ["-c", "raise SystemExit(3)"], stop_grace_s=1,
                  policy=RestartPolicy(initial_s=0.5, max_s=30, stable_s=10))
    child.start(0.0)
    assert [crash(child, noticed_at=t) for t in (0.1, 0.7)] == [0.5, 1]

    assert crash(child, noticed_at=child.started_at + 10) == 0.5
    child.stop()


def test_stop_drops_a_pending_restart():
    child = Child("crasher", ["-c", "raise SystemExit(3)"], stop_grace_s=1)
    child.start(0.0)
    child.process.wait(timeout=10)
    child.tick(0.1)

    child.stop()
    child.tick(100.0)

    assert child.restart_at is None and not child.running


# --- under `make run` ------------------------------------------------------------------------

def test_a_killed_simulator_comes_back_on_its_port_while_the_gateway_keeps_answering(start_run):
    run = start_run(**FAST_RECOVERY)
    port = run.sim_ports[0]
    [pid] = run.pids("-m", "simulator", "--port", str(port))

    os.kill(pid, signal.SIGKILL)
    gateway = []
    deadline = time.monotonic() + 10
    while http_status(f"http://127.0.0.1:{port}/health") != 200:
        assert time.monotonic() < deadline, run.output()
        gateway.append(http_status(f"{run.url}/health"))
        time.sleep(0.05)

    assert gateway and set(gateway) == {200}, gateway
    assert (f"sluice run: simulator sim-1 (port {port}) exited with -9; restarting in 0.5 s"
            in run.output())
    assert run.pids("-m", "simulator", "--port", str(port)) not in ([], [pid])
    sdk = openai.OpenAI(base_url=f"{run.url}/v1", api_key=run.api_key(), max_retries=0)
    until(lambda: backend_of(sdk) == "sim-1", 10, "sim-1 to serve through the gateway again")


def backend_of(sdk: openai.OpenAI) -> str | None:
    """Which backend served one small call."""
    raw = sdk.chat.completions.with_raw_response.create(
        model=MAIN_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    return raw.headers.get("x-sluice-backend")


def test_a_killed_web_server_and_worker_are_restarted(start_run):
    run = start_run()
    [web] = run.pids("-m", "uvicorn")
    os.kill(web, signal.SIGKILL)
    until(lambda: http_status(f"{run.url}/health") == 200 and run.pids("-m", "uvicorn") != [web],
          15, "a new web server on the same port")

    celery = run.pids("-m", "celery")  # the worker and the beat it embeds, in one group
    [worker] = [pid for pid in celery if os.getpgid(pid) == pid]
    os.kill(worker, signal.SIGKILL)
    until(lambda: run.pids("-m", "celery") and set(run.pids("-m", "celery")).isdisjoint(celery),
          15, "a new worker, and the old worker's beat gone with it")

    out = run.output()
    assert f"sluice run: web server (port {run.port}) exited with -9; restarting in 0.5 s" in out
    assert "sluice run: Celery worker exited with -9; restarting in 0.5 s" in out

    run.stop()  # Ctrl-C stops the restarted children too
    until(lambda: not run.processes(), 5, "every process of the run to exit")


# --- a simulator killed under load -----------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """One call as the client saw it."""

    stream: bool
    started: float
    backend: str | None
    ok: bool
    chunks: int  # stream chunks received before the end or the failure
    error: str = ""


def call_once(sdk: openai.OpenAI, *, stream: bool) -> Outcome:
    """One chat completion; a stream counts as ok only when it reached its finish_reason."""
    started, backend, chunks = time.monotonic(), None, 0
    try:
        raw = sdk.chat.completions.with_raw_response.create(
            model=MAIN_MODEL, messages=[{"role": "user", "content": "Count to ten."}],
            max_tokens=16, stream=stream)
        backend = raw.headers.get("x-sluice-backend")
        if not stream:
            ok = bool(raw.parse().choices[0].message.content)
            return Outcome(stream, started, backend, ok, 0, "" if ok else "empty answer")
        finished = False
        for chunk in raw.parse():
            chunks += 1
            finished = finished or any(c.finish_reason for c in chunk.choices)
        return Outcome(stream, started, backend, finished, chunks,
                       "" if finished else "ended without a finish_reason")
    except Exception as exc:  # noqa: BLE001 - every failure is counted, whatever its kind
        return Outcome(stream, started, backend, False, chunks, repr(exc))


class Load:
    """`workers` threads sending calls back to back, every other one streamed, until stopped
    or `max_calls` have been sent."""

    def __init__(self, sdk: openai.OpenAI, *, workers: int = 8, max_calls: int = 400) -> None:
        self.sdk, self.max_calls = sdk, max_calls
        self.outcomes: list[Outcome] = []
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return list(self.outcomes)

    def done(self) -> int:
        return len(self.outcomes)

    def served_since(self, t: float) -> set[str]:
        """The backends that served calls started after monotonic time `t`."""
        return {o.backend for o in list(self.outcomes) if o.ok and o.started > t}

    def _work(self) -> None:
        while not self._stop.is_set() and (n := next(self._numbers)) < self.max_calls:
            self.outcomes.append(call_once(self.sdk, stream=n % 2 == 1))


def test_killing_a_simulator_under_load_fails_no_call_before_its_first_byte(start_run):
    run = start_run(**FAST_RECOVERY)
    sdk = openai.OpenAI(base_url=f"{run.url}/v1", api_key=run.api_key(), max_retries=0,
                        timeout=20)
    victim = run.sim_ports[1]
    [pid] = run.pids("-m", "simulator", "--port", str(victim))
    load = Load(sdk).start()
    try:
        until(lambda: load.done() >= 60, 20, "60 calls before the kill")
        assert load.served_since(0) == {"sim-1", "sim-2"}  # both in use before the kill

        os.kill(pid, signal.SIGKILL)
        until(lambda: http_status(f"http://127.0.0.1:{victim}/health") == 200, 10,
              "sim-2 to answer on its port again")
        back = time.monotonic()
        until(lambda: load.served_since(back) == {"sim-1", "sim-2"}, 15,
              "both backends to serve again")
        enough = max(load.done() + 40, 240)
        until(lambda: load.done() >= enough, 15, f"{enough} calls in all")
    finally:
        outcomes = load.stop()
    run.stop()  # flushes the call log
    logged, retried = sqlite3.connect(run.var_dir / "sluice.sqlite3").execute(
        "select count(*), count(*) filter (where retries > 0) from analytics_call").fetchone()

    failed = [o for o in outcomes if not o.ok]
    unary = [o for o in failed if not o.stream]
    early = [o for o in failed if o.stream and o.chunks == 0]
    mid_stream = [o for o in failed if o.stream and o.chunks > 0]
    report = (f"{len(outcomes)} calls: {len(unary)} non-streamed failed, {len(early)} streams "
              f"failed before their first chunk, {len(mid_stream)} broke mid-stream; "
              f"{retried} of {logged} logged calls retried; "
              f"{sorted({o.error for o in failed})[:5]}")
    print(report)
    assert 200 <= len(outcomes) <= 400, report
    assert (len(unary), len(early)) == (0, 0), report
    assert f"sluice run: simulator sim-2 (port {victim}) exited with -9" in run.output()
    assert retried > 0, report  # the kill did hit calls, and the gateway retried them
