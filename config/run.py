"""`make run`: the whole gateway in the foreground on embedded defaults.

Starts the simulated vLLM pool, the ASGI web server and the Celery worker (with beat) as
supervised child processes and prints where everything is. A child that exits later is
restarted with exponential backoff (the simulators on the same port, since the backend rows
point at it), so one crashed backend costs its in-flight requests, not the gateway. Only
Ctrl-C / SIGTERM stops everything, in order: the web server first (it lets in-flight streams
finish and flushes the call log), then the worker, then the pool the streams were reading from.

A small supervisor rather than supervisord, circus or honcho: honcho stops everything when one
process exits (what this replaced); supervisord and circus are daemons with their own config
files and control sockets, where this must stay one foreground command with embedded defaults.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

TICK_S = 0.1  # how often exits are noticed: well under the first restart delay


def say(message: str) -> None:
    """One line on stderr, prefixed so it stands out among the children's own output."""
    print(f"sluice run: {message}", file=sys.stderr, flush=True)


# The simulated models' speeds: the small one answers sooner and faster, as a 1B model would.
MAIN_SPEED = ("--ttft-ms", "40", "--tokens-per-s", "80")
SMALL_SPEED = ("--ttft-ms", "15", "--tokens-per-s", "250")


@dataclass(frozen=True)
class SimSpec:
    """One simulated vLLM server of the embedded pool and the backend row that points at it."""

    name: str
    port: int
    model: str
    speed: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff: a child that keeps crashing is retried at 0.5, 1, 2 ... 30 s, so a
    broken one does not spin the CPU; one that stayed up `stable_s` starts over at 0.5 s."""

    initial_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 10.0


class Child:
    """One supervised process: its own session (a terminal's Ctrl-C reaches only the
    supervisor, which stops children in order), restarted with backoff when it exits."""

    def __init__(self, name: str, argv: list[str], *, stop_grace_s: float,
                 health_url: str | None = None, policy: RestartPolicy = RestartPolicy()) -> None:
        self.name = name
        self.argv = argv
        self.stop_grace_s = stop_grace_s
        self.health_url = health_url
        self.policy = policy
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None  # set while waiting out the backoff
        self.stopped = False  # by the supervisor: not to be restarted
        self.delay = policy.initial_s  # the wait before the next restart

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, now: float) -> None:
        """Spawn the process (again); `argv` is fixed, so a simulator keeps its port."""
        self.process = subprocess.Popen([sys.executable, *self.argv], start_new_session=True)
        self.started_at = now
        self.restart_at = None
        self.stopped = False

    def tick(self, now: float) -> None:
        """Notice an exit and schedule the restart; restart once the delay has passed."""
        if self.stopped:
            return
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start(now)
                say(f"{self.name} restarted (pid {self.process.pid})")
            return
        if self.process is None or (code := self.process.poll()) is None:
            return
        self._group_signal(signal.SIGTERM)  # e.g. the worker's embedded beat, now orphaned
        if now - self.started_at >= self.policy.stable_s:
            self.delay = self.policy.initial_s
        say(f"{self.name} exited with {code}; restarting in {self.delay:g} s")
        self.restart_at = now + self.delay
        self.delay = min(self.delay * 2, self.policy.max_s)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; a pending restart is dropped."""
        self.stopped, self.restart_at = True, None
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._group_signal(signal.SIGTERM)

    def wait_healthy(self, *, timeout_s: float, cancelled: Callable[[], bool]) -> None:
        """Block until `health_url` answers 200; exit with a message if the child dies first
        (at start-up that is a configuration problem, such as a taken port, not a crash)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not cancelled():
            if not self.running:
                raise SystemExit(f"sluice run: {self.name} exited with "
                                 f"{self.process and self.process.returncode} while starting")
            try:
                with urllib.request.urlopen(self.health_url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(TICK_S)
        if not cancelled():
            raise SystemExit(f"sluice run: {self.name} did not answer {self.health_url} "
                             f"within {timeout_s:.0f} s")

    def _group_signal(self, signum: int) -> None:
        """Signal what is left of the child's process group once the child itself is gone."""
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


class Supervisor:
    """Keeps children running until SIGINT / SIGTERM, then stops them in `stop_order`."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stopping = False
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def start(self, child: Child) -> Child:
        """Start a child now and supervise it from then on."""
        child.start(time.monotonic())
        self.children.append(child)
        return child

    def run(self) -> None:
        """Restart exited children until a stop is requested."""
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                child.tick(now)
            time.sleep(TICK_S)

    def stop(self, stop_order: list[Child]) -> None:
        """Stop the children one by one, so each can finish what depends on the next."""
        for child in stop_order:
            if child in self.children:
                child.stop()


def main() -> int:
    """Bootstrap the database, start the children, supervise them until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("SLUICE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings

    from config.bootstrap import bootstrap
    from config.metrics import metrics_dir_reset

    pool = sim_pool(settings)
    info = bootstrap(pool=pool)
    metrics_dir_reset(settings.SLUICE_METRICS_DIR)  # /metrics counts this run's processes only

    sup = Supervisor()
    sims = [_simulator(spec) for spec in pool]
    web = _web(args.host, args.port)
    worker = _worker(settings.CELERY_BEAT_SCHEDULE_FILENAME)
    try:
        for sim in sims:
            sup.start(sim)
        for sim in sims:
            sim.wait_healthy(timeout_s=30, cancelled=lambda: sup.stopping)
        if not sup.stopping:
            sup.start(web)
            sup.start(worker)
            web.wait_healthy(timeout_s=30, cancelled=lambda: sup.stopping)
        if not sup.stopping:
            _banner(args.host, args.port, info, settings)
        sup.run()
    finally:
        sup.stop([web, worker, *sims])
    return 0


def sim_pool(settings) -> list[SimSpec]:
    """The embedded pool: SLUICE_SIM_BACKENDS servers of the main model from
    SLUICE_SIM_BASE_PORT on, then one of the small, faster model on the next port."""
    base = settings.SLUICE_SIM_BASE_PORT
    pool = [SimSpec(f"sim-{i}", base + i - 1, settings.SLUICE_SIM_MODEL, MAIN_SPEED)
            for i in range(1, settings.SLUICE_SIM_BACKENDS + 1)]
    if settings.SLUICE_SIM_SMALL_MODEL:
        pool.append(SimSpec("sim-small-1", base + len(pool), settings.SLUICE_SIM_SMALL_MODEL,
                            SMALL_SPEED))
    return pool


def _simulator(spec: SimSpec) -> Child:
    """A simulator, named as bootstrap names its backend row."""
    return Child(f"simulator {spec.name} (port {spec.port})",
                 ["-m", "simulator", "--port", str(spec.port), "--model", spec.model,
                  *spec.speed], stop_grace_s=5, health_url=f"{spec.url}/health")


def _web(host: str, port: int) -> Child:
    """uvicorn; 70 s to stop covers its 60 s for in-flight streams plus the call-log flush."""
    return Child(f"web server (port {port})", [
        "-m", "uvicorn", "config.asgi:application", "--host", host, "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--lifespan", "on", "--no-access-log",
        "--timeout-graceful-shutdown", "60",
    ], stop_grace_s=70, health_url=f"http://127.0.0.1:{port}/health")


def _worker(schedule_file: str) -> Child:
    """The Celery worker with embedded beat (one process for `make run`'s whole workload):
    the default queue and the batch API's (SLUICE_BATCH_QUEUE)."""
    from django.conf import settings

    return Child("Celery worker", [
        "-m", "celery", "-A", "config", "--quiet", "worker", "-B", "--pool=solo",
        "-Q", f"celery,{settings.SLUICE_BATCH_QUEUE}",
        "--loglevel=WARNING", "--schedule", str(schedule_file),
    ], stop_grace_s=15)


def _banner(host: str, port: int, info: Any, settings: Any) -> None:
    """Where everything is, and the credentials an empty database was given."""
    base = f"http://{host}:{port}"
    lines = [
        "",
        "Sluice is running.",
        f"  proxy (OpenAI API)  {base}/v1",
        f"  dashboard           {base}/dashboard/",
        f"  admin               {base}/admin/   user: admin   password: "
        + (info.admin_password or "(unchanged; set SLUICE_ADMIN_PASSWORD to reset it)"),
        f"  ops API docs        {base}/api/docs",
        f"  API key             {info.api_key or '(create one in the admin: API keys)'}",
    ]
    if settings.SLUICE_MASTER_KEY:
        lines.append("  master key          SLUICE_MASTER_KEY "
                     "(accepted as an API key and admin token)")
    lines += [
        f"  database            {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}",
        (f"  try it:  curl {base}/v1/chat/completions -H 'Authorization: Bearer "
         f"{info.api_key or 'YOUR_KEY'}' -H 'Content-Type: application/json' "
         """-d '{"model": "default", "messages": [{"role": "user", "content": "Hi"}]}'"""),
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
