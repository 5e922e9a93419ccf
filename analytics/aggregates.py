"""The SQL shared by the rollup writer and the readers: each rollup column as an aggregate over
calls, the same column summed over rollup rows, the histogram bucket of a value, and encoded
histograms built and merged by the database (`Concat`, `OnePair`).

One definition of each figure, so that a window read from rollups and one read from raw calls
agree to the last call and the last cent (only percentiles are estimates, and both sides
estimate them from the same buckets).
"""
from __future__ import annotations

from typing import Any

from django.db.models import (
    Aggregate,
    Case,
    Count,
    F,
    Func,
    IntegerField,
    Q,
    Sum,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Cast, Floor, Ln

from analytics import histogram
from analytics.models import CacheOutcome

# Calls → one rollup row: column name → aggregate over analytics.Call.
CALL_SUMS: dict[str, Any] = {
    "requests": Count("id"),
    "errors": Count("id", filter=Q(status_code__gte=500)),
    **{f"cache_{kind.value}": Count("id", filter=Q(cache=kind.value)) for kind in CacheOutcome},
    "down_routed": Count("id", filter=Q(decision="small")),
    "streams": Count("id", filter=Q(stream=True)),
    "retries": Sum("retries"),
    "fallbacks": Count("id", filter=Q(fallback_used=True)),
    "prompt_tokens": Sum("prompt_tokens"),
    "completion_tokens": Sum("completion_tokens"),
    "prompt_tokens_saved": Sum("prompt_tokens_saved"),
    "cost_usd": Sum("cost_usd"),
    "baseline_cost_usd": Sum("baseline_cost_usd"),
    "saved_cache_exact_usd": Sum("saved_cache_usd", filter=Q(cache=CacheOutcome.EXACT)),
    "saved_cache_semantic_usd": Sum("saved_cache_usd", filter=Q(cache=CacheOutcome.SEMANTIC)),
    "saved_routing_usd": Sum("saved_routing_usd"),
    "saved_compression_usd": Sum("saved_compression_usd"),
    "saved_selfhost_usd": Sum("saved_selfhost_usd"),
    "saved_batch_usd": Sum("saved_batch_usd"),
    "latency_ms_sum": Sum("latency_ms"),
    "ttft_count": Count("ttft_ms"),
    "ttft_ms_sum": Sum("ttft_ms"),
    "queue_count": Count("queue_ms"),
    "queue_ms_sum": Sum("queue_ms"),
}

# Rollup rows → the same columns over a longer period or more dimensions.
ROLLUP_SUMS: dict[str, Any] = {name: Sum(name) for name in CALL_SUMS}


def bucket_sql(field: str) -> Case:
    """`histogram.bucket_index` of a column, computed by the database (LN and FLOOR exist in
    PostgreSQL, and Django registers them on SQLite), so a GROUP BY returns counts per bucket
    instead of every value."""
    index = Floor((Ln(F(field)) - Value(histogram.LN_MIN)) / Value(histogram.LN_RATIO)) + 1
    return Case(
        When(**{f"{field}__lt": histogram.MIN_MS}, then=Value(0)),
        When(**{f"{field}__gte": histogram.OVERFLOW_MS}, then=Value(histogram.TOP)),
        default=Cast(index, IntegerField()),
        output_field=IntegerField(),
    )


class Concat(Aggregate):
    """The group's strings joined end to end. Encoded histograms concatenate into the encoding
    of their merge, so a window's rows come back as one string per group, not one row each."""

    function = "STRING_AGG"
    template = "%(function)s(%(distinct)s%(expressions)s, '')"
    output_field = TextField()

    def as_sqlite(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, function="GROUP_CONCAT", **extra_context)


# Rollup rows → their histograms, merged (still encoded).
HISTOGRAMS: dict[str, Any] = {"latency": Concat("latency_hist"), "ttft": Concat("ttft_hist")}


class OnePair(Func):
    """One value's bucket as an encoded pair with a count of 1 (`histogram.encode`'s text),
    so that `Concat` of them is the encoded histogram of a group of calls, in the same pass
    over the calls as their sums."""

    output_field = TextField()

    def as_postgresql(self, compiler, connection, **extra_context):
        template = "lpad(to_hex(%(expressions)s), 4, '0') || '00000001'"
        return self.as_sql(compiler, connection, template=template, **extra_context)

    def as_sqlite(self, compiler, connection, **extra_context):
        # %%%% → %% here → % once Django's SQLite cursor has put in the parameters.
        template = "printf('%%%%04x00000001', %(expressions)s)"
        return self.as_sql(compiler, connection, template=template, **extra_context)


# Calls → their histograms, encoded (a pair per call; `histogram.decode` adds them up).
CALL_HISTOGRAMS: dict[str, Any] = {
    "latency": Concat(OnePair(bucket_sql("latency_ms"))),
    "ttft": Concat(OnePair(bucket_sql("ttft_ms")), filter=Q(ttft_ms__isnull=False)),
}
