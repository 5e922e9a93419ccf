"""What every proxied call left behind: one `Call` row each, written in batches."""
from __future__ import annotations

from django.db import models


class CacheOutcome(models.TextChoices):
    MISS = "miss"
    EXACT = "exact"
    SEMANTIC = "semantic"
    BYPASS = "bypass"  # the app sent Cache-Control: no-cache, or the route caches nothing
    SKIPPED = "skipped"  # the semantic lookup was skipped: the embedder was saturated


class Call(models.Model):
    """One request to /v1/*. `status_code` is the call's outcome: a stream that broke after
    its 200 header is recorded as 502, one the client abandoned as 499."""

    created_at = models.DateTimeField(db_index=True)
    # Unique with created_at (below), not alone: on PostgreSQL the table is partitioned by
    # created_at (analytics/partitions.py), whose unique keys must hold it. A replayed record
    # carries its created_at, so a replay is still skipped.
    request_id = models.CharField(max_length=64)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    api_key_name = models.CharField(max_length=100, blank=True)
    endpoint = models.CharField(max_length=32)
    route = models.CharField(max_length=100, blank=True, db_index=True)
    requested_model = models.CharField(max_length=200, blank=True)
    served_model = models.CharField(max_length=200, blank=True)
    backend = models.CharField(max_length=100, blank=True)
    status_code = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cache = models.CharField(max_length=16, choices=CacheOutcome.choices, default=CacheOutcome.MISS)
    backend_reason = models.CharField(
        max_length=32, blank=True,
        help_text="Why the backend was picked: prefix_hit, session, least_load, bounded_load, "
        "round_robin, only_choice.",
    )
    latency_ms = models.FloatField()
    ttft_ms = models.FloatField(null=True, blank=True)
    retries = models.PositiveSmallIntegerField(
        default=0, help_text="Attempts before the one that served the call (or gave up)."
    )
    queue_ms = models.FloatField(
        null=True, blank=True, help_text="Time spent waiting for a free backend slot."
    )
    fallback_used = models.BooleanField(default=False)
    decision = models.CharField(
        max_length=16, blank=True,
        help_text="Small-model routing: small, primary, forced (x-sluice-no-downroute), or blank.",
    )
    decision_score = models.FloatField(null=True, blank=True)
    prompt_tokens_saved = models.PositiveIntegerField(
        default=0, help_text="Prompt tokens removed by compression."
    )
    cost_usd = models.DecimalField(max_digits=16, decimal_places=10, default=0)
    baseline_cost_usd = models.DecimalField(max_digits=16, decimal_places=10, default=0)
    # baseline − cost, split by cause (they add up to it).
    saved_cache_usd = models.DecimalField(max_digits=16, decimal_places=10, default=0)
    saved_routing_usd = models.DecimalField(max_digits=16, decimal_places=10, default=0)
    saved_compression_usd = models.DecimalField(max_digits=16, decimal_places=10, default=0)
    saved_selfhost_usd = models.DecimalField(max_digits=16, decimal_places=10, default=0)
    saved_batch_usd = models.DecimalField(
        max_digits=16, decimal_places=10, default=0,
        help_text="The batch discount (SLUICE_BATCH_DISCOUNT) on a batch call's cost.",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["route", "created_at"])]
        constraints = [
            # Also the index of lookups by request id (its first column).
            models.UniqueConstraint(fields=["request_id", "created_at"],
                                    name="analytics_call_request_created_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%H:%M:%S} {self.route} {self.status_code}"


class Rollup(models.Model):
    """The calls of one period × route × served model × backend (× key, per minute), summed:
    what the summary and the dashboard read instead of the calls (`analytics.rollups`).

    Every figure is additive, so that any window and any set of dimensions is a SUM over rows:
    counts, tokens and dollars exactly, latency and TTFT through their histograms
    (`analytics.histogram`: sparse bucket counts, merged by adding)."""

    start = models.DateTimeField(help_text="The period's first instant (UTC).")
    route = models.CharField(max_length=100, blank=True)
    served_model = models.CharField(max_length=200, blank=True)
    backend = models.CharField(max_length=100, blank=True)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0, help_text="Calls with a 5xx outcome.")
    errors_by_type = models.JSONField(
        default=dict, blank=True, help_text="Calls per error_type (any status), e.g. timeout."
    )
    cache_exact = models.PositiveIntegerField(default=0)
    cache_semantic = models.PositiveIntegerField(default=0)
    cache_miss = models.PositiveIntegerField(default=0)
    cache_bypass = models.PositiveIntegerField(default=0)
    cache_skipped = models.PositiveIntegerField(default=0)
    down_routed = models.PositiveIntegerField(default=0, help_text='decision == "small".')
    streams = models.PositiveIntegerField(default=0)
    retries = models.PositiveIntegerField(default=0, help_text="Sum of the calls' retries.")
    fallbacks = models.PositiveIntegerField(default=0, help_text="Calls served by a fallback.")
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    prompt_tokens_saved = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    baseline_cost_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    saved_cache_exact_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    saved_cache_semantic_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    saved_routing_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    saved_compression_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    saved_selfhost_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    saved_batch_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    latency_ms_sum = models.FloatField(default=0.0)
    ttft_count = models.PositiveIntegerField(default=0, help_text="Calls with a TTFT.")
    ttft_ms_sum = models.FloatField(default=0.0)
    queue_count = models.PositiveIntegerField(default=0, help_text="Calls with a queue wait.")
    queue_ms_sum = models.FloatField(default=0.0)
    latency_hist = models.TextField(
        default="", blank=True, help_text="Latency histogram (analytics.histogram.encode)."
    )
    ttft_hist = models.TextField(default="", blank=True, help_text="TTFT histogram, the same.")

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} {self.route} {self.backend} {self.requests}"


class MinuteRollup(Rollup):
    """One minute of one key's calls; the current minute's rows hold its calls up to the last
    run's cutoff."""

    api_key_id = models.BigIntegerField(
        default=0, help_text="0: no key (not NULL, so that the row's key is unique)."
    )

    class Meta:
        constraints = [
            # Also the index of every read: windows select on `start` first.
            models.UniqueConstraint(
                fields=["start", "route", "served_model", "backend", "api_key_id"],
                name="analytics_minuterollup_key",
            )
        ]


class HourRollup(Rollup):
    """One hour, summed from its minute rows (the current hour's: up to the last run's cutoff,
    like its current minute's). Not per key: keys
    multiply the rows (here ~50 combinations against ~10 without them, hundreds with many
    keys), and a 7-day window should read a few thousand rows; reads narrowed to a key use the
    minute rows."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["start", "route", "served_model", "backend"],
                name="analytics_hourrollup_key",
            )
        ]


class RollupState(models.Model):
    """The rollup writer's progress: one row (pk=1), locked by each run.

    `watermark_id`: every call with an id at or below it is in the rollups. It trails the
    largest id a run saw by at least the lag (`analytics.rollups.WATERMARK_LAG_S`), because ids
    are taken at insert and rows commit later, not always in id order. `rolled_through`: the
    last run's cutoff, up to which readers take rollups (calls from then on are read raw).
    `hours_through`: the hours before it have their whole HourRollup rows."""

    watermark_id = models.BigIntegerField(default=0)
    pending_id = models.BigIntegerField(default=0)
    pending_at = models.DateTimeField(null=True, blank=True)
    rolled_through = models.DateTimeField(null=True, blank=True)
    hours_through = models.DateTimeField(null=True, blank=True)
