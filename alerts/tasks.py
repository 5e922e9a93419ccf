"""Thin Celery wrappers: each calls one function."""
from celery import shared_task
from django.utils import timezone

from alerts.evaluate import rules_evaluate


@shared_task
def alerts_evaluate() -> int:
    """Evaluate the alert rules now; return how many fired or resolved."""
    result = rules_evaluate(now=timezone.now())
    return result.fired + result.resolved
