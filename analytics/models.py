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
    request_id = models.CharField(max_length=64, unique=True)
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

    def __str__(self) -> str:
        return f"{self.created_at:%H:%M:%S} {self.route} {self.status_code}"
