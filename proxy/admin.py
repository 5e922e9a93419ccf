"""Admin for the gateway's configuration. A new API key's plaintext is shown once, on save."""
from django.contrib import admin, messages
from django.db import models

from proxy.models import ApiKey, Backend, Price, Route


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "base_url", "enabled", "weight", "max_concurrency"]
    list_filter = ["enabled", "model"]
    list_editable = ["enabled"]
    search_fields = ["name", "model", "base_url"]
    fieldsets = [
        (None, {"fields": ["name", "base_url", "model", "enabled", "weight", "max_concurrency",
                           "gpu_usd_per_hour"]}),
        ("Circuit breaker (blank: the SLUICE_BREAKER_* settings)", {
            "fields": ["breaker_failures", "breaker_error_rate", "breaker_cooldown_s"],
        }),
    ]
    # vLLM servers usually sit on a private network without TLS.
    formfield_overrides = {models.URLField: {"assume_scheme": "http"}}


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "baseline_model", "balance_policy", "small_model",
                    "cache_exact", "cache_semantic", "fallbacks", "rpm_limit", "tpm_limit",
                    "enabled"]
    list_editable = ["enabled"]
    search_fields = ["name", "model"]
    fieldsets = [
        (None, {"fields": ["name", "model", "baseline_model", "enabled"]}),
        ("Saving money", {"fields": [
            "cache_exact", "cache_semantic", "cache_ttl_s", "cache_nonzero_temperature",
            "semantic_threshold", "semantic_max_entries", "small_model", "downroute_threshold",
            "prompt_token_budget",
        ]}),
        ("Load balancing", {"fields": ["balance_policy", "balance_weights"]}),
        ("Failover", {"fields": ["fallbacks", "max_attempts"]}),
        ("Timeouts in seconds (blank: the SLUICE_UPSTREAM_*_TIMEOUT_S settings)", {
            "fields": ["connect_timeout_s", "ttfb_timeout_s", "idle_timeout_s",
                       "total_timeout_s"],
        }),
        ("Rate limits, all keys together (blank: none)", {"fields": ["rpm_limit", "tpm_limit"]}),
    ]


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["model", "input_usd_per_1m", "output_usd_per_1m"]
    search_fields = ["model"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "is_active", "rpm_limit", "tpm_limit", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at"]
    filter_horizontal = ["routes"]
    fields = ["name", "prefix", "is_active", "routes", "rpm_limit", "tpm_limit", "created_at"]

    def save_model(self, request, obj, form, change):
        if not change:
            plaintext = obj.key_assign()
            messages.warning(
                request,
                f"New key for {obj.name}: {plaintext} (copy it now: it is not shown again).",
            )
        super().save_model(request, obj, form, change)
