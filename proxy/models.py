"""Gateway configuration edited in the admin: backends, routes, API keys and prices.

The proxy never reads these tables on a request: `proxy.config` loads them into an in-memory
snapshot that is refreshed in the background.
"""
from __future__ import annotations

import hashlib
import secrets

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
        default=256, help_text="Usually vLLM's --max-num-seqs."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.model} @ {self.base_url})"


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

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} → {self.model}"


class ApiKey(models.Model):
    """An app's key. Only its hash and a display prefix are stored."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=20, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

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
    def issue(cls, *, name: str, plaintext: str | None = None) -> tuple["ApiKey", str]:
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
