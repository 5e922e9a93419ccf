"""Call rows for tests, written with the ORM as the recorder would; override any field."""
from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from analytics.models import Call


def call_create(*, seconds_ago: float = 5, **fields: Any) -> Call:
    values: dict[str, Any] = {
        "created_at": timezone.now() - timedelta(seconds=seconds_ago),
        "request_id": uuid.uuid4().hex,
        "api_key_name": "tests",
        "endpoint": "chat",
        "route": "chat-default",
        "requested_model": "chat-default",
        "served_model": "qwen2.5-7b",
        "backend": "sim-1",
        "status_code": 200,
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "latency_ms": 120.0,
        "cost_usd": Decimal("0.0001"),
        "baseline_cost_usd": Decimal("0.0003"),
    }
    values.update(fields)
    return Call.objects.create(**values)


def calls_create(count: int, **fields: Any) -> list[Call]:
    return [call_create(**fields) for _ in range(count)]
