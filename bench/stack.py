"""Start and stop what the benchmark measures: one simulator and one Sluice gateway.

Everything the gateway writes (SQLite database, secret key, journal, Celery broker folder) goes to
a temporary directory, and ``DATABASE_URL``/``REDIS_URL`` are set explicitly, so a bench run
never touches the developer's data or services whatever their shell exports.

The gateway runs the way it is deployed: ``uvicorn`` with uvloop and httptools, one worker,
lifespan on (so the call-log writer and the background loops run as in production) and no
access log. Its pid is the uvicorn process itself, which is what RSS and CPU are read from.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from simulator.process import SimulatorProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
SERVED_MODEL = "bench-model"
ROUTE = "default"
BACKEND = "sim-1"


@dataclass(frozen=True)
class SimSettings:
    """The simulated backend's shape (passed to ``python -m simulator`` as flags)."""

    ttft_ms: float = 20.0
    tokens_per_s: float = 500.0
    max_num_seqs: int = 256
    seed: int = 1


@dataclass(frozen=True)
class Pinning:
    """CPU sets, or ``None`` for "let the scheduler decide".

    On a 2-core machine the gateway gets a core of its own (as in the reference measurement,
    one uvicorn worker on one core) and the load generator shares the other with the
    simulator; both paths then see the same client and backend placement.
    """

    client_and_sim: frozenset[int] | None
    gateway: frozenset[int] | None

    @classmethod
    def choose(cls, enabled: bool) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2:
            return cls(None, None)
        return cls(frozenset(cpus[:-1]), frozenset(cpus[-1:]))

    def describe(self) -> str:
        if self.gateway is None:
            return "none (OS scheduler)"
        return (f"gateway on CPU {sorted(self.gateway)}, load generator + simulator on CPU "
                f"{sorted(self.client_and_sim or ())} (os.sched_setaffinity)")


@dataclass
class Stack:
    """Simulator + gateway, started in that order and stopped in reverse."""

    sim_settings: SimSettings = field(default_factory=SimSettings)
    pinning: Pinning = field(default_factory=lambda: Pinning(None, None))
    startup_timeout_s: float = 60.0
    # Which ASGI app uvicorn serves; another module here lets a variant be compared as-is.
    asgi_app: str = "config.asgi:application"
    # The gateway's database and Redis: by default a SQLite file in the temporary directory
    # and no Redis. `python -m bench.scale` points them at a scratch PostgreSQL database and
    # a Redis database of its own.
    database_url: str | None = None
    redis_url: str | None = None
    master_key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_hex(12))
    sim: SimulatorProcess | None = None
    gateway: subprocess.Popen[bytes] | None = None
    gateway_port: int = 0
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _gateway_log: Path | None = None

    # -- addresses

    @property
    def direct_url(self) -> str:
        assert self.sim is not None
        return self.sim.url

    @property
    def sluice_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def gateway_pid(self) -> int:
        assert self.gateway is not None
        return self.gateway.pid

    @property
    def var_dir(self) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name)

    # -- lifecycle

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="sluice-bench-")
        if self.pinning.client_and_sim is not None:
            # The simulator child inherits this process's CPU set, and so does the client.
            os.sched_setaffinity(0, self.pinning.client_and_sim)
        s = self.sim_settings
        self.sim = SimulatorProcess(model=SERVED_MODEL, ttft_ms=s.ttft_ms,
                                    tokens_per_s=s.tokens_per_s, max_num_seqs=s.max_num_seqs,
                                    seed=s.seed)
        self.sim.start()
        env = self._gateway_env()
        self._manage(env, "migrate", "--noinput", "-v0")
        self._manage(env, "shell", "-c", (
            "from proxy.models import Backend, Route; "
            f"Backend.objects.create(name={BACKEND!r}, base_url={self.sim.url!r}, "
            f"model={SERVED_MODEL!r}); "
            f"Route.objects.create(name={ROUTE!r}, model={SERVED_MODEL!r})"
        ))
        self._gateway_start(env)

    def stop(self) -> None:
        """SIGTERM the gateway first (it flushes the call log), then the simulator."""
        self.gateway_stop()
        if self.sim is not None:
            self.sim.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def gateway_stop(self) -> int | None:
        """Stop the gateway now (the call log is flushed on SIGTERM); return its exit code."""
        if self.gateway is None:
            return None
        if self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            try:
                self.gateway.wait(15)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait()
        return self.gateway.returncode

    def gateway_log(self) -> str:
        if self._gateway_log is None or not self._gateway_log.exists():
            return ""
        return self._gateway_log.read_text(errors="replace")

    def calls_recorded(self) -> int | None:
        """Rows in the call log table, read straight from the bench's SQLite file."""
        import sqlite3

        path = self.var_dir / "sluice.sqlite3"
        try:
            with sqlite3.connect(path) as db:
                return int(db.execute("SELECT COUNT(*) FROM analytics_call").fetchone()[0])
        except sqlite3.Error:
            return None

    # -- helpers

    def _gateway_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("REDIS_URL", "CELERY_BROKER_URL", "SLUICE_JOURNAL_DIR", "SLUICE_DEBUG"):
            env.pop(name, None)
        env.update({
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "SLUICE_VAR_DIR": str(self.var_dir),
            "DATABASE_URL": self.database_url or f"sqlite:///{self.var_dir / 'sluice.sqlite3'}",
            "SLUICE_MASTER_KEY": self.master_key,
            "SLUICE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        })
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        return env

    def _manage(self, env: dict[str, str], *args: str) -> None:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}")

    def _gateway_start(self, env: dict[str, str]) -> None:
        self.gateway_port = free_port()
        self._gateway_log = self.var_dir / "gateway.log"
        cpus = self.pinning.gateway

        def pin() -> None:  # runs in the child before exec: every later thread inherits it
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        with open(self._gateway_log, "wb") as log:
            self.gateway = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", self.asgi_app,
                 "--host", "127.0.0.1", "--port", str(self.gateway_port), "--loop", "uvloop",
                 "--http", "httptools", "--lifespan", "on", "--no-access-log",
                 "--log-level", "warning"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=pin,
            )
        self._wait_health()

    def _wait_health(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = self.sluice_url + "/health"
        while time.monotonic() < deadline:
            assert self.gateway is not None
            if self.gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.gateway.returncode}:\n"
                                   f"{self.gateway_log()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{url} did not answer within {self.startup_timeout_s:.0f} s:\n"
                           f"{self.gateway_log()}")


def proc_rss_kib(pid: int) -> int | None:
    """VmRSS of a live process, in KiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process, all threads included."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces; everything after its closing parenthesis is fixed.
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of the line)
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_steal_s(cpus: frozenset[int] | None) -> float | None:
    """Seconds since boot that the hypervisor gave these CPUs (all of them when None) to
    someone else: /proc/stat's steal column. A bench phase with much of it ran on a noisy
    machine: every process on that core, the gateway included, stood still meanwhile."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {"cpu"} if cpus is None else {f"cpu{n}" for n in cpus}
    ticks = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted and len(fields) > 8:
            ticks += int(fields[8])  # user nice system idle iowait irq softirq steal
    return ticks / os.sysconf("SC_CLK_TCK")
