"""`python manage.py vllm_pool` as a real process on the test database: it runs this host's
servers from the admin, registers each backend once its /health answers, takes it out while it
restarts, and takes every one out on SIGTERM. `--simulate` runs the simulator in their place; a
stand-in `vllm` executable on PATH checks the real path's command line and GPU environment."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from pool.launch import vllm_command
from pool.models import PoolServer
from proxy.models import Backend
from simulator.process import free_port
from tests.e2e.test_ratelimit_replicas import db_url
from tests.e2e.test_supervisor import http_status

ROOT = Path(__file__).resolve().parents[2]
HOST = "gpu-test-host"


def until(condition: Callable[[], object], timeout_s: float, what: str, run=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}"
                        + (f"\n{run.output()}" if run else ""))
        time.sleep(0.05)


def answers(port: int) -> bool:
    return http_status(f"http://127.0.0.1:{port}/health") == 200


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent, the command, may not have reaped it yet).
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"


def in_pool(name: str) -> bool | None:
    """The backend row's `enabled`, read fresh; None when there is no row."""
    return Backend.objects.filter(name=name).values_list("enabled", flat=True).first()


@dataclass
class PoolRun:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self, name: str) -> list[int]:
        """Every pid the server was started or restarted with, in order."""
        pattern = rf"pool server {re.escape(name)} \(port \d+\) (?:re)?started \(pid (\d+)\)"
        return [int(pid) for pid in re.findall(pattern, self.output())]

    def count(self, text: str) -> int:
        return self.output().count(text)

    def kill(self) -> None:
        """Whatever is left after a failed test: the command, then its servers."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in re.findall(r"\(pid (\d+)\)", self.output()):
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def start_pool(tmp_path):
    runs: list[PoolRun] = []

    def start(*args: str, **env: str) -> PoolRun:
        log = tmp_path / f"vllm_pool-{len(runs)}.log"
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "vllm_pool", "--host-label", HOST, *args], cwd=ROOT,
            env={**os.environ, "DATABASE_URL": db_url(), "SLUICE_VAR_DIR": str(tmp_path / "var"),
                 **env},
            stdout=log.open("wb"), stderr=subprocess.STDOUT)
        runs.append(PoolRun(proc, log))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()


def stop(run: PoolRun) -> int:
    run.proc.send_signal(signal.SIGTERM)
    return run.proc.wait(timeout=30)


@pytest.mark.django_db(transaction=True)
def test_simulated_servers_join_the_pool_leave_it_while_restarting_and_on_stop(start_pool):
    a, b, off, elsewhere = (free_port() for _ in range(4))
    PoolServer.objects.create(name="pool-a", host=HOST, model="org/model-a-awq",
                              served_model_name="model-a", quantization="awq", port=a,
                              max_num_seqs=32, max_model_len=4096)
    PoolServer.objects.create(name="pool-b", host="", model="model-b", port=b)  # any host
    PoolServer.objects.create(name="pool-off", host=HOST, model="model-b", port=off,
                              enabled=False)
    PoolServer.objects.create(name="pool-elsewhere", host="other-host", model="m",
                              port=elsewhere)
    # Left behind by an earlier run: an operator-tuned row pointing elsewhere, and the row of
    # a server since disabled, both still enabled.
    Backend.objects.create(name="pool-a", base_url="http://old:1", model="old", weight=3)
    Backend.objects.create(name="pool-off", base_url=f"http://127.0.0.1:{off}", model="model-b")

    run = start_pool("--simulate")
    until(lambda: in_pool("pool-a") and in_pool("pool-b"), 30, "both servers in the pool", run)

    backend = Backend.objects.get(name="pool-a")
    assert (backend.base_url, backend.model, backend.max_concurrency, backend.weight) == (
        f"http://127.0.0.1:{a}", "model-a", 32, 3)
    assert Backend.objects.get(name="pool-b").model == "model-b"
    assert in_pool("pool-off") is False and in_pool("pool-elsewhere") is None
    assert not answers(off) and not answers(elsewhere)
    assert run.count("backend pool-a out of the pool") == 1  # taken out until /health answered
    with urllib.request.urlopen(f"http://127.0.0.1:{a}/v1/models", timeout=5) as resp:
        assert [m["id"] for m in json.load(resp)["data"]] == ["model-a"]

    [pid] = run.pids("pool-a")
    os.kill(pid, signal.SIGKILL)
    until(lambda: run.count("backend pool-a out of the pool") == 2, 10,
          "pool-a taken out after its crash", run)
    assert in_pool("pool-b")  # the other server stays in
    until(lambda: in_pool("pool-a") and len(run.pids("pool-a")) == 2, 30,
          "pool-a restarted and back in the pool", run)
    assert f"pool server pool-a (port {a}) exited with -9; restarting in 0.5 s" in run.output()
    assert answers(a) and run.pids("pool-a")[1] != pid

    assert stop(run) == 0
    assert in_pool("pool-a") is False and in_pool("pool-b") is False
    servers = run.pids("pool-a")[1:] + run.pids("pool-b")
    until(lambda: not any(alive(p) for p in servers), 5, "every server to exit", run)
    assert not answers(a) and not answers(b)


FAKE_VLLM = """#!{python}
# Stands in for `vllm serve`: records how it was called, then serves the simulator instead.
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_VLLM_CALLS"], "a") as calls:
    calls.write(json.dumps({{"argv": args, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}}))
    calls.write("\\n")
value = lambda name: args[args.index(name) + 1]
os.execv(sys.executable, [sys.executable, "-m", "simulator", "--host", value("--host"),
                          "--port", value("--port"), "--model", value("--served-model-name")])
"""


@pytest.mark.django_db(transaction=True)
def test_it_runs_vllm_serve_with_the_admins_settings_and_gpus(start_pool, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text(FAKE_VLLM.format(python=sys.executable))
    (bin_dir / "vllm").chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    port = free_port()
    PoolServer.objects.create(name="qwen-tp2", host=HOST, model="Qwen/Qwen2.5-72B-Instruct-AWQ",
                              served_model_name="qwen-72b", quantization="awq", port=port,
                              tensor_parallel_size=2, gpus="2,3", max_num_seqs=64,
                              gpu_memory_utilization=0.92, extra_args="--enable-prefix-caching")

    run = start_pool("--bind-host", "127.0.0.1", "--advertise-host", "127.0.0.1",
                     PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                     FAKE_VLLM_CALLS=str(calls))
    until(lambda: in_pool("qwen-tp2"), 30, "the vllm server in the pool", run)

    [call] = [json.loads(line) for line in calls.read_text().splitlines()]
    assert call["gpus"] == "2,3"
    assert call["argv"] == [
        "serve", "Qwen/Qwen2.5-72B-Instruct-AWQ", "--served-model-name", "qwen-72b",
        "--host", "127.0.0.1", "--port", str(port), "--tensor-parallel-size", "2",
        "--gpu-memory-utilization", "0.92", "--max-num-seqs", "64", "--quantization", "awq",
        "--enable-prefix-caching"]
    backend = Backend.objects.get(name="qwen-tp2")
    assert (backend.base_url, backend.model, backend.max_concurrency) == (
        f"http://127.0.0.1:{port}", "qwen-72b", 64)
    assert stop(run) == 0
    assert in_pool("qwen-tp2") is False


def test_without_vllm_it_says_how_to_get_it_or_to_simulate():
    if vllm_command() is not None:
        pytest.skip("vllm is installed here")
    done = subprocess.run([sys.executable, "manage.py", "vllm_pool"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert "vllm is not installed" in line
    assert "pip install -r requirements-gpu.txt" in line and "--simulate" in line


@pytest.mark.django_db
def test_with_no_server_for_this_host_it_says_where_to_add_them():
    PoolServer.objects.create(name="x", host="other-host", model="m", port=8000)
    with pytest.raises(CommandError, match="no enabled pool servers for host 'nowhere'"):
        call_command("vllm_pool", "--simulate", "--host-label", "nowhere")
