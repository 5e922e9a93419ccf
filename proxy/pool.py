"""Per-process runtime state of the pool: which backends are healthy, what is in flight, and
which one serves the next request.

This state is per replica by nature (as Envoy keeps it per host), so it lives in memory.
Round-robin over healthy backends for now; load-aware balancing extends `backend_pick`.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass

from proxy.errors import model_not_found
from proxy.snapshot import BackendInfo, Snapshot, snapshot_current
from proxy.upstream import upstream_health

logger = logging.getLogger("sluice.pool")


@dataclass(slots=True)
class BackendState:
    healthy: bool = True
    in_flight: int = 0


# Keyed by the whole BackendInfo: a backend re-pointed in the admin (new URL, say) starts
# with a fresh state, and a probe still running against its old address cannot mislabel it.
_states: dict[BackendInfo, BackendState] = {}
_turns: dict[str, itertools.count] = {}


def backend_state(backend: BackendInfo) -> BackendState:
    state = _states.get(backend)
    if state is None:
        state = _states[backend] = BackendState()
    return state


def backend_pick(model: str, snapshot: Snapshot) -> BackendInfo:
    """The next healthy backend serving `model`, in turn. When none looks healthy, all are
    tried in turn: a stale health view must not take the whole route down."""
    candidates = snapshot.backends_by_model.get(model)
    if not candidates:
        raise model_not_found(model)
    healthy = [b for b in candidates if backend_state(b).healthy] or candidates
    turn = next(_turns.setdefault(model, itertools.count()))
    return healthy[turn % len(healthy)]


def backend_mark(backend: BackendInfo, *, healthy: bool) -> None:
    state = backend_state(backend)
    if state.healthy != healthy:
        logger.warning("backend %s is now %s", backend.name, "healthy" if healthy else "down")
    state.healthy = healthy


async def health_probe_all(snapshot: Snapshot) -> None:
    """Probe every backend's /health at once and record the verdicts."""
    backends = snapshot.backends
    results = await asyncio.gather(*(upstream_health(b) for b in backends))
    for backend, ok in zip(backends, results):
        backend_mark(backend, healthy=ok)
    for gone in set(_states) - set(snapshot_current().backends):
        del _states[gone]  # removed or edited since; in-flight calls keep their own reference
