"""gunicorn for Sluice's web tier: `gunicorn -c deploy/gunicorn.conf.py config.asgi:application`
(what deploy/supervisord.conf and deploy/systemd/sluice-web.service run).

One uvicorn worker per core (each an asyncio event loop with its own lifespan: config
snapshot, call-log writer and journal, health probes, load scrape, gauges). The master only
forks and watches them: it imports neither Django nor the app, so each worker loads the code
afresh, and `kill -HUP <master>` (`supervisorctl signal HUP web`, `systemctl reload
sluice-web`) is a deploy without a cut stream: new workers start on the same listening
socket, the old ones stop accepting, finish their streams (up to `graceful_timeout`), flush
the call log and exit. Every value can be overridden by the environment (below) or by
gunicorn's own GUNICORN_CMD_ARGS, e.g. GUNICORN_CMD_ARGS="--bind unix:/run/sluice/web.sock".
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from uvicorn_worker import UvicornWorker

ROOT = Path(__file__).resolve().parent.parent


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


wsgi_app = "config.asgi:application"
chdir = str(ROOT)
bind = [f"{os.environ.get('SLUICE_HOST') or '127.0.0.1'}:{_env_int('PORT', 8000)}"]
# One event loop per core the process may run on (a container's CPU set, not the host's).
workers = _env_int("SLUICE_WEB_WORKERS", 0) or len(os.sched_getaffinity(0))
# How long a stopping worker (a deploy's HUP, a stop's TERM) lets its streams finish before it
# cancels them; then the call log is flushed. Long generations need minutes.
graceful_timeout = _env_int("SLUICE_GRACEFUL_TIMEOUT_S", 120)
# Idle keep-alive connections stay open longer than nginx keeps its own to the upstream
# (keepalive_timeout 60 s), so that nginx never sends a request on one being closed.
keepalive = _env_int("SLUICE_KEEPALIVE_S", 75)
# A worker whose event loop did not beat for this long is killed and replaced.
timeout = 30
# Shutdown, in seconds, left after uvicorn's wait for in-flight requests: the lifespan
# shut-down (SLUICE_LOG_SHUTDOWN_FLUSH_S, 5 s, to write the call log) before gunicorn's SIGKILL.
SHUTDOWN_MARGIN_S = 10
errorlog = "-"
loglevel = os.environ.get("SLUICE_LOG_LEVEL", "info").lower()
proc_name = "sluice-web"
# Deploys and stops go by signals (supervisord, systemd): no gunicornc control socket, which
# would default to one path per user for every gunicorn on the host.
control_socket_disable = True


class Worker(UvicornWorker):
    """uvicorn's worker for gunicorn; uvicorn waits for in-flight requests without a limit of
    its own, so gunicorn would SIGKILL it at graceful_timeout before the call log is flushed:
    its wait ends SHUTDOWN_MARGIN_S sooner, and what is still running is cancelled (and logged
    as a 499) instead of killed."""

    CONFIG_KWARGS = {"loop": "uvloop", "http": "httptools", "lifespan": "on"}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = max(1, self.cfg.graceful_timeout
                                                    - SHUTDOWN_MARGIN_S)


worker_class = Worker


def _metrics_dir() -> Path:
    """SLUICE_METRICS_DIR as config/settings.py reads it (the master does not load Django)."""
    if configured := os.environ.get("SLUICE_METRICS_DIR"):
        return Path(configured)
    return Path(os.environ.get("SLUICE_VAR_DIR") or ROOT / "var") / "prometheus"


def post_fork(server, worker) -> None:
    """In each new worker: should the master die without stopping it (SIGKILL, the OOM killer),
    the kernel sends the worker TERM, so it finishes its streams and exits instead of holding
    the port that supervisord's new master must bind. (gunicorn's own workers notice a new
    parent themselves; uvicorn's do not. systemd would kill them anyway, supervisord not.)"""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != server.pid:  # the master died before the line above
            os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def on_starting(server) -> None:
    """Before any worker: Django's system checks (config/checks.py refuses a production
    configuration on SQLite, without Redis or without a secret key), then an empty metrics
    directory, so /metrics adds up this run's processes only."""
    check = subprocess.run([sys.executable, "manage.py", "check", "--fail-level", "ERROR"],
                           cwd=ROOT, capture_output=True, text=True)
    if check.returncode != 0:
        sys.stderr.write(check.stderr or check.stdout)
        sys.stderr.write("sluice-web: refusing to start (manage.py check failed)\n")
        sys.exit(check.returncode)
    directory = _metrics_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)
