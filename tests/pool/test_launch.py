"""The command lines `vllm_pool` runs: `vllm serve` from a pool server's admin fields, and the
simulator in its place."""
from __future__ import annotations

import sys

import pytest
from django.core.exceptions import ValidationError

from pool.launch import VLLM_MODULE, simulator_argv, vllm_argv, vllm_command, vllm_env
from pool.models import PoolServer, Quantization


def server(**fields) -> PoolServer:
    defaults = {"name": "qwen-1", "model": "Qwen/Qwen2.5-7B-Instruct-AWQ", "port": 8000}
    return PoolServer(**{**defaults, **fields})


def flag(argv: list[str], name: str) -> str | None:
    """The value after `name`, or None when the flag is absent."""
    return argv[argv.index(name) + 1] if name in argv else None


def test_it_serves_the_model_with_the_batch_and_memory_settings():
    argv = vllm_argv(server(max_model_len=8192, gpu_memory_utilization=0.95, max_num_seqs=128),
                     vllm=["vllm"], bind_host="0.0.0.0")

    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct-AWQ"]
    assert flag(argv, "--max-model-len") == "8192"
    assert flag(argv, "--gpu-memory-utilization") == "0.95"
    assert flag(argv, "--max-num-seqs") == "128"
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("0.0.0.0", "8000")


def test_the_served_name_defaults_to_the_model():
    assert flag(vllm_argv(server(), vllm=["vllm"], bind_host="h"),
                "--served-model-name") == "Qwen/Qwen2.5-7B-Instruct-AWQ"
    assert flag(vllm_argv(server(served_model_name="qwen-7b"), vllm=["vllm"], bind_host="h"),
                "--served-model-name") == "qwen-7b"


@pytest.mark.parametrize("quantization", ["awq", "gptq_marlin", "fp8"])
def test_it_passes_the_quantization(quantization):
    argv = vllm_argv(server(quantization=quantization), vllm=["vllm"], bind_host="h")
    assert flag(argv, "--quantization") == quantization


def test_without_quantization_or_context_length_vllm_reads_them_from_the_checkpoint():
    argv = vllm_argv(server(quantization=Quantization.NONE), vllm=["vllm"], bind_host="h")
    assert "--quantization" not in argv and "--max-model-len" not in argv


def test_tensor_parallel_servers_get_their_gpus_through_the_environment():
    s = server(tensor_parallel_size=2, gpus="2, 3")

    assert flag(vllm_argv(s, vllm=["vllm"], bind_host="h"), "--tensor-parallel-size") == "2"
    assert vllm_env(s) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert vllm_env(server()) == {}  # blank: every GPU of the host


def test_extra_args_come_last_shell_split():
    argv = vllm_argv(server(extra_args="--enable-prefix-caching --chat-template 'a b.jinja'"),
                     vllm=["vllm"], bind_host="h")
    assert argv[-3:] == ["--enable-prefix-caching", "--chat-template", "a b.jinja"]


def test_vllm_runs_as_a_module_when_only_the_package_is_there():
    argv = vllm_argv(server(), vllm=list(VLLM_MODULE), bind_host="h")
    assert argv[:5] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve",
                        "Qwen/Qwen2.5-7B-Instruct-AWQ"]


def test_it_finds_a_vllm_executable_on_the_path(tmp_path, monkeypatch):
    exe = tmp_path / "vllm"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert vllm_command() == [str(exe)]


def test_the_simulator_takes_the_servers_port_model_and_limits():
    s = server(served_model_name="qwen-7b", port=8123, max_num_seqs=64, max_model_len=4096,
               quantization="awq", tensor_parallel_size=2, extra_args="--enforce-eager")
    argv = simulator_argv(s, bind_host="127.0.0.1")

    assert argv[:3] == [sys.executable, "-m", "simulator"]
    assert flag(argv, "--model") == "qwen-7b"
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("127.0.0.1", "8123")
    assert (flag(argv, "--max-num-seqs"), flag(argv, "--max-model-len")) == ("64", "4096")
    assert not {"--quantization", "--tensor-parallel-size", "--enforce-eager"} & set(argv)


def test_the_simulator_accepts_the_argv():
    from simulator.__main__ import parse_args

    args, config = parse_args(simulator_argv(server(max_model_len=2048), bind_host="h")[3:])
    assert (args.port, config.max_num_seqs, config.max_model_len) == (8000, 256, 2048)


@pytest.mark.parametrize("fields, field", [
    ({"gpus": "0,x"}, "gpus"),
    ({"gpus": "0,0"}, "gpus"),
    ({"gpus": "0", "tensor_parallel_size": 2}, "gpus"),
    ({"extra_args": "--chat-template 'unclosed"}, "extra_args"),
])
def test_the_admin_rejects_settings_vllm_could_not_start_with(fields, field):
    with pytest.raises(ValidationError) as caught:
        server(**fields).clean()
    assert field in caught.value.message_dict
