"""OpenAI's Files and Batches, stored in the database so that every replica and worker
shares them (file bytes included: a BinaryField, no shared disk needed)."""
from __future__ import annotations

from django.db import models
from django.utils import timezone


class File(models.Model):
    """An uploaded JSONL of requests (purpose "batch"), or a batch's output or error file
    (purpose "batch_output"). Owned by the API key that uploaded it (null: the master key)."""

    public_id = models.CharField(max_length=40, unique=True)
    api_key_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=32)
    bytes = models.PositiveBigIntegerField()
    content = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.public_id} {self.filename}"


class Batch(models.Model):
    class Status(models.TextChoices):
        VALIDATING = "validating"
        FAILED = "failed"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    public_id = models.CharField(max_length=40, unique=True)
    api_key_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    api_key_name = models.CharField(max_length=100, blank=True)
    endpoint = models.CharField(max_length=64)
    completion_window = models.CharField(max_length=8, default="24h")
    input_file_id = models.CharField(max_length=40)
    output_file_id = models.CharField(max_length=40, blank=True)
    error_file_id = models.CharField(max_length=40, blank=True)
    model = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING)
    errors = models.JSONField(null=True, blank=True)  # [{"code", "message", "param", "line"}]
    metadata = models.JSONField(null=True, blank=True)
    request_total = models.PositiveIntegerField(default=0)
    request_completed = models.PositiveIntegerField(default=0)
    request_failed = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    # Saved by the worker with its progress (every second): a stale one means it died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"{self.public_id} {self.status}"
