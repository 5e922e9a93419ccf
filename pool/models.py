"""The vLLM servers that `python manage.py vllm_pool` runs on the GPU hosts.

One row is one `vllm serve` process. Each host's command runs the enabled rows of its host and
keeps the backend row of the same name (proxy.models.Backend) in the pool while the server
answers `/health`, out of it while it is down.
"""
from __future__ import annotations

import shlex

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class Quantization(models.TextChoices):
    """vLLM's `--quantization`; none lets vLLM read it from the checkpoint's config."""

    NONE = "", "None (as the checkpoint says)"
    AWQ = "awq", "AWQ"
    AWQ_MARLIN = "awq_marlin", "AWQ (Marlin kernels)"
    GPTQ = "gptq", "GPTQ"
    GPTQ_MARLIN = "gptq_marlin", "GPTQ (Marlin kernels)"
    FP8 = "fp8", "FP8"
    BITSANDBYTES = "bitsandbytes", "bitsandbytes"
    COMPRESSED_TENSORS = "compressed-tensors", "compressed-tensors"
    GGUF = "gguf", "GGUF"


def gpus_parse(value: str) -> list[int]:
    """'0, 1' -> [0, 1]; ValueError on anything but comma-separated GPU indexes."""
    gpus = [int(part) for part in value.replace(" ", "").split(",") if part]
    if any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(value)
    return gpus


class PoolServer(models.Model):
    """One vLLM server on one GPU host."""

    name = models.CharField(
        max_length=100, unique=True,
        help_text="Also the name of the backend row it is registered as.",
    )
    host = models.CharField(
        max_length=200, blank=True,
        help_text="The GPU host that runs it: the host name `vllm_pool` runs on, or its "
        "--host-label. Blank: whichever host runs `vllm_pool`.",
    )
    enabled = models.BooleanField(default=True, help_text="Untick to stop running it.")
    model = models.CharField(
        max_length=300,
        help_text="Hugging Face id or local path, e.g. Qwen/Qwen2.5-7B-Instruct-AWQ.",
    )
    served_model_name = models.CharField(
        max_length=200, blank=True,
        help_text="The model name apps and routes use (blank: the model).",
    )
    quantization = models.CharField(
        max_length=32, choices=Quantization.choices, default=Quantization.NONE, blank=True,
    )
    max_model_len = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="--max-model-len: the longest prompt plus answer (blank: the model's own).",
    )
    gpu_memory_utilization = models.FloatField(
        default=0.9, validators=[MinValueValidator(0.01), MaxValueValidator(1.0)],
        help_text="--gpu-memory-utilization: the share of each GPU's memory vLLM may take.",
    )
    max_num_seqs = models.PositiveIntegerField(
        default=256, validators=[MinValueValidator(1)],
        help_text="--max-num-seqs: sequences in one batch; also the backend's max concurrency.",
    )
    tensor_parallel_size = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1)],
        help_text="--tensor-parallel-size: GPUs one copy of the model is split across.",
    )
    gpus = models.CharField(
        max_length=100, blank=True,
        help_text="GPU indexes for CUDA_VISIBLE_DEVICES, e.g. 0,1 (blank: all of them).",
    )
    port = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
    )
    extra_args = models.CharField(
        max_length=1000, blank=True,
        help_text="More `vllm serve` flags, shell-quoted, e.g. --enable-prefix-caching "
        "--kv-cache-dtype fp8.",
    )

    class Meta:
        ordering = ["host", "port"]
        constraints = [
            models.UniqueConstraint(fields=["host", "port"], name="pool_server_host_port"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.served_name} on {self.host or 'any host'}:{self.port})"

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model

    def clean(self) -> None:
        try:
            gpus = gpus_parse(self.gpus)
        except ValueError:
            raise ValidationError({"gpus": "Comma-separated GPU indexes, e.g. 0,1."}) from None
        if gpus and len(gpus) < (self.tensor_parallel_size or 1):
            raise ValidationError({"gpus": "Fewer GPUs than the tensor parallel size."})
        try:
            shlex.split(self.extra_args)
        except ValueError as exc:
            raise ValidationError({"extra_args": f"Not shell-quoted properly: {exc}."}) from None
