"""`make run` on embedded defaults (SQLite, in-process cache, filesystem broker, simulated
pool): it serves a streamed openai call, logs it, and stops cleanly on Ctrl-C."""
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import openai
import pytest

from simulator.process import free_port

ROOT = Path(__file__).resolve().parents[2]


def two_free_consecutive_ports() -> int:
    for _ in range(50):
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
                return base
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture
def make_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    port = free_port()
    env.update(SLUICE_VAR_DIR=str(tmp_path), SLUICE_SIM_BASE_PORT=str(two_free_consecutive_ports()),
               SLUICE_ADMIN_PASSWORD="correct-horse", PORT=str(port), SLUICE_LOG_FLUSH_INTERVAL_S="0.2")
    log = tmp_path / "make-run.log"
    proc = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while "Ctrl-C stops everything" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield proc, port, log, tmp_path
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def test_make_run_serves_a_streamed_call_logs_it_and_stops_on_ctrl_c(make_run):
    proc, port, log, var_dir = make_run
    banner = log.read_text()
    api_key = re.search(r"API key\s+(sk-sluice-\S+)", banner).group(1)
    assert f"http://127.0.0.1:{port}/dashboard/" in banner
    assert "password: correct-horse" in banner

    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=0)
    text = "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Hello"}], stream=True) if c.choices)
    assert text
    assert proc.poll() is None  # every child (pool, web, worker) is still up

    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    proc.wait(timeout=60)

    rows = sqlite3.connect(var_dir / "sluice.sqlite3").execute(
        "select route, backend, status_code, completion_tokens from analytics_call").fetchall()
    assert len(rows) == 1
    route, backend, status, completion_tokens = rows[0]
    assert (route, status) == ("default", 200)
    assert backend in ("sim-1", "sim-2") and completion_tokens > 0
