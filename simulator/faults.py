"""Injected faults, changeable while the simulator runs (``GET``/``POST /sim/faults``).

A gateway test raises a backend's error rate under load and lowers it again, or slows its first
byte past the gateway's timeout, without restarting the process. The CLI flags set the values
at start; the HTTP API changes them afterwards. Each fault draws from its own seeded RNG, so the
sequence of failed requests does not shift when another fault's rate changes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any


class FaultError(ValueError):
    """A ``POST /sim/faults`` body the simulator cannot apply; the message says why."""


def _rate(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise FaultError(f"{key} must be a number in [0, 1], got {value!r}")
    return float(value)


def _status(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise FaultError(f"{key} must be an HTTP error status (400-599), got {value!r}")
    return value


def _delay(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise FaultError(f"{key} must be a number of milliseconds >= 0, got {value!r}")
    return float(value)


_CHECKS = {"error_rate": _rate, "error_status": _status, "mid_stream_error_rate": _rate,
           "ttfb_delay_ms": _delay}


@dataclass
class Faults:
    """The current fault settings plus the RNGs that decide which request each one hits.

    ``error_rate``: fraction of generation requests answered with ``error_status`` before any
    byte. ``mid_stream_error_rate``: fraction of streams cut halfway with an in-stream error.
    ``ttfb_delay_ms``: extra wait before the first byte of every generation request.
    """

    error_rate: float = 0.0
    error_status: int = 500
    mid_stream_error_rate: float = 0.0
    ttfb_delay_ms: float = 0.0
    seed: int = 0
    _error_rng: random.Random = field(init=False, repr=False)
    _break_rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._error_rng = random.Random(self.seed)
        self._break_rng = random.Random(self.seed + 1)

    def as_dict(self) -> dict[str, Any]:
        """The settings as ``GET /sim/faults`` shows them."""
        return {key: getattr(self, key) for key in _CHECKS}

    def update(self, body: Any) -> None:
        """Apply a partial update; all keys are checked before any is applied."""
        if not isinstance(body, dict):
            raise FaultError("The body must be a JSON object")
        unknown = sorted(set(body) - set(_CHECKS))
        if unknown:
            raise FaultError(f"Unknown fault settings {unknown}; known: {sorted(_CHECKS)}")
        checked = {key: _CHECKS[key](key, value) for key, value in body.items()}
        for key, value in checked.items():
            setattr(self, key, value)

    def fail_now(self) -> bool:
        """Whether this request gets the injected error response."""
        return self.error_rate > 0 and self._error_rng.random() < self.error_rate

    def break_now(self) -> bool:
        """Whether this stream gets cut halfway."""
        rate = self.mid_stream_error_rate
        return rate > 0 and self._break_rng.random() < rate


def error_type(status: int) -> str:
    """vLLM-style error ``type`` for a status: 503 -> ``ServiceUnavailableError``."""
    try:
        name = "".join(HTTPStatus(status).phrase.split())
    except ValueError:
        return "InternalServerError" if status >= 500 else "BadRequestError"
    return name if name.endswith("Error") else name + "Error"
