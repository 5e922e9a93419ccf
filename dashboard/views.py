"""Operator pages. Thin: the selectors read, charts.py and presenters.py shape."""
from __future__ import annotations

from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from analytics.selectors import calls_recent, series_compute, summary_compute
from dashboard import charts, presenters

WINDOW_MINUTES = 15
BUCKET_S = 30
REFRESH_MS = 3000


def dashboard_data(*, minutes: int = WINDOW_MINUTES) -> dict[str, Any]:
    """Everything the overview shows, JSON-able: the same dict renders the page and data.json."""
    summary = summary_compute(minutes=minutes)
    calls = list(calls_recent(limit=presenters.RECENT_CALLS))
    return {
        "summary": summary,
        "figures": charts.figures_build(series_compute(minutes=minutes, bucket_s=BUCKET_S),
                                        summary["by_route"]),
        "calls": presenters.calls_serialize(calls),
        "view": {
            "kpis": presenters.kpis_build(summary),
            "routes": presenters.routes_build(summary),
            "calls": presenters.calls_build(calls),
        },
    }


@never_cache
@staff_member_required
def overview(request: HttpRequest) -> HttpResponse:
    data = dashboard_data()
    return render(request, "dashboard/overview.html", {
        "data": data,
        "view": data["view"],
        "charts": [(name, title) for name, (title, _)
                   in (charts.CHARTS | charts.ROUTE_CHARTS).items()],
        "route_columns": presenters.ROUTE_COLUMNS,
        "call_columns": presenters.CALL_COLUMNS,
        "minutes": WINDOW_MINUTES,
        "bucket_s": BUCKET_S,
        "refresh_ms": REFRESH_MS,
    })


@never_cache
@staff_member_required
def data(request: HttpRequest) -> JsonResponse:
    return JsonResponse(dashboard_data())
