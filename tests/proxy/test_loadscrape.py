"""Each backend's /metrics, scraped for the scheduler: parsing, hit rates, staleness."""

import pytest

from proxy.loadscrape import load_apply, metrics_parse
from proxy.models import Backend
from proxy.pool import backend_state
from proxy.snapshot import snapshot_current, snapshot_reload
from simulator.process import SimulatorProcess, free_port
from tests.conftest import pool_scrape

VLLM_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.3
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 250.0
vllm:num_requests_running_extra{model_name="m"} 99.0
vllm:generation_tokens_total{model_name="m"} 123.0
"""


def test_the_parser_sums_engines_and_averages_kv_usage():
    load = metrics_parse(VLLM_PAGE)

    assert (load.running, load.waiting) == (5.0, 4.0)
    assert load.kv_usage == pytest.approx(0.4)
    assert (load.prefix_queries, load.prefix_hits) == (1000.0, 250.0)


def test_the_parser_reads_older_vllm_names():
    load = metrics_parse('vllm:gpu_cache_usage_perc{model_name="m"} 0.7\n'
                         'vllm:gpu_prefix_cache_queries_total{model_name="m"} 10\n'
                         'vllm:gpu_prefix_cache_hits_total{model_name="m"} 5\n')

    assert load.kv_usage == pytest.approx(0.7)
    assert (load.prefix_queries, load.prefix_hits) == (10.0, 5.0)


def test_a_page_without_the_series_reads_as_idle():
    load = metrics_parse("# nothing here\nprocess_cpu_seconds_total 3.0\n")

    assert (load.running, load.waiting, load.kv_usage) == (0.0, 0.0, 0.0)
    assert load.prefix_queries is None


@pytest.fixture
def backend(transactional_db):
    def make(url: str):
        Backend.objects.create(name="scraped", base_url=url, model="scrape-model")
        snapshot_reload()
        return next(b for b in snapshot_current().backends if b.name == "scraped")

    return make


def test_the_prefix_hit_rate_is_taken_between_two_scrapes(backend):
    b = backend("http://127.0.0.1:1")
    state = backend_state(b)
    load_apply(state, b, metrics_parse(VLLM_PAGE), now=1.0)
    later = VLLM_PAGE.replace("1000.0", "1400.0").replace("250.0", "550.0")
    load_apply(state, b, metrics_parse(later), now=2.0)

    assert state.prefix_hit_rate == pytest.approx(300 / 400)


def test_a_real_simulators_load_is_scraped(backend):
    with SimulatorProcess(model="scrape-model", ttft_ms=1, tokens_per_s=5000) as sim:
        b = backend(sim.url)
        pool_scrape()

    state = backend_state(b)
    assert state.scraped_at > 0
    assert (state.running, state.waiting) == (0, 0)


def test_a_backend_that_stops_answering_loses_its_figures_once_they_are_stale(backend):
    b = backend(f"http://127.0.0.1:{free_port()}")
    state = backend_state(b)
    load_apply(state, b, metrics_parse(VLLM_PAGE), now=1.0)  # long ago

    pool_scrape(period_s=0.5)

    assert (state.scraped_at, state.waiting, state.kv_usage) == (0.0, 0, 0.0)
