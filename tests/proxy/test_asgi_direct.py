"""The proxied endpoints are served straight from ASGI (config.asgi_direct): the request the
pipeline sees, the answer on the wire, and the paths that still go through Django."""
import asyncio
import json
import socket

import pytest

from config.asgi_direct import PROXIED_PATHS, RequestHeaders, proxied_serve, request_read
from proxy.endpoints import CHAT

MESSAGES = [{"role": "user", "content": "Say hello."}]


def scripted(*messages):
    """An ASGI `receive` that hands out the given messages, then waits forever."""
    queue = list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()

    return receive


def scope(headers=(), method="POST", path="/v1/chat/completions"):
    return {"type": "http", "method": method, "path": path, "headers": list(headers)}


def read(*messages, headers=()):
    return asyncio.run(request_read(scope(headers), scripted(*messages)))


def test_headers_are_found_in_any_case():
    headers = RequestHeaders({"authorization": "Bearer sk-1", "x-sluice-session": "s"})

    assert headers.get("Authorization") == "Bearer sk-1"
    assert headers["X-SLUICE-SESSION"] == "s"
    assert "AUTHORIZATION" in headers
    assert headers.get("Cache-Control") is None
    assert headers.get("Cache-Control", "") == ""


def test_a_header_sent_twice_is_joined_with_a_comma_as_django_does():
    request = read({"type": "http.request", "body": b"{}"},
                   headers=[(b"cache-control", b"no-cache"), (b"cache-control", b"no-store")])

    assert request.headers.get("Cache-Control") == "no-cache,no-store"


def test_a_body_sent_in_several_messages_is_read_whole():
    request = read({"type": "http.request", "body": b'{"model": ', "more_body": True},
                   {"type": "http.request", "body": b"", "more_body": True},
                   {"type": "http.request", "body": b'"default"}'})

    assert json.loads(request.body) == {"model": "default"}
    assert request.method == "POST" and request.path == "/v1/chat/completions"


def test_a_client_gone_before_its_body_ended_is_no_request():
    assert read({"type": "http.request", "body": b"{", "more_body": True},
                {"type": "http.disconnect"}) is None


def test_a_body_over_the_limit_raises_as_djangos_request_does(settings):
    from django.core.exceptions import RequestDataTooBig

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10
    request = read({"type": "http.request", "body": b"x" * 8, "more_body": True},
                   {"type": "http.request", "body": b"x" * 8})

    with pytest.raises(RequestDataTooBig):
        request.body  # noqa: B018


def test_a_view_that_raises_still_answers_an_openai_shaped_500():
    async def broken(request):
        raise RuntimeError("a bug")

    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(proxied_serve(scope(), scripted({"type": "http.request", "body": b"{}"}),
                              send, broken))

    start, body = sent
    assert start["status"] == 500
    assert (b"Content-Type", b"application/json") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] == "internal_error"


def test_only_the_proxied_post_endpoints_take_the_direct_way():
    assert CHAT.upstream_path in PROXIED_PATHS
    assert "/v1/models" not in PROXIED_PATHS and "/v1/files" not in PROXIED_PATHS


def raw_exchange(gateway, request: bytes) -> bytes:
    """One HTTP/1.1 exchange on a fresh socket, the answer as the gateway wrote it."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def chat_post(key: str, **fields) -> bytes:
    """A chat completion POST as a client writes it, lower-case header names included."""
    body = json.dumps({"model": "default", "messages": MESSAGES, "max_tokens": 3,
                       **fields}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n"
            b"authorization: Bearer " + key.encode() + b"\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body


def test_a_whole_answer_goes_out_with_its_content_length(gateway, pool):
    answer = raw_exchange(gateway, chat_post(pool))

    head, _, payload = answer.partition(b"\r\n\r\n")
    lines = head.decode().lower().split("\r\n")
    assert lines[0] == "http/1.1 200 ok"
    assert f"content-length: {len(payload)}" in lines
    assert not any(line.startswith("transfer-encoding") for line in lines)
    assert json.loads(payload)["choices"][0]["message"]["content"]


def test_a_stream_goes_out_chunked_and_ends_with_done(gateway, pool):
    answer = raw_exchange(gateway, chat_post(pool, stream=True))

    head, _, payload = answer.partition(b"\r\n\r\n")
    lines = head.decode().lower().split("\r\n")
    assert "transfer-encoding: chunked" in lines
    assert "content-type: text/event-stream" in lines
    assert b"data: [DONE]\n\n" in payload and payload.endswith(b"0\r\n\r\n")


def test_a_proxied_path_with_a_trailing_slash_is_still_an_openai_shaped_404(gateway, pool):
    answer = raw_exchange(gateway, (
        b"POST /v1/chat/completions/ HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n"
        b"Authorization: Bearer " + pool.encode() + b"\r\nContent-Length: 2\r\n\r\n{}"))

    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404")
    assert b'"unknown_url"' in payload
