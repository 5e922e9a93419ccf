"""The one HTTP client to the pool: connection pooling, timeouts and error mapping.

aiohttp rather than httpx: on this kind of machine it adds about half the latency and holds up
under load where httpx's pool does not (shared/reference/proxy-floor.md). Errors raised here
carry whether a retry could help, for the retry/fallback step that builds on this module.
"""
from __future__ import annotations

import asyncio
import weakref

import aiohttp
from django.conf import settings

from proxy.errors import ApiError
from proxy.snapshot import BackendInfo

# One pooled session per event loop (a server has one; tests and tools may run others).
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
    weakref.WeakKeyDictionary()
)

JSON_HEADERS = {"Content-Type": "application/json"}


class UpstreamError(ApiError):
    """The pool failed us. `retryable`: another attempt (on another backend) could succeed."""

    def __init__(self, status: int, message: str, *, code: str, retryable: bool,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, type="upstream_error", code=code, headers=headers)
        self.retryable = retryable


def session_get() -> aiohttp.ClientSession:
    """The running loop's pooled session, created lazily inside that loop."""
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(
            limit=settings.SLUICE_UPSTREAM_MAX_CONNECTIONS,
            limit_per_host=0,
            ttl_dns_cache=300,
            keepalive_timeout=30,
        )
        session = _sessions[loop] = aiohttp.ClientSession(
            connector=connector,
            # No `total` here: aiohttp would then time every read of every stream; the
            # total timeout is enforced by the request path (failover, pipeline) instead.
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=settings.SLUICE_UPSTREAM_CONNECT_TIMEOUT_S,
                sock_read=settings.SLUICE_UPSTREAM_READ_TIMEOUT_S,
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
    return session


async def session_close() -> None:
    """Close the running loop's session (at shutdown)."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None and not session.closed:
        await session.close()


async def upstream_post(backend: BackendInfo, path: str, body: bytes, *,
                        timeout: aiohttp.ClientTimeout | None = None) -> aiohttp.ClientResponse:
    """POST to a backend and return once its status line and headers are in.

    The caller owns the response and must release or close it."""
    url = f"{backend.base_url}{path}"
    options = {} if timeout is None else {"timeout": timeout}  # None: the session's default
    try:
        return await session_get().post(url, data=body, headers=JSON_HEADERS, **options)
    except Exception as exc:
        raise upstream_error(backend, exc) from None


def upstream_error(backend: BackendInfo, exc: BaseException) -> UpstreamError:
    """Map a client exception to an OpenAI-shaped error that says whether to retry. Every one
    here happened before the app got a byte of this attempt, so all are worth retrying."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(
            502, f"Backend {backend.name} is unreachable: {exc.os_error or exc}.",
            code="upstream_unreachable", retryable=True,
        )
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamError(
            504, f"Backend {backend.name} did not answer in time.",
            code="upstream_timeout", retryable=True,
        )
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamError(
            502, f"Backend {backend.name} failed: {exc!r}.", code="upstream_error", retryable=True,
        )
    raise exc


async def body_drain(response: aiohttp.ClientResponse) -> bytes:
    """The whole body of an answer Sluice will not stream (b"" if the backend fails while
    sending it), the connection handed back either way."""
    try:
        return await response.read()
    except (TimeoutError, aiohttp.ClientError):
        return b""
    finally:
        response.release()


async def upstream_health(backend: BackendInfo, *, timeout_s: float = 2.0) -> bool:
    """vLLM answers GET /health with 200 while its engine is up."""
    try:
        async with session_get().get(
            f"{backend.base_url}/health", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            await resp.read()
            return resp.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False
