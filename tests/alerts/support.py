"""Helpers of the alert tests: a clock the tests move by hand, rules with defaults, and a
real HTTP server on 127.0.0.1 for webhooks and backends' /health."""
from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.utils import timezone

from alerts.evaluate import RunResult, rules_evaluate
from alerts.models import AlertRule
from analytics.rollups import rollups_run

# A minute's start, so that windows are easy to reason about: an N-minute window read at
# BASE + s (0 <= s < 60) covers [BASE - N min, BASE + s).
BASE = timezone.now().replace(second=0, microsecond=0)


def at(seconds: float):
    """The clock: BASE + seconds."""
    return BASE + timedelta(seconds=seconds)


def evaluate_at(seconds: float) -> RunResult:
    """What beat does, at BASE + seconds: the rollups run, then the alerts."""
    rollups_run(now=at(seconds))
    return rules_evaluate(now=at(seconds))


_names = iter(range(1_000_000))


def rule_create(**fields) -> AlertRule:
    values = {"name": f"rule-{next(_names)}", "metric": "p99_latency", "comparison": "gt",
              "threshold": 1000.0, "window_minutes": 5, "for_s": 60}
    values.update(fields)
    return AlertRule.objects.create(**values)


class Recorder(ThreadingHTTPServer):
    """Answers each request with the next of `statuses` (then 200), and keeps what it got."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.statuses: list[int] = []
        self.health_status = 200
        self.requests: list[dict] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append({"at": time.monotonic(), "path": self.path,
                                     "content_type": self.headers.get("Content-Type"),
                                     "json": json.loads(body)})
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self._answer(status)

    def do_GET(self):
        self._answer(self.server.health_status if self.path == "/health" else 404)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass
