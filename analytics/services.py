"""Writes on the call log that are not the recorder's inserts."""
from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from analytics.models import Call
from analytics.partitions import partitioned, partitions_drop


def calls_purge_old(*, days: int, batch: int = 10_000) -> int:
    """Delete up to `batch` calls older than `days`; return how many rows went one by one.

    Bounded so that one run never holds a long lock on a big table; beat runs it often. On
    PostgreSQL the table is partitioned by day: whole days older than `days` are dropped
    instead (logged, not counted), and only DEFAULT's expired rows are deleted one by one."""
    if partitioned():
        return partitions_drop(older_than_days=days, batch=batch).rows
    cutoff = timezone.now() - timedelta(days=days)
    ids = list(Call.objects.filter(created_at__lt=cutoff).values_list("id", flat=True)[:batch])
    if not ids:
        return 0
    deleted, _ = Call.objects.filter(id__in=ids).delete()
    return deleted
