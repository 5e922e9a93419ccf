"""Batch fixtures: a throwaway Celery queue for the tasks the API enqueues."""
from __future__ import annotations

import uuid

import pytest
import redis


@pytest.fixture(autouse=True)
def batch_queue(settings):
    """Tasks a test enqueues go to a queue of their own that no worker reads (the test runs
    them itself, or starts a worker on it), dropped afterwards."""
    queue = settings.SLUICE_BATCH_QUEUE = f"test-batch-{uuid.uuid4().hex[:8]}"
    yield queue
    redis.Redis.from_url(settings.REDIS_URL).delete(queue)
