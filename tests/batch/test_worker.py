"""End to end: the SDK uploads and creates a batch, a real Celery worker takes it from the
real Redis broker and runs it against the real simulators; the SDK reads the results."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from analytics.models import Call
from tests.batch.lines import jsonl, request_line, results

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def worker(transactional_db, tmp_path, batch_queue):
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.fail("the suite runs with REDIS_URL set (make test); the broker must be Redis")
    s = connection.settings_dict
    env = {**os.environ, "SLUICE_VAR_DIR": str(tmp_path), "SLUICE_BATCH_QUEUE": batch_queue,
           "DATABASE_URL": f"postgres://{s['USER'] or 'postgres'}@{s['HOST'] or '127.0.0.1'}:"
                           f"{s['PORT'] or 5432}/{s['NAME']}"}
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "-Q",
         batch_queue, "--loglevel=WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    yield log
    proc.terminate()
    proc.wait(timeout=20)


def test_a_celery_worker_runs_a_batch_the_sdk_created(sdk, worker):
    lines = [request_line(f"req-{i}", f"question {i}") for i in range(4)]
    upload = sdk.files.create(file=jsonl(lines), purpose="batch")
    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                               completion_window="24h")

    deadline = time.monotonic() + 45
    while (batch := sdk.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, worker.read_text()[-3000:]
        time.sleep(0.2)

    assert batch.status == "completed", batch.errors
    assert batch.request_counts.completed == 4
    out = results(sdk, batch.output_file_id)
    assert [line["custom_id"] for line in out] == [f"req-{i}" for i in range(4)]
    calls = Call.objects.filter(endpoint="batch:chat/completions")
    assert sorted(c.request_id for c in calls) == sorted(
        line["response"]["request_id"] for line in out)
    assert all(c.completion_tokens > 0 and c.api_key_name == "tests" for c in calls)
