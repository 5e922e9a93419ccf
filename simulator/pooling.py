"""Deterministic stand-ins for what a pooling model computes: embeddings and relevance scores.

Nothing here is semantically meaningful; it is stable and cheap, which is what a gateway test
needs. Embeddings are pseudo-random unit vectors seeded by the text, so equal texts embed
equally (a cache can be checked) while similar texts need not be close. Scores are the word
overlap of two texts, so a test can predict a reranking order by reading the documents.
"""

from __future__ import annotations

import array
import base64
import hashlib
import math
import random
import sys
from functools import lru_cache

from simulator import text


@lru_cache(maxsize=4096)
def _full_vector(content: str, dim: int) -> tuple[float, ...]:
    """A Gaussian vector of ``dim`` components seeded by a hash of ``content``."""
    digest = hashlib.blake2b(content.encode(), digest_size=8, person=b"sim-embd").digest()
    rng = random.Random(int.from_bytes(digest, "little"))
    return tuple(rng.gauss(0.0, 1.0) for _ in range(dim))


def embed(content: str, dim: int, dimensions: int | None = None) -> list[float]:
    """The unit-norm embedding of ``content``, rounded to float32 as a GPU model returns it.

    ``dimensions`` keeps the first components and renormalises them, as a Matryoshka model
    does, so a shorter embedding is a prefix direction of the full one.
    """
    vec = _full_vector(content, dim)[: dimensions or dim]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return array.array("f", (x / norm for x in vec)).tolist()


def to_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes in base64: what the openai SDK decodes by default."""
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def overlap(a: str, b: str) -> float:
    """Jaccard overlap of the two texts' word sets, in [0, 1] (1: the same words)."""
    wa, wb = text.words(a), text.words(b)
    union = wa | wb
    return len(wa & wb) / len(union) if union else 0.0
