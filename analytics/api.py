"""Ops API for analytics: the summary and the recent calls."""
from __future__ import annotations

from ninja import Field, ModelSchema, Query, Router, Schema

from analytics.models import Call
from analytics.selectors import calls_recent, summary_compute

router = Router(tags=["analytics"])


class StatsOut(Schema):
    requests: int
    qps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    error_rate: float = Field(description="Share of calls that failed with a 5xx outcome.")
    cache_hit_rate: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    savings_usd: float = Field(description="Baseline cost minus actual cost.")


class RouteStatsOut(StatsOut):
    route: str


class SummaryOut(StatsOut):
    minutes: int
    by_route: list[RouteStatsOut]


class CallOut(ModelSchema):
    class Meta:
        model = Call
        exclude = ["id"]


class CallsFilter(Schema):
    limit: int = Field(50, ge=1, le=1000)
    route: str | None = None
    status: int | None = None


@router.get("/stats/summary", response=SummaryOut)
def stats_summary(request, minutes: int = Query(15, ge=1, le=7 * 24 * 60)):
    """Pool-wide and per-route traffic, latency, errors, cache and cost."""
    return summary_compute(minutes=minutes)


@router.get("/calls", response=list[CallOut])
def calls(request, filters: CallsFilter = Query(...)):
    """The most recent calls, newest first."""
    return list(calls_recent(limit=filters.limit, route=filters.route, status=filters.status))


