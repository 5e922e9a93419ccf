"""Background loops of one web process: config refresh and backend health probes.

They run on the server's event loop, started and stopped by the lifespan wrapper in
config/asgi.py. Database reads happen in a worker thread, never on the loop.
"""
from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.conf import settings

from proxy.pool import health_probe_all
from proxy.snapshot import snapshot_current, snapshot_reload

logger = logging.getLogger("sluice.background")


async def config_refresh_loop() -> None:
    while True:
        await asyncio.sleep(settings.SLUICE_CONFIG_REFRESH_S)
        await sync_to_async(snapshot_reload, thread_sensitive=False)()


async def health_loop() -> None:
    while True:
        try:
            await health_probe_all(snapshot_current())
        except Exception:  # a probe bug must not stop probing
            logger.exception("health probe failed")
        await asyncio.sleep(settings.SLUICE_HEALTH_INTERVAL_S)
