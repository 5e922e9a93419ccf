from django.contrib import admin

from analytics.models import Call


@admin.register(Call)
class CallAdmin(admin.ModelAdmin):
    """Read-only: calls are written by the proxy, never edited by hand."""

    list_display = ["created_at", "route", "backend", "status_code", "stream", "prompt_tokens",
                    "completion_tokens", "latency_ms", "ttft_ms", "cache"]
    list_filter = ["route", "status_code", "stream", "cache", "backend"]
    search_fields = ["request_id", "route", "api_key_name"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
