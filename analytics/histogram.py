"""Latency histograms with fixed log-spaced buckets: P50/P95/P99 of any window from summed
counts, without keeping the values.

Bucket 0 holds [0, MIN_MS); bucket k (1 ≤ k < TOP) holds [MIN_MS·R^(k-1), MIN_MS·R^k); bucket
TOP holds everything from about an hour up. Every bucket's bounds are fixed, so histograms of
different minutes, routes or backends merge by adding their counts, and a percentile of the
merged counts is the same as one over the calls themselves, up to the bucket width: the
estimate is the bucket's geometric midpoint, within √R − 1 ≈ 1.98 % of any value in it (R =
1.04). The percentile's rank is nearest-rank, as `exact_percentile` computes it over values.

Counts are dense int64 arrays of SIZE entries in memory. Stored (`encode`), they are the
non-empty buckets as text: 12 hex digits per bucket, 4 for its index and 8 for its count. A
minute of one route fills a few dozen buckets of ~500; the database writes the same text with
`string_agg`/`group_concat` (`analytics.rollups`); and `merge` adds thousands of stored
histograms with one `bytes.fromhex` and one `numpy.bincount` (text of decimal numbers parses
five times slower, and SQLite cannot build binary strings).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

MIN_MS = 0.01
RATIO = 1.04
MAX_MS = 3_600_000.0  # an hour: no call lives that long (SLUICE_UPSTREAM_TOTAL_TIMEOUT_S)
LN_MIN = math.log(MIN_MS)
LN_RATIO = math.log(RATIO)
TOP = math.ceil((math.log(MAX_MS) - LN_MIN) / LN_RATIO)  # the overflow bucket
SIZE = TOP + 1
OVERFLOW_MS = MIN_MS * RATIO ** (TOP - 1)  # where the overflow bucket starts (~59 min)
ERROR_BOUND = math.sqrt(RATIO) - 1  # the largest relative error of an estimate

Counts = np.ndarray  # int64, shape (SIZE,)
_PAIR = np.dtype([("bucket", ">u2"), ("count", ">u4")])  # as 4 + 8 hex digits


def bucket_index(ms: float) -> int:
    """The bucket of a value in ms; the SQL of `analytics.aggregates.bucket_sql` is the same."""
    if ms < MIN_MS:
        return 0
    if ms >= OVERFLOW_MS:
        return TOP
    return min(TOP, math.floor((math.log(ms) - LN_MIN) / LN_RATIO) + 1)


def bucket_bounds(index: int) -> tuple[float, float]:
    """[low, high) of a bucket, in ms."""
    if index == 0:
        return 0.0, MIN_MS
    if index == TOP:
        return OVERFLOW_MS, math.inf
    return MIN_MS * RATIO ** (index - 1), MIN_MS * RATIO**index


def bucket_estimate(index: int) -> float:
    """The value reported for a bucket: its geometric midpoint, equally far (in ratio) from
    both bounds; 0 for the underflow bucket, the lower bound for the overflow one."""
    if index == 0:
        return 0.0
    if index == TOP:
        return OVERFLOW_MS
    return MIN_MS * RATIO ** (index - 1) * math.sqrt(RATIO)


def nearest_rank(p: float, n: int) -> int:
    """The 1-based rank of percentile `p` (0..100) among `n` values: the smallest rank with at
    least p % of the values at or below it."""
    return max(1, math.ceil(p / 100 * n))


def exact_percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of raw values (what `percentile` estimates); None for none."""
    if not values:
        return None
    return sorted(values)[nearest_rank(p, len(values)) - 1]


def empty() -> Counts:
    return np.zeros(SIZE, dtype=np.int64)


def from_values(values: Iterable[float]) -> Counts:
    counts = empty()
    for value in values:
        counts[bucket_index(value)] += 1
    return counts


def from_pairs(pairs: Iterable[tuple[int, int]]) -> Counts:
    """Counts from (bucket, count) pairs, such as a GROUP BY bucket query returns."""
    counts = empty()
    for index, count in pairs:
        counts[index] += count
    return counts


def percentile(counts: Counts, p: float) -> float | None:
    """Nearest-rank percentile estimated from bucket counts; None for no values."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    if n == 0:
        return None
    index = int(np.searchsorted(cumulative, nearest_rank(p, n)))
    return bucket_estimate(index)


def encode(counts: Counts) -> str:
    """The non-empty buckets, each as 4 hex digits of index and 8 of count."""
    nonzero = np.flatnonzero(counts)
    pairs = np.empty(len(nonzero), dtype=_PAIR)
    pairs["bucket"] = nonzero
    pairs["count"] = counts[nonzero]
    return pairs.tobytes().hex()


def decode(text: str) -> Counts:
    return merge((text,))


def merge(texts: Iterable[str]) -> Counts:
    """The sum of encoded histograms: one concatenation and one bincount for any number."""
    pairs = np.frombuffer(bytes.fromhex("".join(texts)), dtype=_PAIR)
    summed = np.bincount(pairs["bucket"], weights=pairs["count"], minlength=SIZE)
    return summed.astype(np.int64)  # float64 weights are exact below 2**53
