"""Run real simulator subprocesses (tests, ``make run``, benchmarks).

Example::

    with SimulatorProcess(model="m", ttft_ms=5, max_num_seqs=2) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="x")

Keyword options become CLI flags (``ttft_ms=5`` -> ``--ttft-ms 5``), so new simulator flags
need no change here; booleans become on/off switches (``shared_prefill=True`` ->
``--shared-prefill``, ``prefix_caching=False`` -> ``--no-enable-prefix-caching``), as in
``SimulatorProcess(prefill_tokens_per_s=8000, kv_cache_tokens=65536, block_size=16,
shared_prefill=True)``.

By default the child binds port 0 and reports the port it got, which avoids the
pick-a-free-port-then-bind race when many test processes start simulators at once.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

_READY_PREFIX = "SIMULATOR_LISTENING port="
# Keyword names that differ from their flag's.
_ALIASES = {"prefix_caching": "enable_prefix_caching"}
_ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (someone else may take it before you bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SimulatorError(RuntimeError):
    """The simulator did not come up; the message includes its stderr."""


class SimulatorProcess:
    """One ``python -m simulator`` child process.

    ``port=None`` (default) lets the child pick a free port; pass a port to pin it.
    """

    def __init__(self, model: str = "sim-model", *, port: int | None = None,
                 host: str = "127.0.0.1", startup_timeout: float = 15.0,
                 extra_args: list[str] | tuple[str, ...] = (),
                 env: dict[str, str] | None = None, **options: Any) -> None:
        self.model = model
        self.host = host
        self.port: int = port or 0
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.env = env
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None

    # -- addresses

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI SDK ``base_url``: ``url + "/v1"``."""
        return self.url + "/v1"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle

    def command(self) -> list[str]:
        """The argv this process runs."""
        cmd = [sys.executable, "-m", "simulator", "--host", self.host, "--port", str(self.port),
               "--model", self.model]
        for key, value in self.options.items():
            if value is None:
                continue
            flag = _ALIASES.get(key, key).replace("_", "-")
            if isinstance(value, bool):
                cmd.append(f"--{flag}" if value else f"--no-{flag}")
            else:
                cmd += [f"--{flag}", str(value)]
        return cmd + self.extra_args

    def start(self) -> SimulatorProcess:
        """Spawn the child and return once ``/health`` answers 200."""
        if self.running:
            return self
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, env=env, cwd=str(_ROOT))
        deadline = time.monotonic() + self.startup_timeout
        try:
            self.port = self._read_port(deadline)
            self._wait_healthy(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Safe to call twice."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()
        self.proc = None

    def stderr_text(self) -> str:
        """What the child wrote to stderr so far."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- helpers

    def _fail(self, why: str) -> SimulatorError:
        return SimulatorError(f"simulator {' '.join(self.command())!r} {why}; "
                              f"stderr:\n{self.stderr_text()}")

    def _read_port(self, deadline: float) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait(1.0)
                raise self._fail(f"exited with code {self.proc.returncode} before listening")
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith(_READY_PREFIX):
                    return int(line[len(_READY_PREFIX):].strip())
        raise self._fail(f"did not start listening within {self.startup_timeout}s")

    def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise self._fail("exited before /health answered")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.02)
        raise self._fail(f"/health did not answer within {self.startup_timeout}s")
