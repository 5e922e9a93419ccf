"""Every malformed or failing request gets OpenAI's error shape with the right status."""
import json
import urllib.error
import urllib.request

import openai
import pytest

from proxy.models import Backend, Route
from proxy.snapshot import snapshot_reload
from simulator.process import free_port

MESSAGES = [{"role": "user", "content": "hi"}]


def post(gateway, path: str, body: bytes, key: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(gateway.url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def assert_openai_shape(payload: dict) -> dict:
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["message"]
    return payload["error"]


def test_it_rejects_invalid_json_with_400(gateway, pool):
    status, payload = post(gateway, "/v1/chat/completions", b'{"model": "default", ', pool)

    assert status == 400
    assert assert_openai_shape(payload)["type"] == "invalid_request_error"


def test_it_rejects_a_body_that_is_not_an_object(gateway, pool):
    status, payload = post(gateway, "/v1/chat/completions", b"[1, 2]", pool)

    assert status == 400
    assert_openai_shape(payload)


def test_it_rejects_a_chat_without_messages_naming_the_param(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="default", messages=None)  # type: ignore[arg-type]

    assert caught.value.status_code == 400
    assert caught.value.param == "messages"


def test_it_rejects_a_completion_without_prompt_naming_the_param(gateway, pool):
    status, payload = post(gateway, "/v1/completions", b'{"model": "default"}', pool)

    assert status == 400
    assert assert_openai_shape(payload)["param"] == "prompt"


def test_it_rejects_a_missing_model(gateway, pool):
    status, payload = post(gateway, "/v1/chat/completions",
                           json.dumps({"messages": MESSAGES}).encode(), pool)

    assert status == 400
    assert assert_openai_shape(payload)["param"] == "model"


def test_it_rejects_a_bad_max_tokens(gateway, pool):
    body = json.dumps({"model": "default", "messages": MESSAGES, "max_tokens": "ten"}).encode()

    status, payload = post(gateway, "/v1/chat/completions", body, pool)

    assert status == 400
    assert assert_openai_shape(payload)["param"] == "max_tokens"


def test_it_answers_404_for_an_unknown_model(sdk):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)

    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def test_it_answers_401_without_a_key(gateway, pool):
    status, payload = post(gateway, "/v1/chat/completions",
                           json.dumps({"model": "default", "messages": MESSAGES}).encode(), None)

    assert status == 401
    assert assert_openai_shape(payload)["code"] == "invalid_api_key"


def test_it_answers_401_for_a_wrong_key(gateway, pool):
    bad = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-sluice-wrong", max_retries=0)

    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="default", messages=MESSAGES)

    assert caught.value.status_code == 401


def test_it_answers_401_for_a_revoked_key(gateway, pool):
    from proxy.models import ApiKey

    ApiKey.objects.update(is_active=False)
    snapshot_reload()
    status, payload = post(gateway, "/v1/chat/completions",
                           json.dumps({"model": "default", "messages": MESSAGES}).encode(), pool)

    assert status == 401


def test_it_accepts_the_master_key(gateway, pool, settings):
    settings.SLUICE_MASTER_KEY = "sk-master-for-tests"
    master = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-master-for-tests",
                           max_retries=0)

    answer = master.chat.completions.create(model="default", messages=MESSAGES, max_tokens=2)

    assert answer.usage.completion_tokens == 2


def test_it_answers_502_when_the_backend_is_unreachable(gateway, pool, flush_calls):
    dead_port = free_port()  # nobody listens on it
    Backend.objects.create(name="dead", base_url=f"http://127.0.0.1:{dead_port}",
                           model="dead-model")
    Route.objects.create(name="dead-route", model="dead-model")
    snapshot_reload()

    status, payload = post(gateway, "/v1/chat/completions",
                           json.dumps({"model": "dead-route", "messages": MESSAGES}).encode(), pool)

    assert status == 502
    assert assert_openai_shape(payload)["code"] == "upstream_unreachable"
    [call] = flush_calls()
    assert (call.status_code, call.backend, call.error_type) == (
        502, "dead", "upstream_unreachable")


def test_it_passes_a_backend_refusal_on_in_openai_shape(gateway, pool):
    body = json.dumps({"model": "default", "messages": MESSAGES, "n": 1,
                       "max_tokens": 10**9}).encode()

    status, payload = post(gateway, "/v1/chat/completions", body, pool)

    assert status == 400
    assert_openai_shape(payload)


def test_it_answers_unknown_v1_paths_in_openai_shape(gateway, pool):
    status, payload = post(gateway, "/v1/embeddingz", b"{}", pool)

    assert status == 404
    assert_openai_shape(payload)


def test_it_records_rejected_calls_too(gateway, pool, flush_calls):
    post(gateway, "/v1/chat/completions", b"not json", pool)
    post(gateway, "/v1/chat/completions", b"{}", None)

    calls = flush_calls()
    assert sorted(c.status_code for c in calls) == [400, 401]


def test_it_answers_413_for_a_body_over_the_limit(gateway, pool, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({"model": "default", "messages": [{"role": "user", "content": "x" * 4096}]})

    status, payload = post(gateway, "/v1/chat/completions", body.encode(), pool)

    assert status == 413
    assert assert_openai_shape(payload)["code"] == "request_too_large"


def test_a_failure_inside_sluice_still_answers_in_openai_shape_and_is_recorded(
    gateway, pool, monkeypatch, flush_calls
):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("proxy.pipeline.route_resolve", broken)
    status, payload = post(gateway, "/v1/chat/completions",
                           json.dumps({"model": "default", "messages": MESSAGES}).encode(), pool)

    assert status == 500
    assert assert_openai_shape(payload)["type"] == "server_error"
    [call] = flush_calls()
    assert (call.status_code, call.error_type) == (500, "internal_error")
