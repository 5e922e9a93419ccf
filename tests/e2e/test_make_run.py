"""`make run` on embedded defaults (SQLite, in-process cache, filesystem broker, simulated
pool): it serves a streamed openai call, logs it, and stops cleanly on Ctrl-C.

`MakeRun` and `make_run_start` are shared with test_supervisor.py, which kills its children."""
from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from simulator.process import free_port

ROOT = Path(__file__).resolve().parents[2]


def free_consecutive_ports(count: int = 3) -> int:
    """config.run puts the pool on SLUICE_SIM_BASE_PORT and the ports after it (two servers
    of the main model, one of the small model)."""
    for _ in range(50):
        base = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {count} consecutive free ports")


# The main simulated model by name: its calls skip the `default` route's cost steps (caches,
# small-model routing), so the main pool's two servers serve every one of them.
MAIN_MODEL = "sim-llama-3-8b"


@dataclass
class MakeRun:
    """A `make run` in its own process group, with its output (stdout and stderr) in a file."""

    proc: subprocess.Popen[bytes]
    port: int
    sim_ports: list[int]
    log: Path
    var_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def api_key(self) -> str:
        """The first-run key that the banner prints."""
        return re.search(r"API key\s+(sk-sluice-\S+)", self.output()).group(1)

    def processes(self) -> dict[int, list[str]]:
        """pid -> argv of every live process of this run (make, config.run and its children):
        they all carry this run's SLUICE_VAR_DIR in their environment."""
        marker = f"SLUICE_VAR_DIR={self.var_dir}".encode()
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # exited; only waiting for its parent to reap it
                argv = (entry / "cmdline").read_bytes().decode().split("\0")[:-1]
            except OSError:
                continue  # gone meanwhile
            found[int(entry.name)] = argv
        return found

    def pids(self, *args: str) -> list[int]:
        """The pids of this run's processes whose argv contains `args` in a row."""
        n = len(args)
        return sorted(pid for pid, argv in self.processes().items()
                      if any(tuple(argv[i:i + n]) == args for i in range(len(argv))))

    def stop(self) -> int:
        """Ctrl-C, as a terminal sends it to the foreground group; the exit status."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        """After a failure: SIGKILL everything, including children in their own sessions;
        make and the supervisor first, so that nothing restarts what is being killed."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)


def make_run_start(var_dir: Path, **env: str) -> MakeRun:
    """`make run` on free ports with its state under `var_dir`; returns once the banner is out."""
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    port, sim_base = free_port(), free_consecutive_ports()
    environ.update(SLUICE_VAR_DIR=str(var_dir), SLUICE_SIM_BASE_PORT=str(sim_base),
                   SLUICE_ADMIN_PASSWORD="correct-horse", PORT=str(port),
                   SLUICE_LOG_FLUSH_INTERVAL_S="0.2", **env)
    log = var_dir / "make-run.log"
    proc = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=environ,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    run = MakeRun(proc, port, [sim_base, sim_base + 1], log, var_dir)
    deadline = time.monotonic() + 90
    while "Ctrl-C stops everything" not in run.output():
        if proc.poll() is not None or time.monotonic() > deadline:
            run.kill()
            pytest.fail(f"make run did not start:\n{run.output()}")
        time.sleep(0.2)
    return run


@pytest.fixture
def make_run(tmp_path):
    run = make_run_start(tmp_path)
    yield run
    if run.proc.poll() is None or run.processes():
        run.kill()


def test_make_run_serves_a_streamed_call_logs_it_and_stops_on_ctrl_c(make_run):
    banner = make_run.output()
    assert f"{make_run.url}/dashboard/" in banner
    assert "password: correct-horse" in banner

    sdk = openai.OpenAI(base_url=f"{make_run.url}/v1", api_key=make_run.api_key(), max_retries=0)
    text = "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Hello"}], stream=True) if c.choices)
    assert text
    assert make_run.proc.poll() is None
    assert len(make_run.pids("-m", "simulator")) == 3  # two main, one small
    assert make_run.pids("-m", "uvicorn") and make_run.pids("-m", "celery")

    make_run.stop()

    deadline = time.monotonic() + 5  # the worker's beat may take a moment after the worker
    while make_run.processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert make_run.processes() == {}  # every child stopped, none left behind
    assert "sluice run:" not in make_run.output()  # nothing exited, so nothing was restarted
    rows = sqlite3.connect(make_run.var_dir / "sluice.sqlite3").execute(
        "select route, backend, status_code, completion_tokens from analytics_call").fetchall()
    assert len(rows) == 1
    route, backend, status, completion_tokens = rows[0]
    assert (route, status) == ("default", 200)
    assert backend in ("sim-1", "sim-2", "sim-small-1") and completion_tokens > 0
