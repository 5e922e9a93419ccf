"""ASGI entry point: Django, wrapped to handle the lifespan events Django ignores, and to
serve the proxy's hot path without middleware.

Start-up loads the config snapshot, starts the call-log writer and the background loops
(config refresh, health probes, the backends' /metrics scrape, Prometheus gauges).
Shut-down runs after the server has let in-flight requests (streams included) finish: it
stops the loops, closes the upstream client and flushes every buffered call record.

Django runs each classic middleware's hooks through sync_to_async, so the default stack costs
/v1 requests about eleven thread hops each; the bench measured +9 ms TTFT at 16 concurrent
streams from that alone. The proxy needs none of it (no session, CSRF, user or messages), so
/v1/*, /tokenize, /detokenize, /health and /ready go to a Django handler with an empty
middleware chain, and the proxied POST endpoints among them skip Django's request and
response objects altogether (config.asgi_direct).
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from asgiref.sync import sync_to_async  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.core.handlers.asgi import (
    ASGIHandler,  # noqa: E402
    get_script_prefix,  # noqa: E402
)
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402
from django.urls import get_resolver, set_script_prefix  # noqa: E402

django_application = get_asgi_application()

from config.asgi_direct import (  # noqa: E402  (needs the apps loaded)
    PROXIED_PATHS,
    answer_or_hang_up,
    proxied_serve,
    response_close,
)


class BareASGIHandler(ASGIHandler):
    """Django's ASGI handler with no middleware: URL resolution and async views only.

    It also leaves out what Django does per request for synchronous code that these paths do
    not have: a `ThreadSensitiveContext` around the request, the `request_started` and
    `request_finished` signals (their receivers are synchronous database housekeeping, and the
    proxy never touches the database) and `sync_to_async(response.close)`. Inside a fresh
    thread-sensitive context each of those starts a new single-thread executor: every proxied
    request used to start and join a thread and hop to it three times
    (shared/reference/hot-path-profile.md). What stays is Django's: the body read, the
    request object, URL resolution, the view, and the race against the client's disconnect
    that cancels the view (and so the upstream request) when the app hangs up.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)

    async def __call__(self, scope, receive, send) -> None:
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            response_close(error_response)
            return

        try:
            response = await answer_or_hang_up(
                receive, lambda: self.run_get_response(request),
                lambda r: self.send_response(r, send))
        finally:
            body_file.close()
        if response is not None:
            response_close(response)


BARE_PATHS = ("/v1/", "/health", "/ready", "/tokenize", "/detokenize")

from analytics.recorder import recorder  # noqa: E402
from proxy.background import config_refresh_loop, health_loop  # noqa: E402
from proxy.cache import cache_close  # noqa: E402
from proxy.loadscrape import load_scrape_loop  # noqa: E402
from proxy.prom_gauges import prom_gauges_loop  # noqa: E402
from proxy.ratelimit import limits_close  # noqa: E402
from proxy.semantic import semantic_start  # noqa: E402
from proxy.snapshot import snapshot_reload  # noqa: E402
from proxy.upstream import session_close  # noqa: E402

logger = logging.getLogger("sluice.lifespan")


def long_lived_freeze() -> None:
    """Move everything loaded at start-up out of the garbage collector's full passes.

    A full pass walks every tracked object not frozen, holding the interpreter, so it stalls
    every open request at once: with Django's URLconf (ninja, pydantic, the admin, about 26,000
    objects) left to load on the first request, the bench saw 30 ms stalls every ~20 s at
    16 concurrent requests. So the URLconf is imported here, before the freeze, rather than
    by whichever request comes first.
    """
    get_resolver().url_patterns  # noqa: B018  (imports every view module and the ninja API)
    gc.collect()
    gc.freeze()


class LifespanApp:
    def __init__(self, app, bare) -> None:
        self.app = app
        self.bare = bare
        self._tasks: list[asyncio.Task] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            view = PROXIED_PATHS.get(scope["path"])
            if view is not None:
                await proxied_serve(scope, receive, send, view)
            elif scope["path"].startswith(BARE_PATHS):
                await self.bare(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        await sync_to_async(snapshot_reload, thread_sensitive=False)()
        semantic_start()  # loads the embedder in the background if a route needs it
        recorder.start()
        self._tasks = [asyncio.create_task(config_refresh_loop()),
                       asyncio.create_task(health_loop()),
                       asyncio.create_task(load_scrape_loop()),
                       asyncio.create_task(prom_gauges_loop())]
        long_lived_freeze()

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await session_close()
        await limits_close()  # pending token settlements, then the Redis pool
        await cache_close()  # pending cache stores, then the Redis pool
        await sync_to_async(recorder.stop, thread_sensitive=False)()
        logger.info("shut down; call log flushed")


application = LifespanApp(django_application, BareASGIHandler())
