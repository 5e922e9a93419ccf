"""The semantic cache: questions that mean the same reuse a stored answer.

(Interface only so far: the embedder, the index and the near-miss check land with the
semantic-cache work. Until then every lookup is a miss and nothing is stored.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.snapshot import RouteInfo


@dataclass(frozen=True, slots=True)
class SemanticHit:
    """A stored answer (the non-streamed JSON body, bytes) and how close its question was."""

    answer: bytes
    similarity: float


MISS = "miss"
SKIPPED = "skipped"  # the embedder was saturated or not loaded: no lookup, recorded as such


async def semantic_lookup(route: RouteInfo, body: dict[str, Any], *,
                          endpoint: str) -> SemanticHit | str:
    """A hit, or MISS / SKIPPED. Never blocks the event loop; never raises."""
    return MISS


def semantic_store(route: RouteInfo, body: dict[str, Any], *, endpoint: str,
                   answer: bytes) -> None:
    """Index a complete, successful answer for later lookups (in the background)."""
    return None
