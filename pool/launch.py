"""What to run for a pool server: the `vllm serve` command line and its environment, or the
simulator's in its place (`vllm_pool --simulate`). Pure functions of a PoolServer."""
from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
from pathlib import Path

from pool.models import PoolServer, gpus_parse

# How vllm runs when its console script is not found but the package is importable.
VLLM_MODULE = (sys.executable, "-m", "vllm.entrypoints.cli.main")


def vllm_command() -> list[str] | None:
    """The `vllm` executable: on PATH, or next to this Python (a venv that is not activated),
    or the package run as a module; None when vllm is not installed here."""
    found = shutil.which("vllm") or shutil.which("vllm", path=str(Path(sys.executable).parent))
    if found:
        return [found]
    if importlib.util.find_spec("vllm") is not None:
        return list(VLLM_MODULE)
    return None


def vllm_argv(server: PoolServer, *, vllm: list[str], bind_host: str) -> list[str]:
    """`vllm serve <model> ...` for one server; `extra_args` come last, so they can add any
    flag this does not set."""
    argv = [*vllm, "serve", server.model,
            "--served-model-name", server.served_name,
            "--host", bind_host, "--port", str(server.port),
            "--tensor-parallel-size", str(server.tensor_parallel_size),
            "--gpu-memory-utilization", f"{server.gpu_memory_utilization:g}",
            "--max-num-seqs", str(server.max_num_seqs)]
    if server.quantization:
        argv += ["--quantization", server.quantization]
    if server.max_model_len:
        argv += ["--max-model-len", str(server.max_model_len)]
    return argv + shlex.split(server.extra_args)


def vllm_env(server: PoolServer) -> dict[str, str]:
    """The variables added to this process's environment for the server: its GPUs."""
    gpus = gpus_parse(server.gpus)
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if gpus else {}


def simulator_argv(server: PoolServer, *, bind_host: str) -> list[str]:
    """`python -m simulator` serving the same model name on the same port with the same batch
    and context limits; the GPU flags and `extra_args` have no meaning there."""
    argv = [sys.executable, "-m", "simulator", "--model", server.served_name,
            "--host", bind_host, "--port", str(server.port),
            "--max-num-seqs", str(server.max_num_seqs)]
    if server.max_model_len:
        argv += ["--max-model-len", str(server.max_model_len)]
    return argv
