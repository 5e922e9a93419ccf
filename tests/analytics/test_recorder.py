"""The call log writer never lets one record the database refuses block the others."""
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from analytics.models import Call
from analytics.recorder import recorder


def row(**fields):
    values = {
        "created_at": datetime.now(UTC), "request_id": "req-" + uuid.uuid4().hex,
        "api_key_id": None, "api_key_name": "tests", "endpoint": "chat/completions",
        "route": "default", "requested_model": "default", "served_model": "m", "backend": "b",
        "status_code": 200, "error_type": "", "stream": False, "prompt_tokens": 1,
        "completion_tokens": 1, "latency_ms": 1.0, "ttft_ms": None, "retries": 0,
        "fallback_used": False, "queue_ms": None, "cost_usd": Decimal(0),
        "baseline_cost_usd": Decimal(0),
    }
    return {**values, **fields}


@pytest.mark.parametrize("bad", [{"backend": "nul\x00byte"}, {"route": "x" * 300},
                                 {"prompt_tokens": -1}])
def test_a_record_the_database_refuses_is_set_aside_and_the_rest_are_written(
        transactional_db, settings, tmp_path, bad):
    settings.SLUICE_JOURNAL_DIR = tmp_path  # where refused rows are kept
    good = [row(), row()]
    refused = row(**bad)
    recorder.flush()

    for r in (good[0], refused, good[1]):
        recorder.record(r)

    assert recorder.flush()
    assert set(Call.objects.values_list("request_id", flat=True)) == {
        r["request_id"] for r in good}
    [path] = tmp_path.glob("refused-*.jsonl")
    assert orjson.loads(path.read_bytes())["request_id"] == refused["request_id"]
    assert recorder.pending_count == 0
