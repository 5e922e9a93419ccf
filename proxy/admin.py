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
    # vLLM servers usually sit on a private network without TLS.
    formfield_overrides = {models.URLField: {"assume_scheme": "http"}}


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "baseline_model", "enabled"]
    list_editable = ["enabled"]
    search_fields = ["name", "model"]


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ["model", "input_usd_per_1m", "output_usd_per_1m"]
    search_fields = ["model"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at"]

    def save_model(self, request, obj, form, change):
        if not change:
            plaintext = obj.key_assign()
            messages.warning(
                request, f"New key for {obj.name}: {plaintext} (copy it now: it is not shown again)."
            )
        super().save_model(request, obj, form, change)
