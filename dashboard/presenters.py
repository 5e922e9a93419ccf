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


# --- the pages (rows of analytics.dashboard_selectors) --------------------------------------
def _rate(value: float) -> str:
    return f"{value:,.2f}/s"


def _opt(value: Any, fmt: Callable[[Any], str]) -> str:
    return "–" if value is None else fmt(value)


OVERVIEW_KPIS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("requests", "Requests", lambda s: _int(s["requests"])),
    ("qps", "QPS", lambda s: f"{s['qps']:.2f}"),
    ("p50", "Latency P50", lambda s: _ms(s["p50_ms"])),
    ("p95", "Latency P95", lambda s: _ms(s["p95_ms"])),
    ("p99", "Latency P99", lambda s: _ms(s["p99_ms"])),
    ("ttft-p50", "TTFT P50", lambda s: _ms(s["ttft_p50_ms"])),
    ("ttft-p95", "TTFT P95", lambda s: _ms(s["ttft_p95_ms"])),
    ("ttft-p99", "TTFT P99", lambda s: _ms(s["ttft_p99_ms"])),
    ("error-rate", "Error rate (5xx)", lambda s: _pct(s["error_rate"])),
    ("cache-hit-rate", "Cache hit rate", lambda s: _pct(s["cache_hit_rate"])),
    ("cache-exact", "Exact cache hits", lambda s: _pct(s["cache_exact_rate"])),
    ("cache-semantic", "Semantic cache hits", lambda s: _pct(s["cache_semantic_rate"])),
    ("tps-in", "Tokens/s in", lambda s: _rate(s["prompt_tps"])),
    ("tps-out", "Tokens/s out", lambda s: _rate(s["completion_tps"])),
    ("baseline", "Baseline cost", lambda s: _usd(s["baseline_cost_usd"])),
    ("cost", "Cost", lambda s: _usd(s["cost_usd"])),
    ("savings", "Savings", lambda s: _usd(s["savings_usd"])),
]

# Chart name → its value in the latest bucket, shown next to the chart's title.
CURRENT: dict[str, Callable[[dict[str, Any]], str]] = {
    "qps": lambda r: f"{r['qps']:.2f} req/s",
    "latency": lambda r: f"P99 {_ms(r['p99_ms'])}",
    "ttft": lambda r: f"P99 {_ms(r['ttft_p99_ms'])}",
    "errors": lambda r: f"{_pct(r['error_rate'])} 5xx",
    "cache": lambda r: f"{_pct(r['cache_hit_rate'])} hits",
    "tps": lambda r: f"{_rate(r['prompt_tps'])} in · {_rate(r['completion_tps'])} out",
    "money": lambda r: f"{_usd(r['cost_usd'])} cost · {_usd(r['savings_usd'])} saved",
}


def kpis_of(spec: list[tuple[str, str, Callable[[dict[str, Any]], str]]],
            figures: dict[str, Any]) -> list[dict[str, str]]:
    return [{"key": key, "label": label, "value": fmt(figures)} for key, label, fmt in spec]


def current_build(series: list[dict[str, Any]]) -> dict[str, str]:
    """Each chart's latest bucket: the one in progress once it has calls, else the one before
    (a minute that has just begun would show nothing)."""
    if not series:
        return {}
    last = series[-1] if series[-1]["requests"] or len(series) < 2 else series[-2]
    return {name: fmt(last) for name, fmt in CURRENT.items()}


ROUTES_COLUMNS = ["Route", "Requests", "Share", "QPS", "P99", "Errors", "Cache hits",
                  "Down-routed", "Cost", "Baseline", "Savings", "cache (exact)",
                  "cache (semantic)", "routing", "compression", "self-hosting", "batch"]
SAVINGS_ORDER = ("cache_exact", "cache_semantic", "routing", "compression", "selfhost", "batch")


def route_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"error": r["error_rate"] > 0.05, "cells": [
            r["route"] or "(none)", _int(r["requests"]), _pct(r["share"]), f"{r['qps']:.2f}",
            _ms(r["p99_ms"]), f"{_int(r['errors'])} ({_pct(r['error_rate'])})",
            _pct(r["cache_hit_rate"]), _pct(r["down_routed_rate"]), _usd(r["cost_usd"]),
            _usd(r["baseline_cost_usd"]), _usd(r["savings_usd"]),
            *(_usd(r["savings_by_cause"][c]) for c in SAVINGS_ORDER)]}
        for r in rows
    ]


BACKENDS_COLUMNS = ["Backend", "Requests", "Share", "P50", "P99", "TTFT P99", "Errors",
                    "Tokens in / out"]


def backend_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"error": r["error_rate"] > 0.05, "cells": [
            r["backend"] or "(cache / none)", _int(r["requests"]), _pct(r["share"]),
            _ms(r["p50_ms"]), _ms(r["p99_ms"]), _ms(r["ttft_p99_ms"]),
            f"{_int(r['errors'])} ({_pct(r['error_rate'])})",
            f"{_int(r['prompt_tokens'])} / {_int(r['completion_tokens'])}"]}
        for r in rows
    ]


RECONCILE_COLUMNS = ["Backend", "Since", "Prompt: Sluice / backend", "Drift",
                     "Completion: Sluice / backend", "Drift", "Note"]


def _drift(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f} %"


def reconcile_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r.get("note"):
            out.append({"error": r.get("failed", False),
                        "cells": [r["backend"], "–", "–", "–", "–", "–", r["note"]]})
            continue
        big = any(abs(d or 0) > 0.05 for d in (r["prompt_drift"], r["completion_drift"]))
        out.append({"error": big, "cells": [
            r["backend"], f"{r['since']:%H:%M:%S} ({r['seconds']:.0f} s)",
            f"{_int(r['prompt_logged'])} / {_int(r['prompt_backend'])}", _drift(r["prompt_drift"]),
            f"{_int(r['completion_logged'])} / {_int(r['completion_backend'])}",
            _drift(r["completion_drift"]), "drift > 5 %" if big else ""]})
    return out


CALLS_COLUMNS = ["Time (UTC)", "Status", "Route", "Key", "Model", "Backend", "Cache",
                 "Latency", "TTFT", "Tokens", "Cost", "Request id"]


def call_rows(calls: Iterable[Call]) -> list[dict[str, Any]]:
    """The call log page's rows; `href` links the row to its detail page."""
    return [
        {"error": call.status_code >= 500, "href": f"/dashboard/calls/{call.pk}/", "cells": [
            f"{call.created_at:%Y-%m-%d %H:%M:%S}",
            f"{call.status_code}{' ' + call.error_type if call.error_type else ''}",
            call.route or "–", call.api_key_name or "–",
            call.served_model or call.requested_model or "–", call.backend or "–", call.cache,
            _ms(call.latency_ms), _ms(call.ttft_ms),
            f"{call.prompt_tokens} / {call.completion_tokens}", _usd(float(call.cost_usd)),
            call.request_id]}
        for call in calls
    ]


def call_detail(call: Call) -> list[tuple[str, list[tuple[str, str]]]]:
    """The detail page's sections of (label, value)."""
    def usd(v: Any) -> str:
        return _usd(float(v))

    return [
        ("Request", [
            ("Time (UTC)", f"{call.created_at:%Y-%m-%d %H:%M:%S.%f}"),
            ("Request id", call.request_id), ("Endpoint", call.endpoint),
            ("Key", call.api_key_name or "–"), ("Route", call.route or "–"),
            ("Requested model", call.requested_model or "–"),
            ("Served model", call.served_model or "–"), ("Stream", "yes" if call.stream else "no"),
            ("Status", f"{call.status_code} {call.error_type}".strip()),
        ]),
        ("Timings", [
            ("Latency", _ms(call.latency_ms)), ("TTFT", _ms(call.ttft_ms)),
            ("Queue wait", _ms(call.queue_ms)),
        ]),
        ("Tokens", [
            ("Prompt", _int(call.prompt_tokens)), ("Completion", _int(call.completion_tokens)),
            ("Removed by compression", _int(call.prompt_tokens_saved)),
        ]),
        ("Decision", [
            ("Cache", call.cache), ("Routing decision", call.decision or "–"),
            ("Decision score", _opt(call.decision_score, lambda v: f"{v:.3f}")),
            ("Backend", call.backend or "–"), ("Backend reason", call.backend_reason or "–"),
            ("Retries", str(call.retries)),
            ("Fallback used", "yes" if call.fallback_used else "no"),
        ]),
        ("Money", [
            ("Cost", usd(call.cost_usd)), ("Baseline", usd(call.baseline_cost_usd)),
            ("Saved by cache", usd(call.saved_cache_usd)),
            ("Saved by routing", usd(call.saved_routing_usd)),
            ("Saved by compression", usd(call.saved_compression_usd)),
            ("Saved by self-hosting", usd(call.saved_selfhost_usd)),
            ("Batch discount", usd(call.saved_batch_usd)),
        ]),
        ("Content", [("Prompt", "not stored"), ("Answer", "not stored")]),
    ]


RULES_COLUMNS = ["Rule", "State", "Since", "Condition", "Window", "For", "Route", "Backend",
                 "Last value", "Evaluated", "Enabled"]
EVENTS_COLUMNS = ["Time (UTC)", "Rule", "Event", "Value", "Condition", "Started", "Notified"]


def _when(t: Any) -> str:
    return "–" if t is None else f"{t:%Y-%m-%d %H:%M:%S}"


def rule_rows(rules: Iterable[Any]) -> list[dict[str, Any]]:
    return [
        {"error": rule.state == "firing", "cells": [
            rule.name, rule.state, _when(rule.since), rule.condition_text,
            f"{rule.window_minutes} min", f"{rule.for_s} s", rule.route or "all",
            rule.backend or "all", _opt(rule.last_value, lambda v: f"{v:g}"),
            _when(rule.evaluated_at), "yes" if rule.enabled else "no"]}
        for rule in rules
    ]


def event_rows(events: Iterable[Any]) -> list[dict[str, Any]]:
    return [
        {"error": event.kind == "fired", "cells": [
            _when(event.at), event.rule.name, event.kind,
            _opt(event.value, lambda v: f"{v:g}"), event.condition, _when(event.started_at),
            f"{event.notify_status}{': ' + event.notify_error if event.notify_error else ''}"]}
        for event in events
    ]


def firing_build(rules: Iterable[Any]) -> list[str]:
    return [f"{r.name}: {r.condition_text} (now {_opt(r.last_value, lambda v: f'{v:g}')}, "
            f"since {_when(r.since)})" for r in rules]
