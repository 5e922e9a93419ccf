"""Prometheus counters and histograms of the call log, fed by the writer thread.

The request path does no Prometheus work: it hands its record to the recorder (a deque
append) as before, and the writer thread passes every record, once, to `calls_observe`
before it tries the database (analytics/recorder.py), so calls are counted while the
database is down too. A batch costs one `inc()` per label set and one `observe()` per
latency value, each a write to a memory-mapped file: prometheus_client's multi-process mode,
which lets /metrics add up every process of the gateway (config/metrics.py).

Labels stay bounded: routes, backends and models come from the config, statuses and cache
outcomes from Sluice, error types from Sluice or its backends (capped at
`ERROR_TYPES_MAX` distinct values per process, the rest as "other"). Never a request id, a
key or a key's name.

Savings by cause come as two counters, gains and losses (routing to a pricier model, or a
GPU hour that cost more than the hosted price of its tokens, saves a negative amount, and a
Prometheus counter only goes up): net savings of a cause = gains - losses, and over every
cause they equal baseline - cost.
"""
from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, values

# PROMETHEUS_MULTIPROC_DIR (config/settings.py sets it) picks prometheus_client's file-backed
# values when the library is first imported; should anything have imported it before the
# settings ran, pick them now, or each process would count alone and /metrics show one.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and not values.ValueClass._multiprocess:
    values.ValueClass = values.MultiProcessValue()

# Seconds. Latency from 5 ms (a cache hit) to 15 min (the total timeout); TTFT as vLLM's.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
                   60.0, 120.0, 300.0, 900.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ERROR_TYPES_MAX = 50

_WHERE = ["route", "model", "backend"]

REQUESTS = Counter("sluice_requests", "Calls answered, by outcome (HTTP status; 499: the "
                   "client hung up, 502: a stream that broke after its 200).",
                   ["endpoint", "route", "model", "backend", "status"])
ERRORS = Counter("sluice_request_errors", "Calls that failed (status >= 400), by error type.",
                 ["route", "backend", "status", "type"])
LATENCY = Histogram("sluice_request_duration_seconds", "Time from the request to its last "
                    "byte.", ["route", "backend"], buckets=LATENCY_BUCKETS)
TTFT = Histogram("sluice_time_to_first_token_seconds", "Time from the request to its first "
                 "token (calls that produced one).", ["route", "backend"], buckets=TTFT_BUCKETS)
PROMPT_TOKENS = Counter("sluice_prompt_tokens", "Prompt tokens, as the backend counted them.",
                        _WHERE)
COMPLETION_TOKENS = Counter("sluice_completion_tokens", "Completion tokens, as the backend "
                            "counted them.", _WHERE)
CACHE = Counter("sluice_cache_requests", "Calls by cache outcome: exact, semantic (hits), "
                "miss, skipped, bypass (no lookup).", ["route", "cache"])
COST = Counter("sluice_cost_usd", "What the calls cost, in $.", _WHERE)
BASELINE = Counter("sluice_baseline_cost_usd", "What the same tokens would have cost at the "
                   "route's baseline model's price, in $.", _WHERE)
SAVINGS = Counter("sluice_savings_usd", "Savings by cause, the calls that saved, in $ "
                  "(net: minus sluice_savings_loss_usd_total).", ["route", "cause"])
SAVINGS_LOSS = Counter("sluice_savings_loss_usd", "Negative savings by cause, as a positive "
                       "amount in $ (a pricier model, a GPU dearer than the hosted price).",
                       ["route", "cause"])

# Record field -> cause, as the ops API's savings_by_cause names them (the cache's is split by
# the record's cache outcome).
_CAUSES = (("saved_routing_usd", "routing"), ("saved_compression_usd", "compression"),
           ("saved_selfhost_usd", "selfhost"), ("saved_batch_usd", "batch"))
_ZERO = Decimal(0)

_pending_gauge: Gauge | None = None
_error_types: set[str] = set()


def calls_observe(rows: Iterable[dict[str, Any]]) -> None:
    """Count a batch of call records (CallLog.to_record's dicts), aggregated per label set."""
    requests: dict[tuple, int] = defaultdict(int)
    errors: dict[tuple, int] = defaultdict(int)
    cache: dict[tuple, int] = defaultdict(int)
    prompt: dict[tuple, int] = defaultdict(int)
    completion: dict[tuple, int] = defaultdict(int)
    cost: dict[tuple, Decimal] = defaultdict(Decimal)
    baseline: dict[tuple, Decimal] = defaultdict(Decimal)
    gains: dict[tuple, Decimal] = defaultdict(Decimal)
    losses: dict[tuple, Decimal] = defaultdict(Decimal)
    latency: dict[tuple, list[float]] = defaultdict(list)
    ttft: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        route, backend, get = row.get("route", ""), row.get("backend", ""), row.get
        where = (route, get("served_model", ""), backend)
        status = get("status_code", 0)
        requests[(get("endpoint", ""), *where, status)] += 1
        if status >= 400:
            errors[(route, backend, status, _error_type(get("error_type") or ""))] += 1
        cache[(route, get("cache") or "bypass")] += 1
        prompt[where] += get("prompt_tokens") or 0
        completion[where] += get("completion_tokens") or 0
        cost[where] += get("cost_usd") or _ZERO
        baseline[where] += get("baseline_cost_usd") or _ZERO
        _savings_add(row, route, gains, losses)
        latency[(route, backend)].append(get("latency_ms") or 0.0)
        if (first := get("ttft_ms")) is not None:
            ttft[(route, backend)].append(first)
    _counts_inc(REQUESTS, requests)
    _counts_inc(ERRORS, errors)
    _counts_inc(CACHE, cache)
    for counter, amounts in ((PROMPT_TOKENS, prompt), (COMPLETION_TOKENS, completion),
                             (COST, cost), (BASELINE, baseline), (SAVINGS, gains),
                             (SAVINGS_LOSS, losses)):
        _counts_inc(counter, amounts)
    _observe_ms(LATENCY, latency)
    _observe_ms(TTFT, ttft)


def pending_set(count: int) -> None:
    """Records this process holds that the database has not taken yet (summed over the live
    processes); created on first use, so that importing this module writes no file."""
    global _pending_gauge
    if _pending_gauge is None:
        _pending_gauge = Gauge("sluice_call_log_pending", "Call records waiting for the "
                               "database (queued in memory or left to the journal).",
                               multiprocess_mode="livesum")
    _pending_gauge.set(count)


def _savings_add(row: dict[str, Any], route: str, gains: dict, losses: dict) -> None:
    amount = row.get("saved_cache_usd") or _ZERO
    if amount:
        cause = "cache_semantic" if row.get("cache") == "semantic" else "cache_exact"
        (gains if amount > 0 else losses)[(route, cause)] += abs(amount)
    for field, cause in _CAUSES:
        amount = row.get(field) or _ZERO
        if amount:
            (gains if amount > 0 else losses)[(route, cause)] += abs(amount)


def _error_type(value: str) -> str:
    if value in _error_types:
        return value
    if len(_error_types) < ERROR_TYPES_MAX:
        _error_types.add(value)
        return value
    return "other"


def _counts_inc(counter: Counter, amounts: dict[tuple, Any]) -> None:
    for labels, amount in amounts.items():
        if amount > 0:  # a counter only goes up; a bad row's negative count is no call's
            counter.labels(*map(str, labels)).inc(float(amount))


def _observe_ms(histogram: Histogram, samples: dict[tuple, list[float]]) -> None:
    for labels, values_ms in samples.items():
        child = histogram.labels(*labels)
        for ms in values_ms:
            child.observe(ms / 1000.0)
