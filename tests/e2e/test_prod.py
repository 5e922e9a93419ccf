"""The production run (README "Running in production"): the start-up check refuses SQLite and
a missing secret; gunicorn with two uvicorn workers on PostgreSQL serves streams and reloads
on HUP without cutting one; `make prod` runs web, workers and exactly one beat under
supervisord, which restarts what dies."""
from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from django.conf import settings

from analytics.models import Call
from proxy.models import ApiKey, Backend, Route
from simulator.process import SimulatorProcess, free_port
from tests.e2e.test_make_run import MakeRun
from tests.processes import db_url

ROOT = Path(__file__).resolve().parents[2]
MASTER_KEY = "sk-master-prod"
SLOW_MODEL = "sim-slow"
TOKENS_PER_S = 20  # the slow simulator's decode speed: a 80-token stream lasts 4 s


def prod_env(var_dir: Path, *, database_url: str | None = None, **extra: str) -> dict[str, str]:
    """A complete production environment: PostgreSQL, Redis, a secret, allowed hosts; state
    under `var_dir`, two web workers, one process per Celery worker. No inherited SLUICE_*."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLUICE_", "PROMETHEUS_")) and k not in ("DATABASE_URL", "PORT")}
    env.update(
        SLUICE_ENV="production", DATABASE_URL=database_url or db_url(),
        REDIS_URL=settings.REDIS_URL, SLUICE_SECRET_KEY=secrets.token_urlsafe(50),
        SLUICE_ALLOWED_HOSTS="127.0.0.1,localhost", SLUICE_VAR_DIR=str(var_dir),
        SLUICE_MASTER_KEY=MASTER_KEY, PORT=str(free_port()), SLUICE_WEB_WORKERS="2",
        SLUICE_WORKER_CONCURRENCY="1", SLUICE_LOG_FLUSH_INTERVAL_S="0.2",
        SLUICE_CONFIG_REFRESH_S="0.5")
    env.update(extra)
    return env


def wait_for(condition: Callable[[], object], timeout_s: float, what: str,
             log: Callable[[], str] = lambda: "") -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    pytest.fail(f"not within {timeout_s:g} s: {what}\n{log()}")


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except OSError:
        return 0, {}, b""


def children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


# --- the start-up check --------------------------------------------------------------------
def test_make_prod_refuses_sqlite_with_a_clear_message(tmp_path):
    env = prod_env(tmp_path)
    del env["DATABASE_URL"]

    result = subprocess.run(["make", "--no-print-directory", "prod"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)

    assert result.returncode != 0
    assert "(sluice.E001) SLUICE_ENV=production refuses SQLite" in result.stderr
    assert "HINT: set DATABASE_URL=postgres://" in result.stderr
    assert not (tmp_path / "supervisord.pid").exists()  # nothing was started


def test_gunicorn_refuses_to_start_in_production_without_a_secret(tmp_path):
    env = prod_env(tmp_path)
    del env["SLUICE_SECRET_KEY"]

    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    assert "(sluice.E003) SLUICE_ENV=production needs SLUICE_SECRET_KEY" in result.stderr
    assert "secrets.token_urlsafe(50)" in result.stderr  # how to make one
    assert "refusing to start" in result.stderr
    assert "Booting worker" not in result.stderr


def test_the_check_refuses_a_weak_secret_and_passes_a_complete_configuration(tmp_path):
    def check(env):
        return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    weak = check(prod_env(tmp_path, SLUICE_SECRET_KEY="changeme"))
    complete = check(prod_env(tmp_path))

    assert weak.returncode == 1 and "SLUICE_SECRET_KEY is too weak" in weak.stderr
    assert complete.returncode == 0, complete.stderr
    assert "no issues" in complete.stdout


# --- gunicorn: workers, streams, HUP -------------------------------------------------------
@pytest.fixture(scope="module")
def slow_simulator():
    with SimulatorProcess(model=SLOW_MODEL, ttft_ms=5, tokens_per_s=TOKENS_PER_S, seed=1) as sim:
        yield sim


@pytest.fixture
def slow_pool(transactional_db, slow_simulator) -> str:
    """A `default` route to the slow simulator and a key, committed for the gateway's workers."""
    Backend.objects.create(name="slow-1", base_url=slow_simulator.url, model=SLOW_MODEL)
    Route.objects.create(name="default", model=SLOW_MODEL)
    return ApiKey.issue(name="prod")[1]


class Gunicorn:
    """`gunicorn -c deploy/gunicorn.conf.py` as the web program runs it, output in a file."""

    def __init__(self, env: dict[str, str], var_dir: Path) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{env['PORT']}"
        self.log_path = var_dir / "gunicorn.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"], cwd=ROOT,
            env=env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> set[int]:
        return children(self.proc.pid)

    def started(self) -> int:
        """Workers whose lifespan start-up completed, since the master started."""
        return self.log().count("Application startup complete")

    def wait_ready(self, workers_started: int) -> None:
        def ready():
            assert self.proc.poll() is None, f"gunicorn exited:\n{self.log()}"
            return self.started() >= workers_started and http_get(self.url + "/health")[0] == 200
        wait_for(ready, 90, f"{workers_started} workers started", self.log)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def gunicorn(tmp_path, slow_pool):
    server = Gunicorn(prod_env(tmp_path), tmp_path)
    try:
        server.wait_ready(2)
        yield server
    finally:
        code = server.stop()
    assert code == 0, server.log()
    # Each worker flushed its call log and removed its own journal (one owner per process).
    assert server.log().count("call log flushed") == server.started()
    assert not list((tmp_path / "journal").glob("*"))


class Stream(threading.Thread):
    """A streamed chat completion read raw, to see its last event; `first_byte` is set when
    the answer has started, `done_at` when it ended."""

    def __init__(self, url: str, key: str, tokens: int) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.tokens = url, key, tokens
        self.first_byte = threading.Event()
        self.status, self.body, self.done_at, self.cut = 0, b"", 0.0, False

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.url.removeprefix("http://"), timeout=60)
        conn.request("POST", "/v1/chat/completions", json.dumps({
            "model": "default", "stream": True, "max_tokens": self.tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Tell me a long story"}]}),
            {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        self.status = resp.status
        try:
            while chunk := resp.read1(65536):
                self.body += chunk
                self.first_byte.set()
        except (http.client.IncompleteRead, OSError):
            self.cut = True  # the connection closed before the chunked body's end
        finally:
            self.done_at = time.monotonic()
            self.first_byte.set()
            conn.close()


def chat(url: str, key: str, *, unanswered_retries: int = 0) -> int:
    """One SDK call, with no retry of any error but, up to `unanswered_retries` times, a
    connection closed before any answer: an old worker that accepted it in the instant it
    stopped closes it unread (uvicorn closes connections with no request yet at shutdown).
    The SDK's default retries cover that; a refusal or an error answer still fails here."""
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
    retries_left = unanswered_retries
    while True:
        try:
            sdk.chat.completions.create(model="default", max_tokens=2,
                                        messages=[{"role": "user", "content": "Hi"}])
            return 200
        except openai.APIConnectionError as exc:
            if retries_left == 0 or "without sending a response" not in str(exc.__cause__):
                raise
            retries_left -= 1


def requests_counted(url: str) -> float:
    """sluice_requests_total over every label set, as /metrics adds up the processes."""
    status, _, body = http_get(url + "/metrics", {"Authorization": f"Bearer {MASTER_KEY}"})
    assert status == 200
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith("sluice_requests_total{"))


def test_gunicorn_workers_serve_streams_and_a_hup_reload_cuts_none(gunicorn, slow_pool):
    old = gunicorn.workers()
    assert len(old) == 2  # SLUICE_WEB_WORKERS
    sdk = openai.OpenAI(base_url=gunicorn.url + "/v1", api_key=slow_pool, max_retries=0,
                        timeout=60)
    text = "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
        model="default", max_tokens=4, stream=True,
        messages=[{"role": "user", "content": "Hello"}]) if c.choices)
    assert text

    exits: dict[int, float] = {}  # old worker -> when it was gone

    def watch():
        while len(exits) < len(old):
            for pid in old - gunicorn.workers() - exits.keys():
                exits[pid] = time.monotonic()
            time.sleep(0.02)

    tokens = 4 * TOKENS_PER_S  # 4 s of stream
    stream = Stream(gunicorn.url, slow_pool, tokens)
    stream.start()
    assert stream.first_byte.wait(30) and stream.status == 200
    os.kill(gunicorn.proc.pid, signal.SIGHUP)  # a deploy, as `supervisorctl signal HUP web`
    threading.Thread(target=watch, daemon=True).start()
    # During the reload: answered, not refused.
    assert chat(gunicorn.url, slow_pool, unanswered_retries=1) == 200
    stream.join(60)

    assert not stream.cut and stream.body.endswith(b"data: [DONE]\n\n"), stream.body[-300:]
    assert b'"error"' not in stream.body
    wait_for(lambda: len(exits) == len(old), 60, "old workers gone", gunicorn.log)
    # The idle old worker left while the stream ran; the one serving it stayed until it ended.
    assert min(exits.values()) < stream.done_at <= max(exits.values())
    gunicorn.wait_ready(4)
    new = gunicorn.workers()
    assert len(new) == 2 and not new & old
    assert chat(gunicorn.url, slow_pool) == 200  # the next request: a new worker's

    # Every call is in the log, the drained stream's flushed by its old worker on the way out,
    # and /metrics adds up all four processes' counters, the exited ones' too.
    wait_for(lambda: Call.objects.count() == 4, 30, "4 calls logged", gunicorn.log)
    drained = Call.objects.get(completion_tokens=tokens)
    assert (drained.status_code, drained.stream) == (200, True)
    assert Call.objects.filter(status_code=200).count() == 4
    wait_for(lambda: requests_counted(gunicorn.url) == 4, 10, "4 requests in /metrics")


def test_a_stream_past_the_graceful_timeout_is_cancelled_and_logged_at_a_stop(tmp_path,
                                                                              slow_pool):
    # graceful_timeout 11 s leaves uvicorn 1 s for in-flight requests, then the call-log flush.
    server = Gunicorn(prod_env(tmp_path, SLUICE_GRACEFUL_TIMEOUT_S="11"), tmp_path)
    try:
        server.wait_ready(2)
        stream = Stream(server.url, slow_pool, 20 * TOKENS_PER_S)  # 20 s: far too long
        stream.start()
        assert stream.first_byte.wait(30) and stream.status == 200
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        stream.join(30)
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.stop()

    assert stream.done_at - started < 10  # cut at uvicorn's deadline, not at the stream's end
    assert stream.cut and not stream.body.endswith(b"data: [DONE]\n\n")
    assert "call log flushed" in server.log()
    call = Call.objects.get()  # written before the worker exited, not lost with it
    assert (call.status_code, call.error_type) == (499, "client_closed")


# --- make prod: supervisord --------------------------------------------------------------
def supervisorctl(env: dict[str, str], *args: str) -> str:
    return subprocess.run([str(ROOT / ".venv/bin/supervisorctl"), "-c", "deploy/supervisord.conf",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=30).stdout


def program_pids(env: dict[str, str]) -> dict[str, int]:
    """Program -> pid of the RUNNING ones, from `supervisorctl status`."""
    pids = {}
    for line in supervisorctl(env, "status").splitlines():
        name, state, *rest = line.split()
        if state == "RUNNING":
            pids[name] = int(rest[1].rstrip(","))
    return pids


@pytest.mark.timeout(400)
def test_make_prod_runs_every_program_and_supervisord_restarts_what_dies(tmp_path,
                                                                          transactional_db):
    env = prod_env(tmp_path)
    log = tmp_path / "make-prod.log"
    proc = subprocess.Popen(["make", "--no-print-directory", "prod"], cwd=ROOT, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    run = MakeRun(proc, int(env["PORT"]), [], log, tmp_path)
    programs = {"web", "worker", "batch", "beat"}
    try:
        def up():
            assert proc.poll() is None, run.output()
            pids = program_pids(env)
            return (pids.keys() == programs and len(children(pids["web"])) == 2
                    and http_get(run.url + "/health")[0] == 200 and pids)
        pids = wait_for(up, 180, "every program running", run.output)
        assert len(run.pids("beat")) == 1  # exactly one beat
        assert run.pids("worker", "-Q", "celery") and run.pids("worker", "-Q", "batch")

        # Collected static files, served by whitenoise under hashed, cacheable names.
        status, _, page = http_get(run.url + "/admin/login/")
        assert status == 200
        css = page.decode().split('href="/static/admin/css/base.', 1)[1].split('"', 1)[0]
        status, headers, _ = http_get(f"{run.url}/static/admin/css/base.{css}")
        assert status == 200 and "immutable" in headers["cache-control"]

        # A web worker that dies is replaced by gunicorn's master.
        workers = children(pids["web"])
        os.kill(min(workers), signal.SIGKILL)
        wait_for(lambda: len(children(pids["web"]) - workers) == 1
                 and len(children(pids["web"])) == 2, 60, "a new web worker", run.output)

        # The web program that dies (its master SIGKILLed) is restarted by supervisord; its
        # orphaned workers leave (parent-death signal), so the new master gets the port.
        os.kill(pids["web"], signal.SIGKILL)
        restarted = wait_for(lambda: (p := program_pids(env).get("web", pids["web"]))
                             != pids["web"] and len(children(p)) == 2
                             and http_get(run.url + "/health")[0] == 200 and p,
                             90, "web restarted", run.output)
        # The new master and its two workers; no orphan of the old one.
        assert len(run.pids("config.asgi:application")) == 3

        # Beat too, and there is still exactly one.
        os.kill(pids["beat"], signal.SIGKILL)
        wait_for(lambda: program_pids(env).get("beat", pids["beat"]) != pids["beat"], 60,
                 "beat restarted", run.output)
        assert len(run.pids("beat")) == 1

        # `make reload`: a deploy through supervisorctl, new workers under the same master.
        before = children(restarted)
        subprocess.run(["make", "--no-print-directory", "reload"], cwd=ROOT, env=env,
                       check=True, capture_output=True, timeout=60)
        wait_for(lambda: len(children(restarted)) == 2 and not children(restarted) & before,
                 90, "new workers after the reload", run.output)
        assert http_get(run.url + "/health")[0] == 200
        assert program_pids(env)["web"] == restarted

        run.stop()  # Ctrl-C: supervisord stops every program, web last
        wait_for(lambda: not run.processes(), 30, "every process gone", run.output)
    finally:
        if proc.poll() is None or run.processes():
            run.kill()
