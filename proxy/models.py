"""Gateway configuration edited in the admin: backends, routes, API keys and prices.

The proxy never reads these tables on a request: `proxy.config` loads them into an in-memory
snapshot that is refreshed in the background.
"""
from __future__ import annotations

import hashlib
import secrets

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

KEY_PREFIX = "sk-sluice-"


def key_hash(plaintext: str) -> str:
    """Keys are stored as SHA-256 digests: a leaked table does not leak usable keys."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


class Backend(models.Model):
    """One vLLM server (or simulator) of the pool, serving one model."""

    name = models.CharField(max_length=100, unique=True)
    base_url = models.URLField(help_text="e.g. http://10.0.0.5:8000 (without /v1)")
    model = models.CharField(max_length=200, help_text="The model name this server serves.")
    enabled = models.BooleanField(default=True)
    weight = models.PositiveIntegerField(default=1)
    max_concurrency = models.PositiveIntegerField(
        default=256,
        help_text="Requests Sluice sends it at once (usually vLLM's --max-num-seqs); "
        "the rest wait in Sluice's queue.",
    )
    gpu_usd_per_hour = models.DecimalField(
        max_digits=10, decimal_places=4, null=True, blank=True,
        help_text="What this self-hosted server costs per hour (GPU rental or amortised). "
        "Blank: its model's hosted price is used instead.",
    )
    # Circuit-breaker thresholds; blank means the SLUICE_BREAKER_* setting.
    breaker_failures = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Consecutive failures that open the breaker (blank: SLUICE_BREAKER_FAILURES).",
    )
    breaker_error_rate = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Error rate over the sliding window that opens the breaker, 0-1 "
        "(blank: SLUICE_BREAKER_ERROR_RATE).",
    )
    breaker_cooldown_s = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.0)],
        help_text="Seconds an open breaker waits before letting one probe request through "
        "(blank: SLUICE_BREAKER_COOLDOWN_S).",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.model} @ {self.base_url})"


class BalancePolicy(models.TextChoices):
    """How a route picks among the backends of a model that may take the request."""

    ROUND_ROBIN = "round_robin", "Round robin: each in turn"
    LEAST_LOAD = "least_load", "Least load: in-flight, waiting and KV-cache usage"
    PREFIX_AWARE = "prefix_aware", "Prefix-aware: the backend that holds the prompt's prefix"
    SESSION = "session", "Session: the same user / x-session-id sticks to one backend"


class Route(models.Model):
    """An alias that apps put in the `model` field; it sends them to a served model."""

    name = models.CharField(max_length=100, unique=True, help_text="What apps send as `model`.")
    model = models.CharField(max_length=200, help_text="The served model it routes to.")
    baseline_model = models.CharField(
        max_length=200,
        blank=True,
        help_text="The model this route's savings are measured against (blank: its own model).",
    )
    enabled = models.BooleanField(default=True)
    fallbacks = models.CharField(
        max_length=500, blank=True,
        help_text="Comma-separated routes or models to try, in order, when every backend of "
        "this route's model is failing or open (e.g. chat-small, qwen2.5-1.5b).",
    )
    max_attempts = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Attempts per model of the chain before the first byte "
        "(blank: SLUICE_RETRY_MAX_ATTEMPTS).",
    )
    connect_timeout_s = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.001)],
        help_text="Blank: SLUICE_UPSTREAM_CONNECT_TIMEOUT_S.",
    )
    ttfb_timeout_s = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.001)],
        help_text="Time to the backend's first byte (a stream's first event); an expired one "
        "is retried. Blank: SLUICE_UPSTREAM_TTFB_TIMEOUT_S.",
    )
    idle_timeout_s = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.001)],
        help_text="Longest silence between two reads. Blank: SLUICE_UPSTREAM_READ_TIMEOUT_S.",
    )
    total_timeout_s = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.001)],
        help_text="Whole call, all attempts. Blank: SLUICE_UPSTREAM_TOTAL_TIMEOUT_S.",
    )
    # Cost steps (issue 6): caches, small-model routing, prompt compression.
    cache_exact = models.BooleanField(
        default=False, help_text="Serve repeated identical requests from the exact cache."
    )
    cache_semantic = models.BooleanField(
        default=False, help_text="Serve questions that mean the same from the semantic cache."
    )
    cache_ttl_s = models.PositiveIntegerField(
        default=3600, help_text="How long a cached answer may be served, in seconds."
    )
    cache_nonzero_temperature = models.BooleanField(
        default=False,
        help_text="Also cache requests sampled with temperature > 0 (their answers vary).",
    )
    semantic_threshold = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Cosine similarity a candidate must reach (blank: SLUICE_SEMANTIC_THRESHOLD).",
    )
    semantic_max_entries = models.PositiveIntegerField(
        default=10000, help_text="Questions kept in this route's semantic index."
    )
    small_model = models.CharField(
        max_length=200, blank=True,
        help_text="A cheaper route or model for easy requests (blank: no down-routing).",
    )
    downroute_threshold = models.FloatField(
        default=0.5, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Requests whose difficulty score is below this go to the small model.",
    )
    prompt_token_budget = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Longest prompt in tokens; longer conversations lose their oldest turns "
        "(the system prompt and the latest turns are kept). Blank: no compression.",
    )
    balance_policy = models.CharField(
        max_length=16, choices=BalancePolicy.choices, default=BalancePolicy.PREFIX_AWARE,
        help_text="How a backend is picked. Prefix-aware and session fall back to the least "
        "loaded backend when theirs is overloaded (bounded load).",
    )
    balance_weights = models.CharField(
        max_length=200, blank=True,
        help_text="Scorer weights, e.g. 'prefix=1, load=1, kv=0.5, session=2' "
        "(blank: the policy's defaults; see the README).",
    )
    rpm_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute on this route, all keys together."
    )
    tpm_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens per minute on this route, all keys together."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} → {self.model}"

    def fallback_names(self) -> list[str]:
        return [name.strip() for name in self.fallbacks.split(",") if name.strip()]

    def clean(self) -> None:
        if self.name in self.fallback_names() or self.model in self.fallback_names():
            raise ValidationError({"fallbacks": "A route cannot fall back to itself."})
        from proxy.scheduler import WeightsError, weights_parse

        try:
            weights_parse(self.balance_weights)
        except WeightsError as exc:
            raise ValidationError({"balance_weights": str(exc)}) from None


class ApiKey(models.Model):
    """An app's key. Only its hash and a display prefix are stored."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=20, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    is_active = models.BooleanField(default=True, help_text="Untick to revoke the key (401).")
    created_at = models.DateTimeField(auto_now_add=True)
    routes = models.ManyToManyField(
        Route, blank=True, related_name="keys",
        help_text="The routes this key may use (403 otherwise). None selected: every route "
        "and served model.",
    )
    rpm_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute (blank: SLUICE_KEY_RPM_LIMIT)."
    )
    tpm_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens per minute (blank: SLUICE_KEY_TPM_LIMIT)."
    )

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def key_assign(self, plaintext: str | None = None) -> str:
        """Give this key a fresh secret; return the plaintext, which is shown only this once."""
        plaintext = plaintext or KEY_PREFIX + secrets.token_urlsafe(24)
        self.prefix = plaintext[: len(KEY_PREFIX) + 4]
        self.key_hash = key_hash(plaintext)
        return plaintext

    @classmethod
    def issue(cls, *, name: str, plaintext: str | None = None) -> tuple[ApiKey, str]:
        key = cls(name=name)
        plaintext = key.key_assign(plaintext)
        key.save()
        return key, plaintext


class Price(models.Model):
    """Hosted price per million tokens of a model: what the same tokens would cost elsewhere."""

    model = models.CharField(max_length=200, unique=True)
    input_usd_per_1m = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    output_usd_per_1m = models.DecimalField(max_digits=12, decimal_places=6, default=0)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return f"{self.model}: ${self.input_usd_per_1m} in / ${self.output_usd_per_1m} out per 1M"
