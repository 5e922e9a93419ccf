"""Thin Celery wrappers: each calls one function."""
from celery import shared_task
from django.conf import settings

from analytics.services import calls_purge_old


@shared_task
def calls_retention() -> int:
    return calls_purge_old(days=settings.SLUICE_CALL_RETENTION_DAYS)
