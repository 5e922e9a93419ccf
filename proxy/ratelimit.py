"""Rate limits per API key and per route: requests and tokens per minute.

(Interface only so far: the implementation lands with the rate-limit work.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.snapshot import KeyInfo, RouteInfo


@dataclass(slots=True)
class Grant:
    """What one request took from its limits, settled with its real usage at the end."""

    headers: dict[str, str] = field(default_factory=dict)


def tokens_estimate(body: dict[str, Any], *, endpoint: str) -> int:
    """Tokens a request will likely cost, before the backend has counted them."""
    return 0


async def limits_take(key: KeyInfo, route: RouteInfo, *, tokens: int) -> Grant | None:
    """Take one request and `tokens` from the key's and the route's limits, or raise a 429
    `ApiError` (with Retry-After and x-ratelimit-* headers). None when nothing limits."""
    return None


def limits_settle(grant: Grant | None, *, tokens: int) -> None:
    """Correct the token estimate with the call's real usage (never blocks the caller)."""
    return None
