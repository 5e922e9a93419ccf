"""The 24 h window, and batches whose worker died."""
from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from batch import runner
from batch.models import Batch
from batch.services import batches_recover
from tests.batch.lines import jsonl, request_line, results

pytestmark = pytest.mark.timeout(60)


def _create(sdk, count: int = 2) -> Batch:
    upload = sdk.files.create(file=jsonl([request_line(f"r{i}", "hi") for i in range(count)]),
                              purpose="batch")
    created = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")
    return Batch.objects.get(public_id=created.id)


def test_a_batch_past_its_window_expires_and_its_lines_say_so(sdk):
    batch = _create(sdk)
    Batch.objects.filter(pk=batch.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert runner.batch_run(batch_id=batch.pk) == "expired"

    done = sdk.batches.retrieve(batch.public_id)
    assert done.status == "expired" and done.expired_at and done.output_file_id is None
    assert done.request_counts.failed == 2
    lines = results(sdk, done.error_file_id)
    assert [(line["custom_id"], line["error"]["code"]) for line in lines] == [
        ("r0", "batch_expired"), ("r1", "batch_expired")]


def test_a_batch_whose_worker_went_quiet_is_queued_again_and_then_runs(sdk, batch_queue):
    batch = _create(sdk)
    quiet = timezone.now() - timedelta(minutes=10)
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", in_progress_at=quiet,
                                             heartbeat_at=quiet)

    assert batches_recover() == 1

    assert Batch.objects.get(pk=batch.pk).status == "validating"
    assert redis.Redis.from_url(settings.REDIS_URL).llen(batch_queue) == 2  # create, recover
    assert runner.batch_run(batch_id=batch.pk) == "completed"


def test_a_running_batch_with_a_heartbeat_is_left_alone(sdk):
    batch = _create(sdk)
    Batch.objects.filter(pk=batch.pk).update(status="in_progress", heartbeat_at=timezone.now())

    assert batches_recover() == 0


def test_stale_cancels_end_cancelled_and_queued_batches_past_their_window_expire(sdk):
    cancelling, queued = _create(sdk), _create(sdk)
    quiet = timezone.now() - timedelta(minutes=10)
    Batch.objects.filter(pk=cancelling.pk).update(status="cancelling", heartbeat_at=quiet)
    Batch.objects.filter(pk=queued.pk).update(expires_at=quiet)

    assert batches_recover() == 2

    assert Batch.objects.get(pk=cancelling.pk).status == "cancelled"
    assert Batch.objects.get(pk=queued.pk).status == "expired"
