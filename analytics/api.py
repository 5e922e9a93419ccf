"""Ops API for analytics: the summary and the recent calls."""
from __future__ import annotations

from ninja import Field, ModelSchema, Query, Router, Schema

from analytics.models import Call
from analytics.selectors import calls_recent, summary_compute

router = Router(tags=["analytics"])


class SavingsByCauseOut(Schema):
    """Savings in $ by cause; they add up to `savings_usd` (any of them may be negative)."""

    cache_exact: float = Field(description="Exact-cache hits: their whole baseline cost.")
    cache_semantic: float = Field(description="Semantic-cache hits: their whole baseline cost.")
    routing: float = Field(
        description="Served by another model than the baseline: small-model down-routing, "
        "or the route's own model or a fallback's (model choice)."
    )
    compression: float = Field(
        description="Prompt tokens removed by compression, at the baseline's input price."
    )
    selfhost: float = Field(
        description="The served model's hosted price minus the self-hosted GPU cost."
    )
    batch: float = Field(
        0.0, description="The batch discount (SLUICE_BATCH_DISCOUNT) on batch calls' cost."
    )


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
    baseline_cost_usd: float = Field(
        description="The same tokens before any saving, at the route's baseline model's price."
    )
    savings_usd: float = Field(description="Baseline cost minus actual cost.")
    savings_by_cause: SavingsByCauseOut


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
    """Pool-wide and per-route traffic, latency, errors, cache, cost and savings by cause."""
    return summary_compute(minutes=minutes)


@router.get("/calls", response=list[CallOut])
def calls(request, filters: CallsFilter = Query(...)):
    """The most recent calls, newest first."""
    return list(calls_recent(limit=filters.limit, route=filters.route, status=filters.status))


