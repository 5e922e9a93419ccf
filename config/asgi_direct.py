"""The proxied endpoints served straight from ASGI: no Django request object, no URL resolver,
no Django response encoder.

Why: at 16 concurrent requests the bench's answers finish, and the next requests arrive, in
bursts of 16, and the gateway's one core serves a burst one request start after another, so
the last request of a burst waits for the CPU of the fifteen before it. Per request, Django's
part of that was an `ASGIRequest` (a META entry for every header, a SpooledTemporaryFile for
the body), the URL resolver, the view wrappers and `send_response` (three async generators and
a dict per streamed chunk). The pipeline reads three things of a request (its method, its
headers and its body) and returns Django responses, which are sent here as they are.

Only the proxied POST endpoints take this way (`PROXIED_PATHS`, exact paths); everything else
under /v1 (models, files, batches, unknown paths) and /health, /ready go through Django's
handler with no middleware (config.asgi.BareASGIHandler), and the rest through the full stack.
Both share `answer_or_hang_up`: the answer races the client's disconnect, as in Django.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestAborted, RequestDataTooBig
from django.http.response import HttpResponseBase

from proxy import api
from proxy.endpoints import (
    CHAT,
    COMPLETIONS,
    DETOKENIZE,
    EMBEDDINGS,
    RERANK,
    RESPONSES,
    SCORE,
    TOKENIZE,
)
from proxy.errors import internal_error

logger = logging.getLogger("sluice.asgi")

View = Callable[[Any], Awaitable[HttpResponseBase]]


# The gateway serves each endpoint at the path vLLM serves it at.
PROXIED_PATHS: dict[str, View] = {
    endpoint.upstream_path: view for endpoint, view in (
        (CHAT, api.chat_completions), (COMPLETIONS, api.completions),
        (EMBEDDINGS, api.embeddings), (RERANK, api.rerank), (SCORE, api.score),
        (TOKENIZE, api.tokenize), (DETOKENIZE, api.detokenize), (RESPONSES, api.responses),
    )
}


class RequestHeaders(dict):
    """A request's headers by lower-case name (ASGI's), looked up in any case as Django's
    `request.headers` is; a header sent more than once is joined with commas, as Django
    does."""

    __slots__ = ()

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class ProxyRequest:
    """What the pipeline reads of a request (the same names as on Django's request)."""

    __slots__ = ("method", "path", "headers", "_body")

    def __init__(self, method: str, path: str, headers: RequestHeaders,
                 body: bytes | None) -> None:
        self.method, self.path, self.headers, self._body = method, path, headers, body

    @property
    def body(self) -> bytes:
        """The body; RequestDataTooBig (as Django raises it) past DATA_UPLOAD_MAX_MEMORY_SIZE."""
        if self._body is None:
            raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")
        return self._body


async def request_read(scope: dict[str, Any], receive: Callable) -> ProxyRequest | None:
    """The request with its whole body, or None if the client left before sending it all."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body")
        if chunk:
            size += len(chunk)
            if limit is None or size <= limit:
                chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = None if limit is not None and size > limit else (
        chunks[0] if len(chunks) == 1 else b"".join(chunks))
    headers = RequestHeaders()
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin1").lower(), raw_value.decode("latin1")
        if name in headers:
            value = f"{dict.__getitem__(headers, name)},{value}"
        dict.__setitem__(headers, name, value)
    return ProxyRequest(scope["method"], scope["path"], headers, body)


async def response_send(response: HttpResponseBase, send: Callable) -> None:
    """Send a Django response over ASGI: a whole body with its Content-Length in one message;
    a stream part by part as the pipeline yields them (its relay's own bytes, when it says
    which generator that is, without Django's per-chunk wrappers)."""
    headers = [(name.encode("latin1"), value.encode("latin1")) for name, value in response.items()]
    for cookie in response.cookies.values():
        headers.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
    if not response.streaming:
        body = response.content
        if not response.has_header("Content-Length"):
            headers.append((b"Content-Length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": headers})
    relay = getattr(response, "relay", None)
    async with aclosing(aiter(response) if relay is None else relay) as parts:
        async for part in parts:
            if part:
                await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body"})


async def proxied_serve(scope: dict[str, Any], receive: Callable, send: Callable,
                        view: View) -> None:
    """One request to a proxied endpoint, from its first body byte to its last answer byte."""
    request = await request_read(scope, receive)
    if request is None:
        return

    async def answer() -> HttpResponseBase:
        try:
            return await view(request)
        except Exception:  # the pipeline answers its own errors; this is a bug of ours
            logger.exception("%s %s failed", request.method, request.path)
            return internal_error().response()

    response = await answer_or_hang_up(receive, answer, lambda r: response_send(r, send))
    if response is not None:
        response_close(response)


async def answer_or_hang_up(
    receive: Callable,
    answer: Callable[[], Awaitable[HttpResponseBase]],
    sender: Callable[[HttpResponseBase], Awaitable[None]],
) -> HttpResponseBase | None:
    """Make the answer (`answer()`, called inside the race) and send it with `sender`, racing
    the client's disconnect as Django's handler does: a hang-up cancels the work (and so the
    upstream request) and gives None; otherwise the response sent, for the caller to close."""
    tasks = [asyncio.create_task(_disconnect_heard(receive)),
             asyncio.create_task(_respond(answer, sender))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # The server gave up on the request (uvicorn's graceful-shutdown timeout at a
        # stop or a deploy): cancel the view as a hang-up would, so that the call is
        # recorded before the lifespan shut-down flushes the log, not lost with the loop.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    listener, processor = tasks
    if listener.done():
        heard = listener.exception()  # marks it retrieved; RequestAborted is the usual end
        if heard is not None and not isinstance(heard, RequestAborted):
            raise heard
    else:
        await _cancelled(listener)
    if not processor.done():
        await _cancelled(processor)
    # Read the outcome without re-raising what was expected: a re-raised exception's
    # traceback holds this frame, which holds the task that holds the exception. That cycle
    # per request (about 50 objects, the request and response among them) was what the
    # garbage collector's young passes spent 5-15 ms freeing at 16 concurrent requests.
    if processor.cancelled():
        return None
    error = processor.exception()
    if error is not None:
        raise error
    return processor.result()


async def _respond(answer: Callable[[], Awaitable[HttpResponseBase]],
                   sender: Callable[[HttpResponseBase], Awaitable[None]]) -> HttpResponseBase:
    response = await answer()
    try:
        await sender(response)
    except asyncio.CancelledError:
        pass  # the client left while the answer was going out
    return response


async def _disconnect_heard(receive: Callable) -> None:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise RequestAborted()
    raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")


async def _cancelled(task: asyncio.Task) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def response_close(response: HttpResponseBase) -> None:
    """`HttpResponseBase.close()` without its `request_finished` signal (whose receivers are
    synchronous database housekeeping the proxy never needs)."""
    for closer in response._resource_closers:
        try:
            closer()
        except Exception:
            logger.exception("closing a response failed")
    response.closed = True
