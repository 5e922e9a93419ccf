"""A real Celery worker takes the retention task from the real Redis broker and runs it
against the real PostgreSQL."""
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from analytics.models import Call
from analytics.tasks import calls_retention
from tests.factories import call_create

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker(transactional_db, tmp_path):
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.fail("the suite runs with REDIS_URL set (make test); the broker must be Redis")
    queue = f"test-{uuid.uuid4().hex[:8]}"  # no other worker on this Redis takes our task
    s = connection.settings_dict
    env = {**os.environ, "SLUICE_VAR_DIR": str(tmp_path), "SLUICE_CALL_RETENTION_DAYS": "7",
           "DATABASE_URL": f"postgres://{s['USER'] or 'postgres'}@{s['HOST'] or '127.0.0.1'}:"
                           f"{s['PORT'] or 5432}/{s['NAME']}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "-Q", queue,
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "worker.log").open("wb"))
    yield queue
    proc.terminate()
    proc.wait(timeout=20)


def test_the_worker_runs_the_retention_task_sent_through_redis(worker):
    call_create(created_at=timezone.now() - timedelta(days=30), request_id="old")
    call_create(request_id="new")

    calls_retention.apply_async(queue=worker)

    deadline = time.monotonic() + 30
    while Call.objects.filter(request_id="old").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(Call.objects.values_list("request_id", flat=True)) == ["new"]
