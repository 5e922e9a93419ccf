"""`make run`: the whole gateway in the foreground on embedded defaults.

Starts the simulated vLLM pool, the ASGI web server and the Celery worker (with beat) as
child processes, prints where everything is, and on Ctrl-C / SIGTERM stops them in order:
the web server first (it lets in-flight streams finish and flushes the call log), then the
worker, then the pool the streams were reading from.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def _spawn(args: list[str]) -> subprocess.Popen:
    # Own session: a terminal's Ctrl-C reaches only this supervisor, which stops children in order.
    return subprocess.Popen([sys.executable, *args], start_new_session=True)


def _wait_http(url: str, *, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up within {timeout_s:.0f} s")


def _stop(process: subprocess.Popen, *, grace_s: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("SLUICE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings

    from config.bootstrap import bootstrap

    sim_ports = [settings.SLUICE_SIM_BASE_PORT + i for i in range(settings.SLUICE_SIM_BACKENDS)]
    info = bootstrap(sim_urls=[f"http://127.0.0.1:{p}" for p in sim_ports])

    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    sims = [
        _spawn(["-m", "simulator", "--port", str(p), "--model", settings.SLUICE_SIM_MODEL])
        for p in sim_ports
    ]
    web = worker = None
    try:
        for port, sim in zip(sim_ports, sims):
            _wait_http(f"http://127.0.0.1:{port}/health", process=sim)
        web = _spawn([
            "-m", "uvicorn", "config.asgi:application", "--host", args.host,
            "--port", str(args.port), "--loop", "uvloop", "--http", "httptools",
            "--lifespan", "on", "--no-access-log", "--timeout-graceful-shutdown", "60",
        ])
        worker = _spawn([
            "-m", "celery", "-A", "config", "--quiet", "worker", "-B", "--pool=solo",
            "--loglevel=WARNING", "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME,
        ])
        _wait_http(f"http://127.0.0.1:{args.port}/health", process=web)
        _banner(args.host, args.port, info, settings)
        children = [*sims, web, worker]
        while not stopping:
            if any(c.poll() is not None for c in children):
                print("a child process exited; stopping everything", file=sys.stderr)
                return_code = 1
                break
            time.sleep(0.5)
        else:
            return_code = 0
    finally:
        if web is not None:
            _stop(web, grace_s=70)
        if worker is not None:
            _stop(worker, grace_s=15)
        for sim in sims:
            _stop(sim, grace_s=5)
    return return_code


def _banner(host: str, port: int, info, settings) -> None:
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
        lines.append("  master key          SLUICE_MASTER_KEY (accepted as an API key and admin token)")
    lines += [
        f"  database            {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}",
        f"  try it:  curl {base}/v1/chat/completions -H 'Authorization: Bearer "
        f"{info.api_key or 'YOUR_KEY'}' -H 'Content-Type: application/json' "
        """-d '{"model": "default", "messages": [{"role": "user", "content": "Hi"}]}'""",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
