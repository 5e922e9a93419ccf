"""Thin Celery wrappers: each calls one function. `batch_run` goes to SLUICE_BATCH_QUEUE
("batch"), a queue of its own, so that offline work never waits in front of the others;
`batches_recover` is a beat task on the default queue."""
from celery import shared_task

from batch.runner import batch_run as batch_run_service
from batch.services import batches_recover as batches_recover_service


@shared_task(ignore_result=True)
def batch_run(batch_id: int) -> str:
    return batch_run_service(batch_id=batch_id)


@shared_task(ignore_result=True)
def batches_recover() -> int:
    return batches_recover_service()
