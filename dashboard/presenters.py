"""Summary and calls → the strings the page shows.

One formatting source for both the first render (Django template) and every refresh (the
page's script only copies these strings into place), so the two never disagree.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from analytics.models import Call

RECENT_CALLS = 25


def _int(value: int) -> str:
    return f"{value:,}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} ms"


def _pct(value: float) -> str:
    return f"{value * 100:.1f} %"


def _usd(value: float) -> str:
    return f"${value:,.4f}"


# (key → element id `kpi-<key>`, label, formatter over the summary)
KPIS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("requests", "Requests", lambda s: _int(s["requests"])),
    ("qps", "QPS", lambda s: f"{s['qps']:.2f}"),
    ("p50", "Latency P50", lambda s: _ms(s["p50_ms"])),
    ("p99", "Latency P99", lambda s: _ms(s["p99_ms"])),
    ("ttft-p99", "TTFT P99", lambda s: _ms(s["ttft_p99_ms"])),
    ("error-rate", "Error rate", lambda s: _pct(s["error_rate"])),
    ("cache-hit-rate", "Cache hit rate", lambda s: _pct(s["cache_hit_rate"])),
    ("tokens", "Tokens (prompt / completion)",
     lambda s: f"{_int(s['prompt_tokens'])} / {_int(s['completion_tokens'])}"),
    ("baseline", "Baseline cost", lambda s: _usd(s["baseline_cost_usd"])),
    ("cost", "Cost", lambda s: _usd(s["cost_usd"])),
    ("savings", "Savings", lambda s: _usd(s["savings_usd"])),
]

ROUTE_COLUMNS = ["Route", "Requests", "QPS", "P50", "P99", "TTFT P99", "Errors", "Cache hits",
                 "Tokens", "Baseline", "Cost", "Savings"]
CALL_COLUMNS = ["Time (UTC)", "Route", "Model", "Backend", "Status", "Cache", "Latency", "TTFT",
                "Tokens", "Cost"]


def kpis_build(summary: dict[str, Any]) -> list[dict[str, str]]:
    return [{"key": key, "label": label, "value": fmt(summary)} for key, label, fmt in KPIS]


def routes_build(summary: dict[str, Any]) -> list[list[str]]:
    return [
        [r["route"] or "(none)", _int(r["requests"]), f"{r['qps']:.2f}", _ms(r["p50_ms"]),
         _ms(r["p99_ms"]), _ms(r["ttft_p99_ms"]), _pct(r["error_rate"]), _pct(r["cache_hit_rate"]),
         _int(r["prompt_tokens"] + r["completion_tokens"]), _usd(r["baseline_cost_usd"]),
         _usd(r["cost_usd"]),
         _usd(r["savings_usd"])]
        for r in summary["by_route"]
    ]


def calls_build(calls: Iterable[Call]) -> list[dict[str, Any]]:
    """Each call as its table cells, plus whether to flag the row as an error."""
    return [
        {
            "error": call.status_code >= 500,
            "cells": [
                f"{call.created_at:%H:%M:%S}", call.route or "–",
                call.served_model or call.requested_model or "–", call.backend or "–",
                f"{call.status_code}{' ' + call.error_type if call.error_type else ''}",
                call.cache, _ms(call.latency_ms), _ms(call.ttft_ms),
                f"{call.prompt_tokens} / {call.completion_tokens}", _usd(float(call.cost_usd)),
            ],
        }
        for call in calls
    ]


def calls_serialize(calls: Iterable[Call]) -> list[dict[str, Any]]:
    """The raw fields, for scripts that read data.json rather than look at the page."""
    return [
        {
            "created_at": call.created_at.isoformat(), "request_id": call.request_id,
            "api_key_name": call.api_key_name, "endpoint": call.endpoint, "route": call.route,
            "requested_model": call.requested_model, "served_model": call.served_model,
            "backend": call.backend, "status_code": call.status_code,
            "error_type": call.error_type, "stream": call.stream,
            "prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens,
            "cache": call.cache, "latency_ms": call.latency_ms, "ttft_ms": call.ttft_ms,
            "retries": call.retries, "fallback_used": call.fallback_used,
            "cost_usd": float(call.cost_usd), "baseline_cost_usd": float(call.baseline_cost_usd),
            "decision": call.decision, "prompt_tokens_saved": call.prompt_tokens_saved,
            "saved_cache_usd": float(call.saved_cache_usd),
            "saved_routing_usd": float(call.saved_routing_usd),
            "saved_compression_usd": float(call.saved_compression_usd),
            "saved_selfhost_usd": float(call.saved_selfhost_usd),
            "saved_batch_usd": float(call.saved_batch_usd),
        }
        for call in calls
    ]
