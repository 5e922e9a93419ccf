"""charts.py turns series rows into plotly figures that carry the rows' values."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dashboard import charts

START = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def row(i: int, **stats) -> dict:
    values = {
        "t": START + timedelta(seconds=30 * i), "requests": 3, "qps": 0.1, "p50_ms": 100.0,
        "p95_ms": 150.0, "p99_ms": 200.0, "ttft_p50_ms": 20.0, "ttft_p99_ms": 40.0,
        "error_rate": 0.0, "cache_hit_rate": 0.0, "prompt_tokens": 10, "completion_tokens": 20,
    }
    return values | stats


ROWS = [
    row(0, qps=0.5, p50_ms=90.0, p99_ms=300.0, ttft_p50_ms=11.0, ttft_p99_ms=55.0,
        error_rate=0.25, prompt_tokens=100, completion_tokens=7),
    row(1, requests=0, qps=0.0, p50_ms=None, p95_ms=None, p99_ms=None, ttft_p50_ms=None,
        ttft_p99_ms=None, error_rate=0.0, prompt_tokens=0, completion_tokens=0),
    row(2, qps=1.5, p50_ms=80.0, p99_ms=410.0, ttft_p50_ms=12.0, ttft_p99_ms=70.0,
        error_rate=0.5, prompt_tokens=40, completion_tokens=60),
]


def trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_it_plots_the_qps_of_each_bucket():
    assert list(charts.qps_figure(ROWS).data[0].y) == [0.5, 0.0, 1.5]


def test_it_plots_latency_p50_and_p99_in_ms():
    fig = charts.latency_figure(ROWS)
    assert list(trace(fig, "P99").y) == [r["p99_ms"] for r in ROWS]
    assert list(trace(fig, "P50").y) == [r["p50_ms"] for r in ROWS]


def test_it_leaves_a_gap_where_a_bucket_had_no_calls():
    assert trace(charts.latency_figure(ROWS), "P99").y[1] is None


def test_it_plots_ttft_p50_and_p99():
    fig = charts.ttft_figure(ROWS)
    assert list(trace(fig, "P99").y) == [55.0, None, 70.0]
    assert list(trace(fig, "P50").y) == [11.0, None, 12.0]


def test_it_plots_the_error_rate_as_a_percentage():
    assert list(charts.errors_figure(ROWS).data[0].y) == [25.0, 0.0, 50.0]


def test_it_stacks_prompt_and_completion_tokens_per_bucket():
    fig = charts.tokens_figure(ROWS)
    assert fig.layout.barmode == "stack"
    assert list(trace(fig, "prompt").y) == [100, 0, 40]
    assert list(trace(fig, "completion").y) == [7, 0, 60]


def test_it_puts_the_bucket_starts_on_the_x_axis_as_utc():
    x = list(charts.qps_figure(ROWS).data[0].x)
    assert x == ["2025-01-01 12:00:00", "2025-01-01 12:00:30", "2025-01-01 12:01:00"]


def test_it_returns_every_chart_as_json_able_dicts():
    figures = charts.figures_build(ROWS)
    assert set(figures) == {"qps", "latency", "ttft", "errors", "tokens", "savings"}
    p99 = next(t for t in figures["latency"]["data"] if t["name"] == "P99")
    assert p99["y"] == [300.0, None, 410.0]
    assert figures["qps"]["layout"]["height"] > 0


def test_it_draws_an_empty_window_without_failing():
    figures = charts.figures_build([row(i, requests=0, qps=0.0, p50_ms=None, p99_ms=None)
                                    for i in range(30)])
    assert len(figures["latency"]["data"][0]["x"]) == 30


def test_it_shows_the_whole_window_with_half_a_bucket_to_spare():
    xaxis = charts.figures_build(ROWS)["latency"]["layout"]["xaxis"]
    assert xaxis["range"] == ["2025-01-01 11:59:45", "2025-01-01 12:01:15"]


def route(name: str, **causes: float) -> dict:
    by_cause = dict.fromkeys(("cache_exact", "cache_semantic", "routing", "compression",
                              "selfhost"), 0.0)
    return {"route": name, "savings_by_cause": by_cause | causes}


ROUTES = [
    route("default", cache_exact=0.025, cache_semantic=0.005, routing=0.046, compression=0.01),
    route("own", routing=0.32, selfhost=-0.04),
]


def test_it_stacks_the_savings_of_each_cause_per_route():
    fig = charts.savings_figure(ROUTES)

    assert fig.layout.barmode == "relative"  # negatives stack below zero
    assert [t.name for t in fig.data] == ["exact cache", "semantic cache", "routing",
                                          "compression", "self-hosting"]
    assert all(list(t.x) == ["default", "own"] for t in fig.data)
    assert list(trace(fig, "exact cache").y) == [0.025, 0.0]
    assert list(trace(fig, "semantic cache").y) == [0.005, 0.0]
    assert list(trace(fig, "routing").y) == [0.046, 0.32]
    assert list(trace(fig, "compression").y) == [0.01, 0.0]
    assert list(trace(fig, "self-hosting").y) == [0.0, -0.04]
    assert fig.layout.xaxis.type == "category"


def test_figures_build_draws_the_savings_from_the_route_rows():
    figures = charts.figures_build(ROWS, ROUTES)

    routing = next(t for t in figures["savings"]["data"] if t["name"] == "routing")
    assert routing["y"] == [0.046, 0.32]


def test_it_draws_savings_for_no_routes_without_failing():
    assert all(list(t.x) == [] for t in charts.savings_figure([]).data)
