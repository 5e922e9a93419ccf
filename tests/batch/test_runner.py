"""A batch run in this process (the function the Celery task calls) against the real
simulators, through the gateway's own request path."""
from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
from django.db import connection

from batch import runner
from batch.models import Batch
from proxy.models import Price
from proxy.snapshot import (
    snapshot_current,
    snapshot_key_accept,
    snapshot_key_forget,
    snapshot_reload,
)
from tests.batch.lines import jsonl, request_line, results
from tests.conftest import SIM_MODEL

pytestmark = pytest.mark.timeout(60)


def _create(sdk, lines: list[dict]):
    upload = sdk.files.create(file=jsonl(lines), purpose="batch")
    return sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                              completion_window="24h")


def _run(batch) -> str:
    return runner.batch_run(batch_id=Batch.objects.get(public_id=batch.id).pk)


def _run_in_thread(batch) -> None:
    try:
        _run(batch)
    finally:
        connection.close()  # the thread's own


def test_a_batch_runs_every_line_and_writes_openais_output_file(sdk, flush_calls):
    Price.objects.create(model=SIM_MODEL, input_usd_per_1m=Decimal("1"),
                         output_usd_per_1m=Decimal("2"))
    snapshot_reload()
    batch = _create(sdk, [request_line(f"req-{i}", f"question {i}") for i in range(5)])

    assert _run(batch) == "completed"

    done = sdk.batches.retrieve(batch.id)
    assert done.status == "completed" and done.error_file_id is None
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (5, 5, 0)
    lines = results(sdk, done.output_file_id)
    assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(5)]
    for line in lines:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"]
    calls = flush_calls()
    assert {c.request_id for c in calls} == {line["response"]["request_id"] for line in lines}
    for call in calls:
        assert call.endpoint == "batch:chat/completions" and call.api_key_name == "tests"
        assert call.prompt_tokens > 0 and call.completion_tokens > 0 and call.cost_usd > 0
    assert done.usage.input_tokens == sum(c.prompt_tokens for c in calls)
    assert done.usage.output_tokens == sum(c.completion_tokens for c in calls)


def test_a_request_the_gateway_refuses_goes_to_the_error_file(sdk):
    batch = _create(sdk, [request_line("good", "hi"), request_line("bad", "hi", max_tokens=-1)])

    _run(batch)

    done = sdk.batches.retrieve(batch.id)
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == (
        "completed", 1, 1)
    assert [line["custom_id"] for line in results(sdk, done.output_file_id)] == ["good"]
    [error] = results(sdk, done.error_file_id)
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "max_tokens"


def test_a_batch_cancelled_before_a_worker_took_it_ends_cancelled(sdk):
    batch = _create(sdk, [request_line("a", "hi")])
    sdk.batches.cancel(batch.id)

    assert _run(batch) == "cancelled"

    done = sdk.batches.retrieve(batch.id)
    assert done.status == "cancelled" and done.cancelled_at and done.output_file_id is None


def test_a_running_batch_stops_when_cancelled(sdk, monkeypatch, settings):
    monkeypatch.setattr(runner, "CHECKPOINT_S", 0.05)
    settings.SLUICE_BATCH_CONCURRENCY = 1
    batch = _create(sdk, [request_line(f"r{i}", "hi", max_tokens=40) for i in range(400)])
    thread = threading.Thread(target=_run_in_thread, args=(batch,))
    thread.start()
    deadline = time.monotonic() + 10
    while sdk.batches.retrieve(batch.id).request_counts.completed < 2:
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.05)

    sdk.batches.cancel(batch.id)
    thread.join(timeout=20)

    done = sdk.batches.retrieve(batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    assert 2 <= done.request_counts.completed < 400
    assert len(results(sdk, done.output_file_id)) == done.request_counts.completed


def test_a_batch_whose_key_was_deleted_fails(sdk, pool):
    from proxy.models import ApiKey

    batch = _create(sdk, [request_line("a", "hi")])
    ApiKey.objects.all().delete()

    assert _run(batch) == "failed"
    assert Batch.objects.get(public_id=batch.id).errors[0]["code"] == "invalid_api_key"


def test_the_runs_token_is_accepted_across_reloads_until_forgotten(pool):
    key = next(iter(snapshot_current().keys_by_hash.values()))

    snapshot_key_accept("token-hash", key)
    snapshot_reload()
    assert snapshot_current().keys_by_hash["token-hash"] == key

    snapshot_key_forget("token-hash")
    assert "token-hash" not in snapshot_current().keys_by_hash
    snapshot_reload()
    assert "token-hash" not in snapshot_current().keys_by_hash


def test_a_finished_run_leaves_no_token_behind(sdk):
    before = dict(snapshot_current().keys_by_hash)

    _run(_create(sdk, [request_line("a", "hi")]))

    assert dict(snapshot_current().keys_by_hash) == before


def test_an_embeddings_batch_runs_on_its_endpoint(sdk, flush_calls):
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "default", "input": f"text {i}"}} for i in range(2)]
    upload = sdk.files.create(file=jsonl(lines), purpose="batch")
    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings",
                               completion_window="24h")

    assert _run(batch) == "completed"

    out = results(sdk, sdk.batches.retrieve(batch.id).output_file_id)
    assert [line["response"]["body"]["data"][0]["object"] for line in out] == ["embedding"] * 2
    assert {c.endpoint for c in flush_calls()} == {"batch:embeddings"}
