"""The subprocess helper used by tests, ``make run`` and the benchmark."""

import socket
import urllib.request

import pytest

from simulator.process import SimulatorError, SimulatorProcess, free_port


def test_it_finds_a_bindable_port():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_it_starts_on_a_chosen_port_and_stops_on_exit():
    port = free_port()
    with SimulatorProcess(model="m", port=port) as sim:
        assert sim.port == port and sim.url == f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(sim.url + "/health").status == 200
        proc = sim.proc
    assert proc.poll() is not None and not sim.running


def test_it_reports_the_childs_stderr_when_startup_fails():
    with pytest.raises(SimulatorError, match="--no-such-flag"):
        SimulatorProcess(model="m", no_such_flag=1).start()


def test_it_passes_boolean_options_as_on_off_switches():
    cmd = SimulatorProcess(model="m", prefix_caching=False, shared_prefill=True, block_size=32,
                           prefill_tokens_per_s=8000, kv_cache_tokens=65536).command()
    assert "--no-enable-prefix-caching" in cmd and "--shared-prefill" in cmd
    assert cmd[cmd.index("--block-size") + 1] == "32"
    assert cmd[cmd.index("--prefill-tokens-per-s") + 1] == "8000"
    assert cmd[cmd.index("--kv-cache-tokens") + 1] == "65536"
