"""What the pipeline learns about one call, turned into one record for the buffered writer.

Timing uses perf_counter from the moment the view starts; usage comes from the backend's own
count (the usage chunk or the `usage` field), never from a local guess.
"""
from __future__ import annotations

import time
from datetime import UTC, datetime
from random import getrandbits
from typing import Any

from analytics.recorder import recorder
from proxy.pool import FAILED, NEUTRAL, OK, Lease
from proxy.pricing import call_costs
from proxy.ratelimit import Grant, limits_settle
from proxy.snapshot import KeyInfo, RouteInfo, Snapshot

_BACKEND_FAILURES = frozenset({"upstream_stream_error", "upstream_error", "upstream_timeout"})


class CallLog:
    """Mutable while the call runs; `finish()` hands it to the recorder exactly once."""

    __slots__ = (
        "request_id", "created_at", "started", "endpoint", "key", "route", "requested_model",
        "served_model", "backend", "stream", "status_code", "error_type", "prompt_tokens",
        "completion_tokens", "ttft_ms", "finished", "lease", "retries", "fallback_used",
        "queue_ms", "grant", "cache", "decision", "decision_score", "prompt_tokens_saved",
        "prompt_tokens_sent_estimate", "backend_reason",
    )

    def __init__(self, *, endpoint: str) -> None:
        # 128 random bits from the process's Mersenne Twister (reseeded in every forked
        # worker), not uuid4: its getrandom(2) per request released the interpreter on the
        # hot path, handing it to the writer thread mid-request.
        self.request_id = f"req-{getrandbits(128):032x}"
        self.created_at = datetime.now(UTC)
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
        self.lease: Lease | None = None
        self.retries = 0
        self.fallback_used = False
        self.queue_ms: float | None = None
        self.grant: Grant | None = None
        self.cache = "bypass"  # bypass (not looked up) | miss | exact | semantic | skipped
        self.decision = ""  # small-model routing: small | primary | forced | ""
        self.decision_score: float | None = None
        self.prompt_tokens_saved = 0  # removed by prompt compression
        self.prompt_tokens_sent_estimate = 0  # what compression left, by the same estimate
        self.backend_reason = ""  # why the scheduler picked the backend (proxy/scheduler.py)

    def lease_take(self, lease: Lease, *, fallback: bool) -> None:
        """The call now occupies a slot on `lease.backend` until `finish()` releases it."""
        self.lease = lease
        self.backend, self.served_model = lease.backend.name, lease.backend.model
        self.backend_reason = lease.reason
        self.fallback_used = fallback

    def lease_drop(self) -> None:
        """The attempt failed and released its slot; the backend's name stays on the record
        until another attempt replaces it."""
        self.lease = None

    def queue_wait(self, ms: float) -> None:
        if ms >= 0.05:  # a free slot taken at once is no wait worth recording
            self.queue_ms = (self.queue_ms or 0.0) + ms

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms()

    def usage_take(self, usage: Any) -> None:
        """Accept vLLM's usage objects leniently: chat and completions (`prompt_tokens`,
        `completion_tokens`), responses (`input_tokens`, `output_tokens`), embeddings, score
        and rerank (`prompt_tokens` and/or `total_tokens` only). Odd fields count as zero."""
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        if prompt is None and completion is None:
            prompt = usage.get("total_tokens")
        self.prompt_tokens = _count(prompt)
        self.completion_tokens = _count(completion)

    def fail(self, status: int, error_type: str) -> None:
        self.status_code = status
        self.error_type = error_type

    def finish(self, snapshot: Snapshot) -> None:
        if self.finished:
            return
        self.finished = True
        if self.lease is not None:
            self.lease.release(self._outcome(), latency_ms=self.elapsed_ms(), why=self.error_type)
        if self.grant is not None:
            limits_settle(self.grant, tokens=self.prompt_tokens + self.completion_tokens)
        self._saved_tokens_calibrate()
        recorder.record(self.to_record(snapshot))

    def _saved_tokens_calibrate(self) -> None:
        """Compression counts what it removed by an estimate; the backend counts what it got.
        Scale the removed tokens by the backend's count over the estimate of what was sent,
        so that prompt tokens + removed tokens is the original prompt in the backend's tokens
        (to within the estimate's error from one message to the next)."""
        if self.prompt_tokens_saved and self.prompt_tokens_sent_estimate and self.prompt_tokens:
            self.prompt_tokens_saved = round(
                self.prompt_tokens_saved * self.prompt_tokens / self.prompt_tokens_sent_estimate)

    def _outcome(self) -> str:
        """What the call says of its backend's health, for the circuit breaker."""
        if self.error_type in _BACKEND_FAILURES:
            return FAILED
        if self.status_code == 499 or self.status_code >= 500:
            return NEUTRAL  # the app hung up, or Sluice itself failed
        return OK

    def to_record(self, snapshot: Snapshot) -> dict[str, Any]:
        route = self.route
        served = self.served_model
        return {
            "created_at": self.created_at,
            "request_id": self.request_id,
            "api_key_id": self.key.id if self.key else None,
            "api_key_name": _clip(self.key.name if self.key else "", 100),
            "endpoint": self.endpoint,
            "route": _clip(route.name if route else "", 100),
            "requested_model": _clip(self.requested_model, 200),
            "served_model": _clip(served, 200),
            "backend": _clip(self.backend, 100),
            "backend_reason": self.backend_reason,
            "status_code": self.status_code,
            "error_type": _clip(self.error_type, 64),
            "stream": self.stream,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": round(self.elapsed_ms(), 3),
            "ttft_ms": round(self.ttft_ms, 3) if self.ttft_ms is not None else None,
            "retries": self.retries,
            "fallback_used": self.fallback_used,
            "queue_ms": round(self.queue_ms, 3) if self.queue_ms is not None else None,
            "cache": self.cache,
            "decision": self.decision,
            "decision_score": self.decision_score,
            "prompt_tokens_saved": self.prompt_tokens_saved,
            **call_costs(self, snapshot).as_record(),
        }


def _clip(text: str, length: int) -> str:
    """Fit a column: no NUL (PostgreSQL refuses it in text), no more than its length."""
    return text.replace("\x00", "")[:length]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
