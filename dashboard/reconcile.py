"""Token reconciliation: the tokens Sluice logged for each backend against the backend's own
counters (`vllm:prompt_tokens_total`, `vllm:generation_tokens_total`) over the same interval.

Method: each time the backends page asks, every enabled backend's /metrics is read now (1 s
timeout, in parallel) and compared with a baseline reading kept in Django's cache (Redis when
configured, so every web process shares it). The backend's counts are the counters' increase
since the baseline; Sluice's are the calls logged for that backend between the two readings'
times (cache hits left out: no backend saw them). The baseline is replaced when it is older
than BASELINE_MAX_S (the interval then starts again) or when a counter went down (the backend
restarted). Drift = (Sluice − backend) / backend. Expect small drifts at the edges of the
interval: a call is logged with its start time, while the backend counts its tokens as it
runs, and the log is written about a second late; over minutes they vanish.

The backends (name, base URL) are config rows read through the app registry: the dashboard
does not import the proxy's code.
"""
from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from django.apps import apps
from django.core.cache import cache
from django.utils import timezone

from analytics.dashboard_selectors import backend_tokens

TIMEOUT_S = 1.0
BASELINE_MAX_S = 3600.0
COUNTERS = {"prompt": "vllm:prompt_tokens_total", "completion": "vllm:generation_tokens_total"}


def counters_parse(text: str) -> dict[str, float]:
    """The two counters of a Prometheus text page, summed over their label sets."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        for key, name in COUNTERS.items():
            if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
                try:
                    found[key] = found.get(key, 0.0) + float(line.rsplit(None, 1)[-1])
                except ValueError:
                    pass
    return found


def counters_read(base_url: str) -> dict[str, float] | None:
    """The backend's counters now; None when it does not answer or does not export them."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/metrics", timeout=TIMEOUT_S) as r:
            counters = counters_parse(r.read(4_000_000).decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None
    return counters if set(counters) == set(COUNTERS) else None


def backends_configured() -> list[tuple[str, str]]:
    backend = apps.get_model("proxy", "Backend")
    return list(backend.objects.filter(enabled=True).order_by("name")
                .values_list("name", "base_url"))


def _baseline(name: str, url: str) -> str:
    return f"sluice:dashboard:reconcile:{name}:{url}"


def reconcile(*, now: datetime | None = None,
              backends: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """One row per enabled backend: logged and counted tokens since the baseline, and drift;
    or a `note` saying why there is nothing to compare yet."""
    now = now or timezone.now()
    backends = backends_configured() if backends is None else backends
    if not backends:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(backends))) as pool:
        readings = list(pool.map(lambda b: counters_read(b[1]), backends))
    rows = []
    for (name, url), reading in zip(backends, readings, strict=True):
        rows.append(_row(name, url, reading, now))
    return rows


def _row(name: str, url: str, reading: dict[str, float] | None, now: datetime) -> dict[str, Any]:
    if reading is None:
        return {"backend": name, "failed": True,
                "note": f"no token counters at {url}/metrics (down, or not vLLM)"}
    key = _baseline(name, url)
    base = cache.get(key)
    restarted = base is not None and any(reading[k] < base[k] for k in COUNTERS)
    if base is None or restarted or (now - base["t"]).total_seconds() > BASELINE_MAX_S:
        cache.set(key, {"t": now, **reading}, timeout=None)
        return {"backend": name, "note": "first reading taken: the comparison starts now "
                                        "(refreshes every few seconds)"}
    logged = backend_tokens(start=base["t"], end=now).get(name, {"prompt": 0, "completion": 0})
    row: dict[str, Any] = {"backend": name, "since": base["t"],
                           "seconds": (now - base["t"]).total_seconds()}
    for k in COUNTERS:
        counted = reading[k] - base[k]
        row[f"{k}_logged"] = logged[k]
        row[f"{k}_backend"] = int(counted)
        row[f"{k}_drift"] = (logged[k] - counted) / counted if counted else None
    return row
