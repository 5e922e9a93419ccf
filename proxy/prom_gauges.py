"""Prometheus gauges of the pool as this process sees it, published by a background loop.

Breakers, in-flight counts, queues and scraped load live in each web process (proxy/pool.py).
Every SLUICE_METRICS_GAUGES_S a loop on the event loop copies them into prometheus_client's
multi-process files, where /metrics adds up the live processes ("livesum": in-flight calls,
queued requests, slots, processes per breaker state) or takes the largest of their values
("livemax": what a backend reported on its own /metrics, which every process scrapes alike).
Nothing here runs per request; only changed values are written.

A process's live files go when its loop stops at shut-down (`mark_process_dead`), and the
loop removes those of processes that died without shutting down (SIGKILL), so a dead
process's in-flight count does not linger in the sums.
"""
from __future__ import annotations

import asyncio
import glob
import logging
import os
import re

from django.conf import settings
from prometheus_client import Gauge
from prometheus_client.multiprocess import mark_process_dead

from proxy.breaker import CLOSED, HALF_OPEN, OPEN
from proxy.pool import backend_state, queue_length
from proxy.snapshot import Snapshot, snapshot_current

logger = logging.getLogger("sluice.prom_gauges")

_BACKEND = ["backend", "model"]
BREAKER = Gauge("sluice_backend_breaker_state", "Web processes whose circuit breaker for the "
                "backend is in this state (closed, open, half_open).", [*_BACKEND, "state"],
                multiprocess_mode="livesum")
IN_FLIGHT = Gauge("sluice_backend_in_flight", "Calls in flight on the backend.", _BACKEND,
                  multiprocess_mode="livesum")
SLOTS = Gauge("sluice_backend_max_concurrency", "The backend's max_concurrency, summed over "
              "the web processes (each enforces its own).", _BACKEND, multiprocess_mode="livesum")
QUEUE = Gauge("sluice_queue_length", "Requests waiting for a free slot on a backend of the "
              "model.", ["model"], multiprocess_mode="livesum")
RUNNING = Gauge("sluice_backend_running_requests", "Requests running on the backend, as its "
                "/metrics last said (vllm:num_requests_running).", _BACKEND,
                multiprocess_mode="livemax")
WAITING = Gauge("sluice_backend_waiting_requests", "Requests waiting on the backend, as its "
                "/metrics last said (vllm:num_requests_waiting).", _BACKEND,
                multiprocess_mode="livemax")
KV_USAGE = Gauge("sluice_backend_kv_cache_usage_ratio", "The backend's KV-cache usage (0-1), "
                 "as its /metrics last said.", _BACKEND, multiprocess_mode="livemax")

_STATES = (CLOSED, OPEN, HALF_OPEN)
_SWEEP_EVERY = 30  # publications between two looks for dead processes' files
_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")

Key = tuple[Gauge, tuple[str, ...]]


def pool_values(snapshot: Snapshot) -> dict[Key, float]:
    """Every gauge's value in this process now, by (gauge, labels)."""
    found: dict[Key, float] = {}
    for backend in snapshot.backends:
        state = backend_state(backend)
        labels = (backend.name, backend.model)
        for name in _STATES:
            found[(BREAKER, (*labels, name))] = float(state.breaker.state == name)
        found[(IN_FLIGHT, labels)] = state.in_flight
        found[(SLOTS, labels)] = backend.max_concurrency
        if state.scraped_at:
            found[(RUNNING, labels)] = state.running
            found[(WAITING, labels)] = state.waiting
            found[(KV_USAGE, labels)] = state.kv_usage
    for model in {b.model for b in snapshot.backends}:
        found[(QUEUE, (model,))] = queue_length(model)
    return found


class Publisher:
    """Writes what changed since the last publication; a label set that went (a backend
    removed in the admin) is set to 0 once, since a multi-process file keeps every key."""

    def __init__(self) -> None:
        self.last: dict[Key, float] = {}

    def publish(self, found: dict[Key, float]) -> None:
        for key in self.last.keys() - found.keys():
            gauge, labels = key
            gauge.labels(*labels).set(0)
        for key, value in found.items():
            if self.last.get(key) != value:
                gauge, labels = key
                gauge.labels(*labels).set(value)
        self.last = found


def dead_processes_sweep(directory: str) -> list[int]:
    """Remove the live-gauge files of processes that are gone; return their pids."""
    dead = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        match = _LIVE_FILE.search(os.path.basename(path))
        if match and not _alive(pid := int(match.group(1))):
            dead.add(pid)
    for pid in dead:
        mark_process_dead(pid, directory)
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


async def prom_gauges_loop() -> None:
    publisher, ticks, failing = Publisher(), 0, False
    try:
        while True:
            try:
                publisher.publish(pool_values(snapshot_current()))
                if ticks % _SWEEP_EVERY == 0:
                    dead_processes_sweep(os.environ["PROMETHEUS_MULTIPROC_DIR"])
                failing = False
            except Exception:  # a metrics bug must not stop the loop (nor the process)
                if not failing:  # once per run of failures, not every second
                    logger.exception("publishing the pool's Prometheus gauges failed")
                failing = True
            ticks += 1
            await asyncio.sleep(settings.SLUICE_METRICS_GAUGES_S)
    finally:
        mark_process_dead(os.getpid())
