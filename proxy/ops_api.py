"""Ops API for the pool: what this process knows of each backend right now."""
from __future__ import annotations

from ninja import Router, Schema

from proxy.pool import backends_report
from proxy.snapshot import snapshot_current

router = Router(tags=["pool"])


class BackendOut(Schema):
    name: str
    model: str
    base_url: str
    state: str  # closed | open | half_open
    healthy: bool  # the last /health probe
    in_flight: int
    max_concurrency: int
    queued: int  # requests waiting for a slot on this backend's model
    error_rate: float | None  # over SLUICE_BREAKER_WINDOW_S; None without traffic
    requests_in_window: int
    consecutive_failures: int
    latency_ms: float | None  # moving average of the calls it served
    retry_after_s: float  # until an open breaker lets a probe through
    reason: str  # why the breaker last changed state
    # What the backend itself last reported on /metrics (None: not scraped, or stale)
    running: int | None = None  # vllm:num_requests_running
    waiting: int | None = None  # vllm:num_requests_waiting
    kv_cache_usage: float | None = None  # vllm:kv_cache_usage_perc, 0-1
    prefix_cache_hit_rate: float | None = None  # hits / queries since the previous scrape


@router.get("/backends", response=list[BackendOut])
def backends(request):
    """Each backend's circuit-breaker state, in-flight count, queue, recent error rate and
    latency, as this web process sees them (breakers are per process, like Envoy's), and the
    load it reports on its own /metrics."""
    return backends_report(snapshot_current())
