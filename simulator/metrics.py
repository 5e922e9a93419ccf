"""vLLM's Prometheus metrics, rendered from plain counters.

The hot path only bumps Python ints and bucket lists (no prometheus_client locks per token);
a custom collector turns them into metric families at scrape time. Names, labels and buckets
follow vLLM's v1 ``PrometheusStatLogger``, so a scraper written for vLLM works unchanged.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from simulator.engine import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISHED_REASONS = ("stop", "length", "abort")

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class Histogram:
    """A lock-free histogram: one bisect and two adds per observation."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for bound, count in zip(self.buckets, self.counts[:-1], strict=True):
            acc += count
            out.append((repr(float(bound)), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


class Stats:
    """Counters and histograms the engine updates as sequences run and finish."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0
        self.success = dict.fromkeys(FINISHED_REASONS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)
        self.e2e = Histogram(LATENCY_BUCKETS)
        self.queue = Histogram(LATENCY_BUCKETS)


class _EngineCollector:
    def __init__(self, engine: Engine, model_name: str) -> None:
        self.engine = engine
        self.labels = [model_name, "0"]

    def collect(self) -> Iterator[Metric]:
        eng, stats, labels = self.engine, self.engine.stats, self.labels
        names = ["model_name", "engine"]
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.",
             eng.scheduler.running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
             eng.scheduler.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
             eng.scheduler.kv_usage),
        ):
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(labels, value)
            yield g
        for name, doc, value in (
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
             stats.preemptions),
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens),
            ("vllm:generation_tokens", "Number of generation tokens processed.",
             stats.generation_tokens),
            ("vllm:prefix_cache_queries",
             "Prefix cache queries, in terms of number of queried tokens.",
             eng.cache.queries if eng.cache is not None else 0),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
             eng.cache.hits if eng.cache is not None else 0),
        ):
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(labels, value)
            yield c
        c = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                labels=[*names, "finished_reason"])
        for reason, value in stats.success.items():
            c.add_metric([*labels, reason], value)
        yield c
        for name, doc, hist in (
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
             stats.ttft),
            ("vllm:time_per_output_token_seconds",
             "Histogram of time per output token in seconds.", stats.tpot),
            ("vllm:e2e_request_latency_seconds",
             "Histogram of e2e request latency in seconds.", stats.e2e),
            ("vllm:request_queue_time_seconds",
             "Histogram of time spent in WAITING phase for request.", stats.queue),
        ):
            h = HistogramMetricFamily(name, doc, labels=names)
            h.add_metric(labels, hist.cumulative(), hist.total)
            yield h


class MetricsRenderer:
    """Owns the per-app registry so several simulators can live in one process (tests)."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(engine, model_name))

    def render(self) -> bytes:
        return generate_latest(self.registry)
