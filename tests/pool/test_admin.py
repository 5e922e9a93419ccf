"""The pool servers' admin pages render and validate."""
from __future__ import annotations

import pytest

from pool.models import PoolServer

pytestmark = pytest.mark.django_db


def test_the_list_and_the_form_render(admin_client):
    PoolServer.objects.create(name="qwen-1", host="gpu-1", model="Qwen/Qwen2.5-7B-Instruct-AWQ",
                              quantization="awq", port=8000)

    listing = admin_client.get("/admin/pool/poolserver/")
    assert listing.status_code == 200 and b"qwen-1" in listing.content
    assert admin_client.get("/admin/pool/poolserver/add/").status_code == 200


def test_the_form_refuses_fewer_gpus_than_the_tensor_parallel_size(admin_client):
    form = {"name": "big", "host": "gpu-1", "port": "8000", "enabled": "on", "model": "m",
            "quantization": "", "gpu_memory_utilization": "0.9", "max_num_seqs": "256",
            "tensor_parallel_size": "2", "gpus": "0"}

    response = admin_client.post("/admin/pool/poolserver/add/", form)

    assert response.status_code == 200  # the form again, with the error
    assert b"Fewer GPUs than the tensor parallel size" in response.content
    assert not PoolServer.objects.exists()
