"""Thin Celery wrappers: each calls one function."""
from celery import shared_task
from django.conf import settings

from analytics.partitions import partitions_ensure
from analytics.rollups import rollups_purge_old, rollups_run
from analytics.services import calls_purge_old


@shared_task
def calls_retention() -> int:
    return calls_purge_old(days=settings.SLUICE_CALL_RETENTION_DAYS)


@shared_task
def call_partitions_ensure() -> int:
    return len(partitions_ensure(days_ahead=7))


@shared_task
def rollups_update() -> int:
    return rollups_run().minutes


@shared_task
def rollups_retention() -> int:
    return rollups_purge_old(days=settings.SLUICE_ROLLUP_RETENTION_DAYS)
