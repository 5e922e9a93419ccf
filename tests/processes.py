"""Real processes for the tests that need one: a gateway under uvicorn, and a TCP relay
that stands in front of PostgreSQL so that a test can cut the database and restore it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from simulator.process import free_port

ROOT = Path(__file__).resolve().parent.parent


def db_url(port: int | None = None) -> str:
    """The test database, for processes started by a test; `port`: reach it through a relay
    listening there on 127.0.0.1 (TcpRelay) instead."""
    from django.db import connection

    s = connection.settings_dict
    auth = s["USER"] or "postgres"
    if s["PASSWORD"]:
        auth += f":{s['PASSWORD']}"
    host = "127.0.0.1" if port else (s["HOST"] or "127.0.0.1")
    return f"postgres://{auth}@{host}:{port or s['PORT'] or 5432}/{s['NAME']}"


def until_true(check, timeout_s: float = 20.0) -> bool:
    """Poll `check` until it is true (True) or `timeout_s` has passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class TcpRelay:
    """Forwards 127.0.0.1:<port> to a target. `cut()` drops every connection and refuses new
    ones, as a database host going away would; `restore()` accepts again on the same port."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpRelay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def restore(self) -> None:
        self.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class GatewayProcess:
    """`uvicorn config.asgi:application` in its own process, as `make run` starts it."""

    def __init__(self, *, database_url: str, master_key: str, var_dir: str | None = None,
                 env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.port = free_port()
        self.workers = workers
        self.var_dir = var_dir or tempfile.mkdtemp(prefix="sluice-gw-")
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "SLUICE_MASTER_KEY": master_key,
            "SLUICE_VAR_DIR": self.var_dir,
            "SLUICE_LOG_FLUSH_INTERVAL_S": "0.2",
            "SLUICE_LOG_SHUTDOWN_FLUSH_S": "1",
            "SLUICE_CONFIG_REFRESH_S": "0.5",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(self.var_dir) / "gateway.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def journal_dir(self) -> Path:
        return Path(self.var_dir) / "journal"

    def journal_segments(self) -> list[Path]:
        """Segments of the call log's journal, of every process that used this var dir."""
        return sorted(self.journal_dir.glob("[0-9]*.jsonl"))

    def start(self, timeout_s: float = 20.0) -> GatewayProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
             "--port", str(self.port), "--lifespan", "on", "--no-access-log",
             *(["--workers", str(self.workers)] if self.workers > 1 else [])],
            cwd=ROOT, env=self.env, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not start:\n{self.log()}")

    def terminate(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM; True when the process shut down cleanly (uvicorn re-raises the signal
        after its graceful shutdown, so the exit status itself is -SIGTERM)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        return code in (0, -signal.SIGTERM) and "call log flushed" in self.log()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
