"""Raw-HTTP helpers shared by the simulator tests (plain functions, no fixtures).

Fixtures stay in each test module rather than a conftest so that the modules also run with
``--noconftest`` (the project conftest needs PostgreSQL; these tests need nothing).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def post(url: str, body: Any) -> tuple[int, dict[str, str], bytes]:
    """POST JSON (or raw bytes); return (status, headers, body) without raising on 4xx/5xx."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def post_json(url: str, body: Any) -> tuple[int, Any]:
    """POST JSON and decode the JSON answer: (status, body)."""
    status, _, raw = post(url, body)
    return status, json.loads(raw)


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read()


def sse_events(raw: bytes) -> list[Any]:
    """Parse a ``data:``-only SSE body into JSON events plus the literal "[DONE]"."""
    assert raw.endswith(b"\n\n")
    events = []
    for block in raw.decode().split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def named_sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parse an ``event:``/``data:`` SSE body (the Responses API) into (event, data) pairs."""
    assert raw.endswith(b"\n\n")
    events = []
    for block in raw.decode().split("\n\n")[:-1]:
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: "), block
        events.append((event_line[len("event: "):], json.loads(data_line[len("data: "):])))
    return events
