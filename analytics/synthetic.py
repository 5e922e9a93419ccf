"""Synthetic call-log traffic written by PostgreSQL itself (INSERT … SELECT FROM
generate_series), for the rollup benchmark (`manage.py analytics_bench`) and its test.

Millions of rows in seconds rather than the minutes the ORM would take. The mix: routes chat
(70 %, a quarter down-routed to a small model), code (20 %) and own (10 %, self-hosted GPUs);
three, one and two backends; five keys and a few calls without one; 10 % exact and 5 %
semantic cache hits (no backend); 1 % 5xx and 0.5 % 429; 60 % streams; log-normal latencies.
That is about 50 route × model × backend × key combinations, each with its own rollup rows.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection

from analytics.models import HourRollup, MinuteRollup
from analytics.rollups import SETTLE_S, WATERMARK_LAG_S, rollups_run
from analytics.selectors import summary_compute

FULL_TRAFFIC_QPS = 620.0

_INSERT = """
INSERT INTO analytics_call (
    created_at, request_id, api_key_id, api_key_name, endpoint, route, requested_model,
    served_model, backend, status_code, error_type, stream, prompt_tokens, completion_tokens,
    cache, backend_reason, latency_ms, ttft_ms, retries, queue_ms, fallback_used, decision,
    decision_score, prompt_tokens_saved, cost_usd, baseline_cost_usd, saved_cache_usd,
    saved_routing_usd, saved_compression_usd, saved_selfhost_usd, saved_batch_usd)
SELECT created_at, %(prefix)s || lpad(i::text, 10, '0'), key_id, coalesce('key-' || key_id, ''),
    'chat/completions', route, route, model, CASE WHEN hit THEN '' ELSE backend END, status,
    CASE WHEN status >= 500 THEN 'upstream_error' WHEN status = 429 THEN 'rate_limited'
         ELSE '' END,
    stream, prompt, completion, cache, CASE WHEN hit THEN '' ELSE 'least_load' END,
    latency, CASE WHEN stream THEN round((latency * 0.15)::numeric, 3) END, retries, NULL,
    false, CASE WHEN small THEN 'small' WHEN route = 'chat' THEN 'primary' ELSE '' END, NULL, 0,
    cost, baseline, CASE WHEN hit THEN baseline ELSE 0 END,
    CASE WHEN hit THEN 0 ELSE baseline - cost END, 0, 0, 0
FROM (
    SELECT *, CASE WHEN hit THEN 0 ELSE round(((prompt * 0.5 + completion * 1.5) / 1e6)
                                              ::numeric, 10) END AS cost,
           round(((prompt * 2.5 + completion * 10.0) / 1e6)::numeric, 10) AS baseline,
           CASE WHEN hit THEN round((0.5 + 3 * r_lat)::numeric, 3)
                ELSE round((median * exp(0.6 * sqrt(-2 * ln(1 - z1)) * cos(2 * pi() * z2)))
                           ::numeric, 3) END AS latency
    FROM (
        SELECT *, CASE WHEN route = 'own' THEN 'llama-3-8b' WHEN small THEN 'small-1b'
                       ELSE 'big-70b' END AS model,
                  CASE WHEN route = 'own' THEN 'gpu-' || (1 + floor(r_be * 2))
                       WHEN small THEN 'sim-small' ELSE 'sim-' || (1 + floor(r_be * 3)) END
                       AS backend,
                  CASE WHEN route = 'own' THEN 250 WHEN small THEN 150 ELSE 400 END AS median,
                  cache IN ('exact', 'semantic') AS hit
        FROM (
            SELECT i, %(start)s + (%(step)s * (i - 1 + r_t)) * interval '1 second' AS created_at,
                   CASE WHEN r_route < 0.7 THEN 'chat' WHEN r_route < 0.9 THEN 'code'
                        ELSE 'own' END AS route,
                   r_route < 0.7 AND r_small < 0.25 AS small,
                   CASE WHEN r_key < 0.05 THEN NULL ELSE 1 + floor(r_key * 5)::bigint END
                       AS key_id,
                   CASE WHEN r_cache < 0.10 THEN 'exact' WHEN r_cache < 0.15 THEN 'semantic'
                        ELSE 'miss' END AS cache,
                   CASE WHEN r_err < 0.01 THEN 502 WHEN r_err < 0.015 THEN 429 ELSE 200 END
                       AS status,
                   CASE WHEN r_err < 0.01 THEN 2 ELSE 0 END AS retries,
                   r_stream < 0.6 AS stream,
                   50 + floor(r_tok * 2000)::int AS prompt,
                   20 + floor(r_tok2 * 500)::int AS completion,
                   r_be, r_lat, z1, z2
            FROM (
                SELECT i, random() AS r_t, random() AS r_route, random() AS r_small,
                       random() AS r_key, random() AS r_cache, random() AS r_err,
                       random() AS r_stream, random() AS r_tok, random() AS r_tok2,
                       random() AS r_be, random() AS r_lat, random() AS z1, random() AS z2
                FROM generate_series(1, %(count)s) AS i
            ) AS draws
        ) AS picked
    ) AS served
) AS priced
"""


def calls_generate(*, count: int, start: datetime, end: datetime, prefix: str,
                   seed: float = 0.42) -> None:
    """Insert `count` calls over [start, end), one at a random instant of each of `count`
    equal slots: in time order, as ids and request ids (`prefix` + n), so that every index
    grows at its end as it does under real traffic (and 10 million rows load in minutes)."""
    if count <= 0:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(%s)", [seed])
        cursor.execute(_INSERT, {"prefix": prefix, "start": start, "count": count,
                                 "step": (end - start).total_seconds() / count})


def traffic_generate(*, count: int, now: datetime, days: int = 7) -> int:
    """`count` calls over the last `days`: the last 15 minutes at full traffic (620 calls/s
    at 10 million calls, scaled down with `count`), the rest spread evenly before them. Returns
    how many fell in the last 15 minutes."""
    burst_start = now - timedelta(minutes=15)
    burst = min(count, round(count * FULL_TRAFFIC_QPS * 900 / 10_000_000))
    calls_generate(count=count - burst, start=now - timedelta(days=days), end=burst_start,
                   prefix="syn-old-", seed=0.42)
    calls_generate(count=burst, start=burst_start, end=now, prefix="syn-new-", seed=0.43)
    return burst


def tables_analyze() -> None:
    """Fresh planner statistics after millions of rows at once (autovacuum would get there,
    later)."""
    with connection.cursor() as cursor:
        for table in ("analytics_call", "analytics_minuterollup", "analytics_hourrollup"):
            cursor.execute(f"ANALYZE {table}")


@dataclass
class Timings:
    """Seconds, for `benchmark_run`."""

    calls: int = 0
    generate_s: float = 0.0
    backfill_s: float = 0.0  # the first run, over every call
    catch_up_s: float = 0.0  # the run that moves the watermark past the backfill
    steady_s: list[float] = field(default_factory=list)  # one rollup run per 15 s of traffic
    summary_s: dict[int, list[float]] = field(default_factory=dict)  # by window in minutes
    rows: dict[str, int] = field(default_factory=dict)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def benchmark_run(*, count: int, now: datetime, steady_runs: int = 8,
                  repeats: int = 5, windows: tuple[int, ...] = (15, 7 * 24 * 60)) -> Timings:
    """Generate `count` calls, roll them up from nothing, run once more a lag later (a minute
    without calls), then run the beat's 15-second cycle `steady_runs` times at full traffic,
    then time the summary at `now` over each window (`repeats` times), with the last 15 s of
    calls not yet rolled up."""
    period, settle = timedelta(seconds=15), timedelta(seconds=SETTLE_S)
    start = now - (steady_runs + 1) * period - timedelta(seconds=WATERMARK_LAG_S)
    timings = Timings(calls=count)
    timings.generate_s = _timed(lambda: traffic_generate(count=count, now=start))
    tables_analyze()
    timings.backfill_s = _timed(lambda: rollups_run(now=start + settle))
    tables_analyze()
    # Until the backfill's largest id is a lag old, runs check all its minutes again.
    start += timedelta(seconds=WATERMARK_LAG_S)
    timings.catch_up_s = _timed(lambda: rollups_run(now=start + settle))
    for k in range(steady_runs + 1):
        slice_start = start + k * period
        calls_generate(count=round(FULL_TRAFFIC_QPS * 15), start=slice_start,
                       end=slice_start + period, prefix=f"syn-{k}-", seed=0.1 + k / 100)
        timings.calls += round(FULL_TRAFFIC_QPS * 15)
        if k < steady_runs:  # the last slice stays raw, as between two runs
            run_at = slice_start + period + timedelta(seconds=SETTLE_S)
            timings.steady_s.append(_timed(lambda at=run_at: rollups_run(now=at)))
    for minutes in windows:
        timings.summary_s[minutes] = [
            _timed(lambda m=minutes: summary_compute(minutes=m, now=now)) for _ in range(repeats)]
    timings.rows = {"minute": MinuteRollup.objects.count(), "hour": HourRollup.objects.count()}
    return timings
