"""Series rows (from `analytics.selectors.series_compute`) and the summary's per-route rows
(`summary_compute()["by_route"]`) → plotly figures, one per chart.

Pure functions: no database, no request. The page and /dashboard/data.json hand the figures
to plotly.js as JSON, which draws them with `Plotly.react`, so nothing is built in templates.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import plotly.graph_objects as go

Rows = Sequence[dict[str, Any]]

# Colours shared with the page's CSS, so a series keeps its colour from chart to chart.
BLUE, ORANGE, RED, GREEN, GREY = "#2563eb", "#ea580c", "#dc2626", "#16a34a", "#94a3b8"
PURPLE, TEAL = "#7c3aed", "#0d9488"

# Savings cause (a key of `savings_by_cause`) → legend name and colour, in stacking order.
CAUSES: list[tuple[str, str, str]] = [
    ("cache_exact", "exact cache", BLUE),
    ("cache_semantic", "semantic cache", TEAL),
    ("routing", "routing", ORANGE),
    ("compression", "compression", PURPLE),
    ("selfhost", "self-hosting", GREEN),
    ("batch", "batch discount", GREY),
]


def _utc(t: datetime) -> str:
    """A naive UTC string: plotly.js does not read time-zone suffixes."""
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _x(rows: Rows) -> list[str]:
    return [_utc(row["t"]) for row in rows]


def _x_range(rows: Rows) -> list[str] | None:
    """The whole window, half a bucket of margin each side so edge points and bars show whole:
    an idle gateway still shows the last N minutes rather than an empty axis."""
    if not rows:
        return None
    half = (rows[1]["t"] - rows[0]["t"]) / 2 if len(rows) > 1 else timedelta(seconds=15)
    return [_utc(rows[0]["t"] - half), _utc(rows[-1]["t"] + half)]


def _figure(
    rows: Rows, traces: list[go.BaseTraceType], *, y_title: str, **layout: Any
) -> go.Figure:
    fig = go.Figure(data=traces)
    # template "none" keeps plotly's default theme (~6 kB per figure) out of every refresh.
    fig.update_layout(
        template="none",
        height=240,
        margin={"l": 56, "r": 16, "t": 12, "b": 36},
        font={"family": "system-ui, sans-serif", "size": 12, "color": "#334155"},
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        showlegend=len(traces) > 1,
        legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        hovermode="x unified",
        uirevision="keep",  # Plotly.react keeps the user's zoom across refreshes
        **layout,
    )
    fig.update_xaxes(type="date", range=_x_range(rows), gridcolor="#e2e8f0")
    fig.update_yaxes(title_text=y_title, rangemode="tozero", gridcolor="#e2e8f0", zeroline=False)
    return fig


def _line(rows: Rows, key: str, name: str, color: str, *, scale: float = 1.0) -> go.Scatter:
    y = [None if row[key] is None else row[key] * scale for row in rows]
    return go.Scatter(x=_x(rows), y=y, name=name, mode="lines+markers",
                      line={"color": color, "width": 2}, marker={"size": 4})


def qps_figure(rows: Rows) -> go.Figure:
    return _figure(rows, [_line(rows, "qps", "QPS", BLUE)], y_title="req/s")


def latency_figure(rows: Rows) -> go.Figure:
    traces = [_line(rows, "p50_ms", "P50", BLUE), _line(rows, "p99_ms", "P99", ORANGE)]
    return _figure(rows, traces, y_title="ms")


def ttft_figure(rows: Rows) -> go.Figure:
    traces = [_line(rows, "ttft_p50_ms", "P50", BLUE), _line(rows, "ttft_p99_ms", "P99", ORANGE)]
    return _figure(rows, traces, y_title="ms")


def errors_figure(rows: Rows) -> go.Figure:
    return _figure(rows, [_line(rows, "error_rate", "errors", RED, scale=100)], y_title="%")


def tokens_figure(rows: Rows) -> go.Figure:
    x = _x(rows)
    traces = [
        go.Bar(x=x, y=[row["prompt_tokens"] for row in rows], name="prompt", marker_color=BLUE),
        go.Bar(x=x, y=[row["completion_tokens"] for row in rows], name="completion",
               marker_color=GREEN),
    ]
    return _figure(rows, traces, y_title="tokens", barmode="stack", bargap=0.15)


def savings_figure(routes: Rows) -> go.Figure:
    """Savings by cause per route, stacked; a negative part (a GPU dearer than the hosted
    price, a fallback to a dearer model) stacks below zero rather than hiding in the total."""
    names = [r["route"] or "(none)" for r in routes]
    traces = [
        go.Bar(x=names, y=[r["savings_by_cause"].get(cause, 0.0) for r in routes], name=label,
               marker_color=color, hovertemplate="$%{y:,.4f}")
        for cause, label, color in CAUSES
        # The batch discount only where an operator gives one: no empty legend entry.
        if cause != "batch" or any(r["savings_by_cause"].get(cause) for r in routes)
    ]
    fig = _figure((), traces, y_title="$", barmode="relative", bargap=0.3)
    fig.update_xaxes(type="category")
    fig.update_yaxes(zeroline=True, zerolinecolor=GREY)
    return fig


# Chart name → builder; the name is also the chart's element id on the page (`chart-<name>`).
CHARTS: dict[str, tuple[str, Callable[[Rows], go.Figure]]] = {
    "qps": ("Requests per second", qps_figure),
    "latency": ("Latency P50 / P99 (ms)", latency_figure),
    "ttft": ("Time to first token P50 / P99 (ms, streams)", ttft_figure),
    "errors": ("Error rate (%, status ≥ 500)", errors_figure),
    "tokens": ("Tokens per bucket", tokens_figure),
}


# The same, for charts drawn from the summary's per-route rows rather than the time series.
ROUTE_CHARTS: dict[str, tuple[str, Callable[[Rows], go.Figure]]] = {
    "savings": ("Savings by cause per route ($)", savings_figure),
}


def figures_build(rows: Rows, routes: Rows = ()) -> dict[str, dict[str, Any]]:
    """Every chart as a JSON-able {data, layout} dict, keyed by chart name: the series charts
    from `rows`, the per-route charts from `routes`."""
    figures = {name: json.loads(build(rows).to_json()) for name, (_, build) in CHARTS.items()}
    for name, (_, build) in ROUTE_CHARTS.items():
        figures[name] = json.loads(build(routes).to_json())
    return figures


# --- the pages' charts (rows of analytics.dashboard_selectors) -------------------------------
ERROR_COLORS = [RED, ORANGE, PURPLE, TEAL, GREY, BLUE, GREEN]


def percentiles_figure(rows: Rows, *, prefix: str = "") -> go.Figure:
    """P50 / P95 / P99 in ms: `prefix` "" for latency, "ttft_" for time to first token."""
    traces = [_line(rows, f"{prefix}p{p}_ms", f"P{p}", color)
              for p, color in ((50, BLUE), (95, TEAL), (99, ORANGE))]
    return _figure(rows, traces, y_title="ms")


def error_types_figure(rows: Rows) -> go.Figure:
    """The 5xx rate and the rate of each error type (any status) seen in the window, in %."""
    types = sorted({t for row in rows for t in row["error_rate_by_type"]})
    traces = [_line(rows, "error_rate", "5xx", RED, scale=100)]
    for i, name in enumerate(types):
        y = [row["error_rate_by_type"].get(name, 0.0) * 100 for row in rows]
        color = ERROR_COLORS[(i + 1) % len(ERROR_COLORS)]
        traces.append(go.Scatter(x=_x(rows), y=y, name=name, mode="lines",
                                 line={"color": color, "width": 1.5, "dash": "dot"}))
    return _figure(rows, traces, y_title="%")


def cache_figure(rows: Rows) -> go.Figure:
    traces = [_line(rows, "cache_exact_rate", "exact", BLUE, scale=100),
              _line(rows, "cache_semantic_rate", "semantic", TEAL, scale=100)]
    return _figure(rows, traces, y_title="% of calls")


def tps_figure(rows: Rows) -> go.Figure:
    traces = [_line(rows, "prompt_tps", "in (prompt)", BLUE),
              _line(rows, "completion_tps", "out (completion)", GREEN)]
    return _figure(rows, traces, y_title="tokens/s")


def money_figure(rows: Rows) -> go.Figure:
    traces = [_line(rows, "cost_usd", "cost", ORANGE), _line(rows, "savings_usd", "savings", GREEN)]
    fig = _figure(rows, traces, y_title="$ per bucket")
    fig.update_yaxes(rangemode="normal")  # savings can be negative
    return fig


def bars_figure(rows: Rows, *, label: str, value: str, y_title: str, color: str = BLUE,
                scale: float = 1.0) -> go.Figure:
    """One bar per row (a route, a backend): `value` of each, labelled by `label`."""
    names = [r[label] or "(none)" for r in rows]
    y = [None if r[value] is None else r[value] * scale for r in rows]
    fig = _figure((), [go.Bar(x=names, y=y, marker_color=color, name=y_title)], y_title=y_title,
                  bargap=0.3)
    fig.update_xaxes(type="category")
    return fig


def _json(fig: go.Figure) -> dict[str, Any]:
    return json.loads(fig.to_json())


# Page → chart name → (title, builder over that page's rows). Names are element ids
# (`chart-<name>`); `current` (the key shown next to the title) is in presenters.
OVERVIEW_CHARTS: dict[str, tuple[str, Callable[[Rows], go.Figure]]] = {
    "qps": ("Requests per second", qps_figure),
    "latency": ("Latency P50 / P95 / P99 (ms)", percentiles_figure),
    "ttft": ("Time to first token P50 / P95 / P99 (ms, streams)",
             lambda rows: percentiles_figure(rows, prefix="ttft_")),
    "errors": ("Error rate by type (%)", error_types_figure),
    "cache": ("Cache hit rate by kind (%)", cache_figure),
    "tps": ("Tokens per second, in and out", tps_figure),
    "money": ("Cost and savings ($ per bucket)", money_figure),
}

ROUTE_PAGE_CHARTS: dict[str, tuple[str, Callable[[Rows], go.Figure]]] = {
    "savings": ("Savings by cause per route ($)", savings_figure),
    "route-requests": ("Requests per route",
                       lambda r: bars_figure(r, label="route", value="requests",
                                             y_title="calls")),
    "route-p99": ("P99 latency per route (ms)",
                  lambda r: bars_figure(r, label="route", value="p99_ms", y_title="ms",
                                        color=ORANGE)),
}

BACKEND_PAGE_CHARTS: dict[str, tuple[str, Callable[[Rows], go.Figure]]] = {
    "backend-share": ("Share of traffic per backend (%)",
                      lambda r: bars_figure(r, label="backend", value="share", y_title="%",
                                            scale=100)),
    "backend-p99": ("P99 latency per backend (ms)",
                    lambda r: bars_figure(r, label="backend", value="p99_ms", y_title="ms",
                                          color=ORANGE)),
    "backend-errors": ("Error rate per backend (%, 5xx)",
                       lambda r: bars_figure(r, label="backend", value="error_rate",
                                             y_title="%", color=RED, scale=100)),
}


def page_figures(charts: dict[str, tuple[str, Callable[[Rows], go.Figure]]],
                 rows: Rows) -> dict[str, dict[str, Any]]:
    return {name: _json(build(rows)) for name, (_, build) in charts.items()}
