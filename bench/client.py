"""Timed chat completions with a raw aiohttp client.

Raw aiohttp rather than the openai SDK: the SDK's own parsing and retries would add noise of
the same size as the gateway's cost. Each path (direct, Sluice) gets its own keep-alive
``ClientSession``, so neither pays for connection set-up after warm-up and neither's pool state
leaks into the other's numbers. Bodies are serialised once, before timing starts.

Every answer is also checked (status 200, non-empty text, ``[DONE]`` at the end of a stream),
because a broken proxy that fails fast would otherwise look like a very quick one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

PROMPT = [{"role": "user", "content": "Write a short note about sluice gates."}]


@dataclass
class Result:
    """One request as the client saw it. Times are seconds from just before the POST."""

    status: int = 0
    total_s: float = 0.0
    ttft_s: float | None = None  # streams: arrival of the first chunk that carries content
    content_events: int = 0
    text_chars: int = 0
    done: bool = False  # streams: the `data: [DONE]` event arrived
    gaps_s: list[float] = field(default_factory=list)  # streams: between content chunks
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.text_chars > 0 and not self.error


@dataclass
class Target:
    """One way to reach the model: a base URL, the model name it expects, a session."""

    name: str
    base_url: str
    model: str
    api_key: str
    concurrency: int = 16
    session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=max(4, self.concurrency * 2), limit_per_host=0,
                                         keepalive_timeout=60, force_close=False)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=120),
            headers={"Authorization": f"Bearer {self.api_key}",
                     "Content-Type": "application/json"},
            auto_decompress=False, skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    @property
    def url(self) -> str:
        return self.base_url + "/v1/chat/completions"

    def body(self, *, stream: bool, max_tokens: int) -> bytes:
        """A fixed-length answer: max_tokens with ignore_eos, as vLLM benchmarks do."""
        return orjson.dumps({"model": self.model, "messages": PROMPT, "stream": stream,
                             "max_tokens": max_tokens, "ignore_eos": True,
                             "temperature": 0.0})


async def stream_timed(target: Target, body: bytes) -> Result:
    """POST a streaming chat completion and read it to the end, timing the first content."""
    assert target.session is not None
    result = Result()
    started = time.perf_counter()
    last_content: float | None = None
    try:
        async with target.session.post(target.url, data=body) as resp:
            result.status = resp.status
            if resp.status != 200:
                result.error = (await resp.read())[:300].decode(errors="replace")
                result.total_s = time.perf_counter() - started
                return result
            pending = b""
            async for chunk in resp.content.iter_any():
                now = time.perf_counter()
                pending += chunk
                cut = pending.rfind(b"\n\n")
                if cut < 0:
                    continue
                block, pending = pending[:cut], pending[cut + 2:]
                if _events_read(block, result):
                    if result.ttft_s is None:
                        result.ttft_s = now - started
                    elif last_content is not None:
                        result.gaps_s.append(now - last_content)
                    last_content = now
            result.total_s = time.perf_counter() - started
            if not result.done:
                result.error = "the stream ended without data: [DONE]"
    except (TimeoutError, aiohttp.ClientError) as exc:
        result.error = repr(exc)
        result.total_s = time.perf_counter() - started
    return result


def _events_read(block: bytes, result: Result) -> bool:
    """Count the content in whole SSE events; return True when any carried text."""
    carried = False
    for event in block.split(b"\n\n"):
        if not event.startswith(b"data:"):
            continue
        data = event[5:].strip()
        if data == b"[DONE]":
            result.done = True
            continue
        payload: Any = orjson.loads(data)
        if "error" in payload:
            result.error = data[:300].decode(errors="replace")
            continue
        for choice in payload.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                result.content_events += 1
                result.text_chars += len(text)
                carried = True
    return carried


async def plain_timed(target: Target, body: bytes) -> Result:
    """POST a non-streaming chat completion; total latency is to the last byte of the body."""
    assert target.session is not None
    result = Result()
    started = time.perf_counter()
    try:
        async with target.session.post(target.url, data=body) as resp:
            result.status = resp.status
            payload = await resp.read()
            result.total_s = time.perf_counter() - started
    except (TimeoutError, aiohttp.ClientError) as exc:
        result.error = repr(exc)
        result.total_s = time.perf_counter() - started
        return result
    if result.status != 200:
        result.error = payload[:300].decode(errors="replace")
        return result
    try:
        text = orjson.loads(payload)["choices"][0]["message"]["content"] or ""
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        result.error = f"unexpected body ({exc!r}): {payload[:200]!r}"
        return result
    result.text_chars = len(text)
    result.content_events = 1
    return result
