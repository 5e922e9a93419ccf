"""Admin for the vLLM pool's server definitions; `vllm_pool` reads them when it starts."""
from django.contrib import admin

from pool.models import PoolServer


@admin.register(PoolServer)
class PoolServerAdmin(admin.ModelAdmin):
    list_display = ["name", "host", "port", "served_name", "quantization",
                    "tensor_parallel_size", "gpus", "max_num_seqs", "enabled"]
    list_filter = ["enabled", "host", "quantization"]
    list_editable = ["enabled"]
    search_fields = ["name", "host", "model", "served_model_name"]
    fieldsets = [
        (None, {
            "description": "Run on each GPU host with `python manage.py vllm_pool`; it reads "
            "these rows when it starts, so restart it after an edit.",
            "fields": ["name", "host", "port", "enabled"],
        }),
        ("Model", {"fields": ["model", "served_model_name", "quantization", "max_model_len"]}),
        ("GPUs and batching", {"fields": ["gpus", "tensor_parallel_size",
                                          "gpu_memory_utilization", "max_num_seqs"]}),
        ("More vllm serve flags", {"fields": ["extra_args"]}),
    ]

    @admin.display(description="served model")
    def served_name(self, obj: PoolServer) -> str:
        return obj.served_name
