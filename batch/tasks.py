"""Thin Celery wrappers: each calls one function. Batch tasks go to SLUICE_BATCH_QUEUE
("batch"), a queue of their own, so that offline work never waits in front of the others."""
from celery import shared_task

from batch.runner import batch_run as batch_run_service


@shared_task(ignore_result=True)
def batch_run(batch_id: int) -> str:
    return batch_run_service(batch_id=batch_id)
