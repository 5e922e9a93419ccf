"""Request files for batch tests, and reading a batch's results back."""
from __future__ import annotations

import io

import orjson


def request_line(custom_id: str, content: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "default", "messages": [{"role": "user", "content": content}],
                     "max_tokens": 8, **body}}


def jsonl(lines: list[dict]) -> io.BytesIO:
    data = io.BytesIO(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    data.name = "requests.jsonl"
    return data


def results(sdk, file_id: str) -> list[dict]:
    return [orjson.loads(line) for line in sdk.files.content(file_id).content.splitlines()]
