"""GET /metrics: Sluice's own numbers in Prometheus' text format, every process added up.

Each process of the gateway (web workers; the Celery worker for batch calls) writes its
counters and gauges to memory-mapped files in SLUICE_METRICS_DIR, exported to
prometheus_client as PROMETHEUS_MULTIPROC_DIR by the settings; a scrape reads and merges them
all, so any web process answers for the whole host. Counters come from the call log's writer
thread (analytics/prometheus.py), gauges from each web process's pool state
(proxy/prom_gauges.py); the request path itself does no Prometheus work.

Guarded like the ops API (the master key as a bearer token, or a staff session) unless
SLUICE_METRICS_PUBLIC opens it to a scraper on a private network. It goes through the full
middleware stack (not config/asgi.py's bare paths), which the staff session needs.
"""
from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_http_methods
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from config.api import AdminToken, staff_session

_REFUSED = b'{"detail": "Unauthorized"}'


@require_http_methods(["GET", "HEAD"])
def metrics(request: HttpRequest) -> HttpResponse:
    if not (settings.SLUICE_METRICS_PUBLIC or AdminToken()(request) or staff_session(request)):
        response = HttpResponse(_REFUSED, status=401, content_type="application/json")
        response["WWW-Authenticate"] = "Bearer"
        return response
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def metrics_dir_reset(directory: Path) -> int:
    """Empty the metrics directory before the gateway's processes start, so that a new run
    does not add up the numbers of an earlier one's dead processes. Returns files removed."""
    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
