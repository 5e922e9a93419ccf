"""Writes to the gateway's backend rows for the pool's servers. The gateway's processes pick
them up within SLUICE_CONFIG_REFRESH_S; `update()` fires no save signal, which would only
reload a gateway snapshot this process does not have."""
from __future__ import annotations

from proxy.models import Backend


def backend_register(*, name: str, base_url: str, model: str, max_concurrency: int) -> None:
    """Put the server in the pool: its row (created on the first run) enabled, pointing at it.
    The fields the operator tunes (weight, GPU price, breaker) are left as they are."""
    fields = {"base_url": base_url, "model": model, "max_concurrency": max_concurrency}
    if not Backend.objects.filter(name=name).update(enabled=True, **fields):
        Backend.objects.create(name=name, enabled=True, **fields)


def backend_unregister(*, name: str) -> None:
    """Take the server out of the pool; the row stays, with the operator's settings."""
    Backend.objects.filter(name=name).update(enabled=False)
