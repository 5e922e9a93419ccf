"""/v1/files and /v1/batches through the official SDK: shapes, validation, ownership."""
from __future__ import annotations

import openai
import pytest

from batch.models import Batch
from proxy.models import ApiKey
from proxy.snapshot import snapshot_reload
from tests.batch.lines import jsonl, request_line

pytestmark = pytest.mark.timeout(60)


def test_a_file_is_uploaded_listed_read_and_deleted(sdk):
    upload = sdk.files.create(file=jsonl([request_line("a", "hi")]), purpose="batch")

    assert upload.id.startswith("file-") and upload.purpose == "batch"
    assert upload.filename == "requests.jsonl" and upload.bytes > 0
    assert sdk.files.retrieve(upload.id).id == upload.id
    assert [f.id for f in sdk.files.list()] == [upload.id]
    assert sdk.files.content(upload.id).content == jsonl([request_line("a", "hi")]).getvalue()
    assert sdk.files.delete(upload.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(upload.id)


def test_a_file_that_is_not_jsonl_is_refused(sdk):
    bad = jsonl([request_line("a", "hi")])
    bad.seek(0, 2)
    bad.write(b"not json\n")
    bad.seek(0)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.files.create(file=bad, purpose="batch")
    assert "Line 2" in caught.value.message


def test_a_batch_is_created_validating_in_openais_shape(sdk):
    upload = sdk.files.create(file=jsonl([request_line("a", "hi"), request_line("b", "yo")]),
                              purpose="batch")

    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={"job": "nightly"})

    assert batch.id.startswith("batch_") and batch.status == "validating"
    assert batch.request_counts.total == 2 and batch.model == "default"
    assert batch.metadata == {"job": "nightly"} and batch.expires_at > batch.created_at
    assert sdk.batches.retrieve(batch.id).status == "validating"
    assert [b.id for b in sdk.batches.list()] == [batch.id]


def test_bad_lines_make_the_batch_fail_with_their_errors(sdk):
    lines = [request_line("a", "hi"), request_line("a", "dup"),
             {**request_line("c", "x"), "url": "/v1/embeddings"}]
    upload = sdk.files.create(file=jsonl(lines), purpose="batch")

    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                               completion_window="24h")

    assert batch.status == "failed" and batch.failed_at
    assert [(e.code, e.line) for e in batch.errors.data] == [
        ("duplicate_custom_id", 2), ("invalid_url", 3)]


def test_unknown_ids_are_404s(sdk):
    with pytest.raises(openai.NotFoundError):
        sdk.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        sdk.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                           completion_window="24h")


def test_a_key_sees_only_its_own_files_and_batches(sdk, gateway):
    upload = sdk.files.create(file=jsonl([request_line("a", "hi")]), purpose="batch")
    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    _, other_key = ApiKey.issue(name="other")
    snapshot_reload()
    other = openai.OpenAI(base_url=gateway.url + "/v1", api_key=other_key, max_retries=0)

    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(upload.id)
    assert list(other.batches.list()) == [] and list(other.files.list()) == []


def test_cancelling_a_queued_batch_asks_the_worker_to_stop(sdk):
    upload = sdk.files.create(file=jsonl([request_line("a", "hi")]), purpose="batch")
    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                               completion_window="24h")

    cancelled = sdk.batches.cancel(batch.id)

    assert cancelled.status == "cancelling" and cancelled.cancelling_at


def test_a_finished_batch_cannot_be_cancelled(sdk):
    upload = sdk.files.create(file=jsonl([request_line("a", "hi")]), purpose="batch")
    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    Batch.objects.filter(public_id=batch.id).update(status="completed")

    with pytest.raises(openai.ConflictError):
        sdk.batches.cancel(batch.id)


def test_requests_without_a_key_are_401s(gateway):
    anonymous = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.batches.list()


def test_a_file_over_the_size_limit_is_a_413(sdk, settings):
    settings.SLUICE_BATCH_MAX_FILE_BYTES = 10

    with pytest.raises(openai.APIStatusError) as caught:
        sdk.files.create(file=jsonl([request_line("a", "hi")]), purpose="batch")
    assert caught.value.status_code == 413
