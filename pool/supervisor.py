"""`vllm_pool`'s supervision: config.run's Child and Supervisor (restart with exponential
backoff, SIGTERM / Ctrl-C handling) plus the backend row of each server, in the pool while the
server answers `/health` and out of it from the moment it exits until it answers again."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import urllib.request

from django.conf import settings
from django.db import DatabaseError, connection

from config.run import Child, RestartPolicy
from pool.services import backend_register, backend_unregister

PROBE_INTERVAL_S = 1.0  # /health of a server that is starting (vLLM loads for minutes)
PROBE_TIMEOUT_S = 1.0
DB_RETRY_S = 2.0  # after a failed write to the backend row


def say(message: str) -> None:
    print(f"sluice vllm_pool: {message}", file=sys.stderr, flush=True)


def health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as resp:
            return resp.status == 200
    except OSError:
        return False


class PoolChild(Child):
    """One server of the pool and its backend row. `in_pool` is what the row should say,
    `row_in_pool` what it was last written as (None: not yet), so a write that fails while
    the database is away is retried until it lands."""

    def __init__(self, *, backend: str, model: str, max_concurrency: int, base_url: str,
                 argv: list[str], env: dict[str, str], stop_grace_s: float,
                 policy: RestartPolicy) -> None:
        port = base_url.rsplit(":", 1)[-1]
        super().__init__(f"pool server {backend} (port {port})", argv, stop_grace_s=stop_grace_s,
                         health_url=f"{base_url}/health", policy=policy)
        self.backend = backend
        self.model = model
        self.max_concurrency = max_concurrency
        self.base_url = base_url
        self.env = env
        self.in_pool = False
        self.row_in_pool: bool | None = None
        self.next_probe = 0.0
        self.next_write = 0.0

    def start(self, now: float) -> None:
        """As Child.start, but `argv` is the whole command (vllm's own executable) and the
        server gets its GPUs through the environment."""
        first = self.process is None
        self.process = subprocess.Popen(self.argv, env={**os.environ, **self.env},
                                        cwd=settings.BASE_DIR, start_new_session=True)
        self.started_at, self.restart_at, self.stopped = now, None, False
        self.next_probe = now
        if first:
            env = " ".join(f"{k}={v}" for k, v in self.env.items())
            say(f"{self.name} started (pid {self.process.pid}): "
                f"{env + ' ' if env else ''}{shlex.join(self.argv)}")

    def tick(self, now: float) -> None:
        """Restart as Child does; out of the pool once exited, in once /health answers."""
        super().tick(now)
        if self.stopped:
            return
        if not self.running:
            self.in_pool = False
        elif not self.in_pool and now >= self.next_probe:
            self.next_probe = now + PROBE_INTERVAL_S
            self.in_pool = health_ok(self.health_url)
        self.row_sync(now)

    def take_out(self) -> None:
        """Out of the pool now (on stop), whatever was written before; one attempt."""
        self.in_pool, self.next_write = False, 0.0
        self.row_sync(time.monotonic())

    def row_sync(self, now: float) -> None:
        """Write `in_pool` to the backend row if it differs from what was last written."""
        if self.row_in_pool == self.in_pool or now < self.next_write:
            return
        try:
            if self.in_pool:
                backend_register(name=self.backend, base_url=self.base_url, model=self.model,
                                 max_concurrency=self.max_concurrency)
            else:
                backend_unregister(name=self.backend)
        except DatabaseError as exc:
            connection.close()  # the next attempt reconnects
            self.next_write = now + DB_RETRY_S
            say(f"backend {self.backend}: the database refused the update ({exc}); "
                f"retrying in {DB_RETRY_S:g} s")
            return
        self.row_in_pool = self.in_pool
        pid = self.process.pid if self.process else None
        say(f"backend {self.backend} " + (f"in the pool at {self.base_url} (pid {pid})"
                                          if self.in_pool else "out of the pool"))
