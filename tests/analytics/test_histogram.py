"""Fixed log-spaced buckets: every value lies in its bucket, and percentiles of merged counts
are the nearest-rank percentiles of the values within 2 %."""
from __future__ import annotations

import math
import random

import pytest

from analytics import histogram as h


def test_the_exact_reference_is_nearest_rank():
    values = list(range(1, 101))  # 1..100

    assert h.exact_percentile(values, 50) == 50
    assert h.exact_percentile(values, 99) == 99
    assert h.exact_percentile([7.0], 99) == 7.0
    assert h.exact_percentile([], 50) is None


@pytest.mark.parametrize("ms", [0.01, 0.0123, 0.1, 1.0, 7.77, 52.0, 99.9, 1000.0, 123456.7,
                                3_000_000.0])
def test_each_value_lies_in_its_bucket(ms):
    low, high = h.bucket_bounds(h.bucket_index(ms))

    assert low <= ms < high


def test_the_buckets_span_a_hundredth_of_a_ms_to_about_an_hour():
    assert h.bucket_index(0.0) == 0 and h.bucket_index(0.009) == 0
    assert h.bucket_index(0.01) == 1
    assert h.bucket_index(3_500_000.0) < h.TOP
    assert h.bucket_index(3_600_000.0) == h.TOP == h.bucket_index(1e12)
    assert h.SIZE < 2**16  # stored as uint16


def test_an_estimate_is_within_2_percent_of_every_value_of_its_bucket():
    for index in range(1, h.TOP):
        low, high = h.bucket_bounds(index)
        estimate = h.bucket_estimate(index)
        assert estimate / low - 1 < 0.02
        assert 1 - estimate / high < 0.02
    assert h.ERROR_BOUND < 0.02


def test_the_percentile_of_counts_takes_the_nearest_rank():
    # 50 values in the 10 ms bucket, 49 in the 100 ms one, 1 in the 1000 ms one.
    counts = h.from_pairs([(h.bucket_index(10.0), 50), (h.bucket_index(100.0), 49),
                           (h.bucket_index(1000.0), 1)])

    assert h.percentile(counts, 50) == h.bucket_estimate(h.bucket_index(10.0))  # rank 50
    assert h.percentile(counts, 50.5) == h.bucket_estimate(h.bucket_index(100.0))  # rank 51
    assert h.percentile(counts, 99) == h.bucket_estimate(h.bucket_index(100.0))  # rank 99
    assert h.percentile(counts, 99.5) == h.bucket_estimate(h.bucket_index(1000.0))  # rank 100
    assert h.percentile(h.empty(), 50) is None


def test_merging_adds_the_counts_of_each_bucket():
    a = h.from_values([1.0, 1.0, 50.0])
    b = h.from_values([1.0, 900.0])

    merged = h.merge([h.encode(a), h.encode(b), ""])

    assert (merged == a + b).all()
    assert merged[h.bucket_index(1.0)] == 3 and merged.sum() == 5


def test_encoding_keeps_only_the_non_empty_buckets_and_round_trips():
    counts = h.from_values([0.0, 3.0, 3.0, 2e7])

    text = h.encode(counts)

    assert text == f"0000{1:08x}{h.bucket_index(3.0):04x}{2:08x}{h.TOP:04x}{1:08x}"
    assert (h.decode(text) == counts).all()


def _lognormal(rng: random.Random) -> float:
    return rng.lognormvariate(math.log(250), 0.8)


def _bimodal(rng: random.Random) -> float:  # cache hits and misses
    return rng.gauss(2, 0.3) if rng.random() < 0.3 else rng.gauss(800, 120)


DISTRIBUTIONS = {
    "lognormal": _lognormal,
    "exponential": lambda rng: rng.expovariate(1 / 120),
    "uniform": lambda rng: rng.uniform(5, 5000),
    "pareto": lambda rng: 20 * rng.paretovariate(1.5),
    "bimodal": _bimodal,
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("n", [1, 7, 1000, 50_000])
def test_percentiles_of_random_data_are_within_2_percent_of_the_exact_ones(name, n):
    rng = random.Random(f"{name}-{n}")
    values = [max(0.05, DISTRIBUTIONS[name](rng)) for _ in range(n)]
    # Split in three parts, encoded and merged, as the rollups of three minutes would be.
    parts = [h.encode(h.from_values(values[i::3])) for i in range(3)]
    merged = h.merge(parts)

    for p in (50, 95, 99):
        exact = h.exact_percentile(values, p)
        estimate = h.percentile(merged, p)
        assert abs(estimate - exact) / exact < 0.02, (p, exact, estimate)
