"""Operator pages. Thin: the selectors read, charts.py and presenters.py shape.

Every page is a template around one JSON-able dict (`<page>_data`): the first render embeds
it, and the page's script fetches the same dict from `<page>/data.json` (same query string:
range and filters) every few seconds and redraws in place.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache

from alerts.selectors import events_recent, rules_firing, rules_list
from analytics import dashboard_selectors as reads
from analytics.models import Call
from dashboard import charts, presenters, reconcile
from dashboard.query import FILTERS, RANGES, Query, query_parse

REFRESH_MS = 3000
CALLS_PER_PAGE = 50
SLOW_MS_DEFAULT = 1000.0
NO_CALLS = "No calls in this range: run `make demo`, or widen the range or the filters."
# Backwards-compatible names: the window of the default range.
WINDOW_MINUTES = 15
BUCKET_S = 60


def _firing() -> list[str]:
    return presenters.firing_build(rules_firing())


def overview_data(q: Query) -> dict[str, Any]:
    series = reads.series_read(minutes=q.minutes, bucket_s=q.bucket_s, filters=q.filters)
    summary = reads.window_read(minutes=q.minutes, bucket_s=q.bucket_s, filters=q.filters)
    summary.pop("rows")
    calls = list(reads.calls_search(start=summary["start"], end=summary["end"],
                                    filters=q.filters)[:presenters.RECENT_CALLS])
    return {
        "summary": summary,
        "figures": charts.page_figures(charts.OVERVIEW_CHARTS, series),
        "current": presenters.current_build(series),
        "kpis": presenters.kpis_of(presenters.OVERVIEW_KPIS, summary),
        "tables": {"calls": presenters.call_rows(calls)},
        "calls": presenters.calls_serialize(calls),
        "firing": _firing(),
    }


def routes_data(q: Query) -> dict[str, Any]:
    window = reads.window_read(minutes=q.minutes, bucket_s=q.bucket_s, dims=("route",),
                               filters=q.filters)
    return {
        "rows": window["rows"],
        "figures": charts.page_figures(charts.ROUTE_PAGE_CHARTS, window["rows"]),
        "tables": {"routes": presenters.route_rows(window["rows"])},
        "firing": _firing(),
    }


def backends_data(q: Query) -> dict[str, Any]:
    window = reads.window_read(minutes=q.minutes, bucket_s=q.bucket_s, dims=("backend",),
                               filters=q.filters)
    reconciled = reconcile.reconcile()
    return {
        "rows": window["rows"],
        "reconcile": reconciled,
        "figures": charts.page_figures(charts.BACKEND_PAGE_CHARTS, window["rows"]),
        "tables": {"backends": presenters.backend_rows(window["rows"]),
                   "reconcile": presenters.reconcile_rows(reconciled)},
        "firing": _firing(),
    }


def _calls_params(request: HttpRequest) -> dict[str, Any]:
    """The call log's own search fields, on top of the range and filters."""
    try:
        slow_ms = float(request.GET.get("slow_ms") or SLOW_MS_DEFAULT)
    except ValueError:
        slow_ms = SLOW_MS_DEFAULT
    try:
        page = max(1, int(request.GET.get("page") or 1))
    except ValueError:
        page = 1
    return {"status": request.GET.get("status", "").strip().lower(),
            "slow": request.GET.get("slow") == "1", "slow_ms": slow_ms, "page": page,
            "request_id": request.GET.get("request_id", "").strip()}


def calls_data(q: Query, p: dict[str, Any]) -> dict[str, Any]:
    """One page of the log, newest first; one row more than a page says whether there is a
    next one (no COUNT over a large table)."""
    now = timezone.now()
    calls = reads.calls_search(start=now - timedelta(minutes=q.minutes), end=now,
                               filters=q.filters, status=p["status"],
                               slow_ms=p["slow_ms"] if p["slow"] else None,
                               request_id=p["request_id"])
    offset = (p["page"] - 1) * CALLS_PER_PAGE
    rows = list(calls[offset:offset + CALLS_PER_PAGE + 1])
    return {
        "page": p["page"], "has_next": len(rows) > CALLS_PER_PAGE,
        "calls": presenters.calls_serialize(rows[:CALLS_PER_PAGE]),
        "tables": {"calls": presenters.call_rows(rows[:CALLS_PER_PAGE])},
        "firing": _firing(),
    }


def alerts_data(q: Query) -> dict[str, Any]:
    return {
        "tables": {"rules": presenters.rule_rows(rules_list()),
                   "events": presenters.event_rows(events_recent(limit=100))},
        "firing": _firing(),
    }


def _page(request: HttpRequest, q: Query, *, page: str, data: dict[str, Any],
          **extra: Any) -> HttpResponse:
    """The frame every page shares: nav, range and filter bar, and the refresh script."""
    since = timezone.now() - timedelta(minutes=q.minutes)
    has_data = page != "call"  # the detail of a logged call does not change
    data_url = reverse(f"dashboard:{page}_data") + "?" + request.GET.urlencode() if has_data else ""
    return render(request, f"dashboard/{page}.html", {
        "page": page, "q": q, "data": data, "data_url": data_url, "refresh_ms": REFRESH_MS,
        "ranges": [(key, label) for key, (label, _, _) in RANGES.items()],
        "choices": reads.filter_choices(since=since), "filter_names": FILTERS,
        "nav": [(name, label, reverse(f"dashboard:{name}") + "?" + q.qs)
                for name, label in (("overview", "Overview"), ("routes", "Routes"),
                                    ("backends", "Backends"), ("calls", "Calls"),
                                    ("alerts", "Alerts"))],
        **extra,
    })


def _charts(spec: dict[str, tuple[str, Callable]]) -> list[tuple[str, str]]:
    return [(name, title) for name, (title, _) in spec.items()]


@never_cache
@staff_member_required
def overview(request: HttpRequest) -> HttpResponse:
    q = query_parse(request)
    data = overview_data(q)
    return _page(request, q, page="overview", data=data,
                 charts=_charts(charts.OVERVIEW_CHARTS),
                 call_columns=presenters.CALLS_COLUMNS, no_calls=NO_CALLS)


@never_cache
@staff_member_required
def routes(request: HttpRequest) -> HttpResponse:
    q = query_parse(request)
    return _page(request, q, page="routes", data=routes_data(q),
                 charts=_charts(charts.ROUTE_PAGE_CHARTS),
                 columns=presenters.ROUTES_COLUMNS, no_calls=NO_CALLS)


@never_cache
@staff_member_required
def backends(request: HttpRequest) -> HttpResponse:
    q = query_parse(request)
    return _page(request, q, page="backends", data=backends_data(q),
                 charts=_charts(charts.BACKEND_PAGE_CHARTS),
                 columns=presenters.BACKENDS_COLUMNS,
                 reconcile_columns=presenters.RECONCILE_COLUMNS, no_calls=NO_CALLS,
                 api_backends="/api/backends")


@never_cache
@staff_member_required
def calls(request: HttpRequest) -> HttpResponse:
    q = query_parse(request)
    p = _calls_params(request)
    data = calls_data(q, p)
    base = request.GET.copy()
    links = {}
    for name, number in (("prev", p["page"] - 1), ("next", p["page"] + 1)):
        if (name == "prev" and number >= 1) or (name == "next" and data["has_next"]):
            base["page"] = str(number)
            links[name] = "?" + base.urlencode()
    return _page(request, q, page="calls", data=data, p=p, links=links,
                 columns=presenters.CALLS_COLUMNS, no_calls=NO_CALLS)


@never_cache
@staff_member_required
def call_detail(request: HttpRequest, pk: int) -> HttpResponse:
    q = query_parse(request)
    call = Call.objects.filter(pk=pk).first()
    if call is None:
        raise Http404("no such call (the log keeps SLUICE_CALL_RETENTION_DAYS days)")
    return _page(request, q, page="call", data={"firing": _firing()}, call=call,
                 sections=presenters.call_detail(call))


@never_cache
@staff_member_required
def alerts(request: HttpRequest) -> HttpResponse:
    q = query_parse(request)
    return _page(request, q, page="alerts", data=alerts_data(q),
                 rules_columns=presenters.RULES_COLUMNS,
                 events_columns=presenters.EVENTS_COLUMNS)


def _json(build: Callable[[Query], dict[str, Any]]) -> Callable[[HttpRequest], JsonResponse]:
    @never_cache
    @staff_member_required
    def view(request: HttpRequest) -> JsonResponse:
        return JsonResponse(build(query_parse(request)))
    return view


data = _json(overview_data)
routes_json = _json(routes_data)
backends_json = _json(backends_data)
alerts_json = _json(alerts_data)


@never_cache
@staff_member_required
def calls_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(calls_data(query_parse(request), _calls_params(request)))
