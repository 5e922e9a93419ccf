"""What the pipeline learns about one call, turned into one record for the buffered writer.

Timing uses perf_counter from the moment the view starts; usage comes from the backend's own
count (the usage chunk or the `usage` field), never from a local guess.
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from analytics.recorder import recorder
from proxy.pool import BackendState
from proxy.snapshot import BackendInfo, KeyInfo, PriceInfo, RouteInfo, Snapshot

_MILLION = Decimal(1_000_000)


class CallLog:
    """Mutable while the call runs; `finish()` hands it to the recorder exactly once."""

    __slots__ = (
        "request_id", "created_at", "started", "endpoint", "key", "route", "requested_model",
        "served_model", "backend", "stream", "status_code", "error_type", "prompt_tokens",
        "completion_tokens", "ttft_ms", "finished", "backend_state",
    )

    def __init__(self, *, endpoint: str) -> None:
        self.request_id = "req-" + uuid.uuid4().hex
        self.created_at = datetime.now(timezone.utc)
        self.started = time.perf_counter()
        self.endpoint = endpoint
        self.key: KeyInfo | None = None
        self.route: RouteInfo | None = None
        self.requested_model = ""
        self.served_model = ""
        self.backend = ""
        self.stream = False
        self.status_code = 200
        self.error_type = ""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft_ms: float | None = None
        self.finished = False
        self.backend_state: BackendState | None = None

    def backend_take(self, backend: BackendInfo, state: BackendState) -> None:
        """The call now occupies `backend` until `finish()`: its in-flight count says so."""
        self.backend, self.served_model = backend.name, backend.model
        self.backend_state = state
        state.in_flight += 1

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms()

    def usage_take(self, usage: Any) -> None:
        """Accept vLLM's usage object leniently: missing or odd fields count as zero."""
        if not isinstance(usage, dict):
            return
        self.prompt_tokens = _count(usage.get("prompt_tokens"))
        self.completion_tokens = _count(usage.get("completion_tokens"))

    def fail(self, status: int, error_type: str) -> None:
        self.status_code = status
        self.error_type = error_type

    def finish(self, snapshot: Snapshot) -> None:
        if self.finished:
            return
        self.finished = True
        if self.backend_state is not None:
            self.backend_state.in_flight -= 1
        recorder.record(self.to_record(snapshot))

    def to_record(self, snapshot: Snapshot) -> dict[str, Any]:
        route = self.route
        served = self.served_model
        baseline_model = route.baseline_model if route else served
        return {
            "created_at": self.created_at,
            "request_id": self.request_id,
            "api_key_id": self.key.id if self.key else None,
            "api_key_name": self.key.name if self.key else "",
            "endpoint": self.endpoint,
            "route": route.name if route else "",
            "requested_model": self.requested_model[:200],
            "served_model": served,
            "backend": self.backend,
            "status_code": self.status_code,
            "error_type": self.error_type,
            "stream": self.stream,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": round(self.elapsed_ms(), 3),
            "ttft_ms": round(self.ttft_ms, 3) if self.ttft_ms is not None else None,
            "cost_usd": self._cost(snapshot.prices.get(served)),
            "baseline_cost_usd": self._cost(snapshot.prices.get(baseline_model)),
        }

    def _cost(self, price: PriceInfo | None) -> Decimal:
        if price is None:
            return Decimal(0)
        return (
            self.prompt_tokens * price.input_usd_per_1m
            + self.completion_tokens * price.output_usd_per_1m
        ) / _MILLION


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
