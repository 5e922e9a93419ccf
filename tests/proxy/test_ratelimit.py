"""Rate limits: token-bucket semantics on both stores (real Redis and in-process), the token
estimate, and the limits seen through the gateway by the official SDK."""
from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import openai
import pytest
import redis
from django.conf import settings

from proxy import ratelimit
from proxy.errors import ApiError
from proxy.ratelimit import (
    LocalBuckets,
    RedisBuckets,
    duration_text,
    limits_settle,
    limits_take,
    tokens_estimate,
)
from proxy.snapshot import KeyInfo, RouteInfo
from simulator.process import free_port

ROUTE = RouteInfo(name="r", model="m", baseline_model="m")


def key(**limits: int) -> KeyInfo:
    return KeyInfo(id=7, name="k", **limits)


def route(**limits: int) -> RouteInfo:
    return RouteInfo(name="r", model="m", baseline_model="m", **limits)


class Harness:
    """One store under test, swapped in as the process's buckets. `advance` moves the injected
    clock of the in-process store, and really sleeps for Redis, whose clock is its own."""

    def __init__(self, store, clock: list[float] | None = None) -> None:
        self.store, self.clock = store, clock

    @property
    def exact(self) -> bool:
        return self.clock is not None

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock[0] += seconds
        else:
            await asyncio.sleep(seconds)

    async def refused(self, k: KeyInfo, r: RouteInfo, *, tokens: int) -> ApiError:
        with pytest.raises(ApiError) as caught:
            await limits_take(k, r, tokens=tokens)
        return caught.value

    def run(self, scenario: Callable[[], Awaitable[None]]) -> None:
        async def main() -> None:
            try:
                await scenario()
            finally:
                if isinstance(self.store, RedisBuckets):
                    await self.store.close()

        asyncio.run(main())


@pytest.fixture
def redis_prefix():
    """A prefix of this test's own, and its keys deleted afterwards."""
    prefix = f"sluice:rl:test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(settings.REDIS_URL)
    names = list(client.scan_iter(match=prefix + "*"))
    if names:
        client.delete(*names)
    client.close()


@pytest.fixture(params=["local", "redis"])
def harness(request, redis_prefix):
    if request.param == "local":
        clock = [1000.0]
        store = LocalBuckets(clock=lambda: clock[0])
        h = Harness(store, clock)
    else:
        h = Harness(RedisBuckets(settings.REDIS_URL, prefix=redis_prefix))
    old = ratelimit.buckets_set(h.store)
    yield h
    ratelimit.buckets_set(old)


def near(value: float, expected: float, h: Harness, *, slack: float = 0.02) -> bool:
    """Exact on the injected clock; on Redis' real clock a little time has passed, which only
    ever lowers a wait or raises a level, by at most `slack` (relative)."""
    if h.exact:
        return value == pytest.approx(expected)
    return expected * (1 - slack) - 1 <= value <= expected * (1 + slack) + 1


# --- bucket semantics, the same table for both stores ------------------------------------------
def test_it_allows_up_to_the_rpm_limit_then_refuses_with_retry_after(harness):
    k = key(rpm_limit=3)

    async def scenario():
        grants = [await limits_take(k, ROUTE, tokens=0) for _ in range(3)]
        error = await harness.refused(k, ROUTE, tokens=0)

        assert [g.headers["x-ratelimit-remaining-requests"] for g in grants] == ["2", "1", "0"]
        assert grants[0].headers["x-ratelimit-limit-requests"] == "3"
        assert grants[0].headers["x-ratelimit-reset-requests"] in ("20s", "19.999s")
        assert (error.status, error.type, error.code) == (429, "requests", "rate_limit_exceeded")
        assert error.headers["Retry-After"] == "20"  # one request back at 3/min
        assert near(int(error.headers["retry-after-ms"]), 20_000, harness)
        assert error.headers["x-ratelimit-remaining-requests"] == "0"
        assert re.fullmatch(
            r"Rate limit reached for key 'k' on requests per min \(RPM\): Limit 3, Used 3, "
            r"Requested 1\. Please try again in (20|19\.9\d\d)s\.", error.message)

    harness.run(scenario)


def test_it_refills_continuously(harness):
    k = key(tpm_limit=600)  # 10 tokens a second

    async def scenario():
        await limits_take(k, ROUTE, tokens=600)
        error = await harness.refused(k, ROUTE, tokens=1)
        assert near(int(error.headers["retry-after-ms"]), 100, harness, slack=0.2)
        assert error.headers["Retry-After"] == "1"  # whole seconds, never 0

        await harness.advance(0.5)

        grant = await limits_take(k, ROUTE, tokens=5)
        assert grant.headers["x-ratelimit-remaining-tokens"] == "0"
        error = await harness.refused(k, ROUTE, tokens=2)
        assert error.type == "tokens"

    harness.run(scenario)


def test_settling_refunds_unused_tokens(harness):
    k = key(tpm_limit=100)

    async def scenario():
        grant = await limits_take(k, ROUTE, tokens=80)
        limits_settle(grant, tokens=30)
        await harness.store.flush()

        after = await limits_take(k, ROUTE, tokens=70)  # 100 - 80 + 50 refunded
        assert after.headers["x-ratelimit-remaining-tokens"] == "0"

    harness.run(scenario)


def test_settling_charges_extra_usage_as_debt_to_wait_out(harness):
    k = key(tpm_limit=120)  # 2 tokens a second

    async def scenario():
        grant = await limits_take(k, ROUTE, tokens=10)
        limits_settle(grant, tokens=170)  # 50 more than the bucket holds
        await harness.store.flush()

        error = await harness.refused(k, ROUTE, tokens=0)
        assert near(int(error.headers["retry-after-ms"]), 25_000, harness)  # 50 at 2/s
        assert "Used 170, Requested 0" in error.message

    harness.run(scenario)


def test_a_grant_settles_once(harness):
    k = key(tpm_limit=100)

    async def scenario():
        grant = await limits_take(k, ROUTE, tokens=50)
        limits_settle(grant, tokens=60)  # 10 more: 40 left
        limits_settle(grant, tokens=60)  # ignored: 30 left if it were not
        limits_settle(None, tokens=10)
        await harness.store.flush()

        assert (await limits_take(k, ROUTE, tokens=40)).headers[
            "x-ratelimit-remaining-tokens"] == "0"

    harness.run(scenario)


def test_a_refused_request_takes_nothing_from_the_other_buckets(harness):
    k, r = key(rpm_limit=10), route(tpm_limit=100)

    async def scenario():
        await limits_take(k, r, tokens=100)
        error = await harness.refused(k, r, tokens=50)  # the route's tokens refuse it
        assert error.type == "tokens"
        assert "for route 'r' on tokens per min (TPM)" in error.message
        assert error.headers["x-ratelimit-remaining-requests"] == "9"

        grant = await limits_take(k, r, tokens=0)
        assert grant.headers["x-ratelimit-remaining-requests"] == "8"

    harness.run(scenario)


def test_a_request_refused_for_requests_takes_no_tokens(harness):
    k, r = key(rpm_limit=1), route(tpm_limit=100)

    async def scenario():
        await limits_take(k, r, tokens=10)
        error = await harness.refused(k, r, tokens=10)
        assert error.type == "requests"
        assert error.headers["x-ratelimit-remaining-tokens"] == "90"

    harness.run(scenario)


def test_key_and_route_limits_both_apply_and_headers_report_the_tightest(harness):
    k, r = key(rpm_limit=10, tpm_limit=1000), route(rpm_limit=2, tpm_limit=5000)

    async def scenario():
        grant = await limits_take(k, r, tokens=100)
        assert grant.headers == {
            "x-ratelimit-limit-requests": "2",  # the route's
            "x-ratelimit-remaining-requests": "1",
            "x-ratelimit-reset-requests": grant.headers["x-ratelimit-reset-requests"],
            "x-ratelimit-limit-tokens": "1000",  # the key's
            "x-ratelimit-remaining-tokens": "900",
            "x-ratelimit-reset-tokens": grant.headers["x-ratelimit-reset-tokens"],
        }
        await limits_take(k, r, tokens=100)
        error = await harness.refused(k, r, tokens=100)
        assert "for route 'r' on requests per min (RPM)" in error.message

    harness.run(scenario)


def test_the_longest_wait_names_the_refusal_and_sets_retry_after(harness):
    k, r = key(rpm_limit=1), route(tpm_limit=60)  # 1 request back in 60 s, 1 token per s

    async def scenario():
        await limits_take(k, r, tokens=60)
        error = await harness.refused(k, r, tokens=30)  # both refuse: 60 s and 30 s
        assert error.type == "requests"
        assert error.headers["Retry-After"] == "60"

    harness.run(scenario)


def test_a_request_larger_than_the_bucket_is_refused_without_a_retry(harness):
    k = key(tpm_limit=100)

    async def scenario():
        error = await harness.refused(k, ROUTE, tokens=101)
        assert (error.status, error.type) == (429, "tokens")
        assert error.message.startswith("Request too large for key 'k' on tokens per min (TPM)")
        assert error.headers == {"x-should-retry": "false"}
        assert await limits_take(k, ROUTE, tokens=100)  # and it took nothing

    harness.run(scenario)


def test_nothing_limited_means_no_grant_and_no_io():
    store = RedisBuckets(f"redis://127.0.0.1:{free_port()}/0")
    old = ratelimit.buckets_set(store)
    try:
        assert asyncio.run(limits_take(key(), ROUTE, tokens=10**6)) is None
    finally:
        ratelimit.buckets_set(old)
    assert len(store._clients) == 0  # never even made a client


# --- Redis specifics ---------------------------------------------------------------------------
def test_one_redis_bucket_per_key_and_route_expiring_once_full(redis_prefix):
    store = RedisBuckets(settings.REDIS_URL, prefix=redis_prefix)
    old = ratelimit.buckets_set(store)
    try:
        asyncio.run(_take_and_close(store, key(rpm_limit=6, tpm_limit=600),
                                    route(rpm_limit=60), tokens=60))
    finally:
        ratelimit.buckets_set(old)
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    ttls = {name.removeprefix(redis_prefix): client.pttl(name)
            for name in client.scan_iter(match=redis_prefix + "*")}
    client.close()

    assert set(ttls) == {"key:7:requests", "key:7:tokens", "route:r:requests"}
    # Full again after 1 of 6/min (10 s), 60 of 600/min (6 s), 1 of 60/min (1 s); +1 s margin.
    assert 10_500 < ttls["key:7:requests"] <= 11_000
    assert 6_500 < ttls["key:7:tokens"] <= 7_000
    assert 1_500 < ttls["route:r:requests"] <= 2_000


async def _take_and_close(store: RedisBuckets, k: KeyInfo, r: RouteInfo, *, tokens: int):
    grant = await limits_take(k, r, tokens=tokens)
    await store.close()
    return grant


def test_a_settle_from_another_thread_lands_on_the_grants_loop(redis_prefix):
    store = RedisBuckets(settings.REDIS_URL, prefix=redis_prefix)
    old = ratelimit.buckets_set(store)
    k = key(tpm_limit=100)

    async def scenario():
        grant = await limits_take(k, ROUTE, tokens=100)
        await asyncio.to_thread(limits_settle, grant, tokens=40)  # no loop in that thread
        await store.flush()
        after = await limits_take(k, ROUTE, tokens=60)
        await store.close()
        return after

    try:
        after = asyncio.run(scenario())
    finally:
        ratelimit.buckets_set(old)
    assert after.headers["x-ratelimit-remaining-tokens"] == "0"


def test_redis_down_fails_open_and_warns_once(caplog):
    store = RedisBuckets(f"redis://127.0.0.1:{free_port()}/0")
    old = ratelimit.buckets_set(store)
    k = key(rpm_limit=1, tpm_limit=10)

    async def scenario():
        grants = []
        for _ in range(3):
            grants.append(await limits_take(k, ROUTE, tokens=5))
            store._fail.until = 0.0  # try Redis again each time, not only after the back-off
        limits_settle(grants[0], tokens=50)
        await store.close()
        return grants

    try:
        with caplog.at_level(logging.WARNING, logger="sluice.ratelimit"):
            grants = asyncio.run(scenario())
    finally:
        ratelimit.buckets_set(old)
    assert grants == [None, None, None]  # served, over the limit, without limits
    warnings = [r for r in caplog.records if r.name == "sluice.ratelimit"]
    assert len(warnings) == 1
    assert "failing open" in warnings[0].getMessage()


def test_after_a_failure_redis_is_skipped_for_a_moment():
    store = RedisBuckets(f"redis://127.0.0.1:{free_port()}/0")
    old = ratelimit.buckets_set(store)

    async def scenario():
        await limits_take(key(rpm_limit=1), ROUTE, tokens=0)
        clients = len(store._clients)
        await store.close()
        store._clients.clear()
        await limits_take(key(rpm_limit=1), ROUTE, tokens=0)
        return clients, len(store._clients)

    try:
        assert asyncio.run(scenario()) == (1, 0)  # the second one did not try
    finally:
        ratelimit.buckets_set(old)


# --- the estimate and the formats ---------------------------------------------------------------
def test_the_estimate_counts_chat_text_and_the_output_budget():
    body = {"model": "m", "max_tokens": 50, "n": 2, "messages": [
        {"role": "system", "content": "x" * 40},
        {"role": "user", "content": [{"type": "text", "text": "y" * 38},
                                     {"type": "image_url", "image_url": {"url": "data:..."}}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]}
    assert tokens_estimate(body, endpoint="chat/completions") == 10 + 10 + 100


@pytest.mark.parametrize(("body", "expected"), [
    ({"prompt": "z" * 9}, 3),
    ({"prompt": ["abcd", "efgh"], "max_tokens": 5}, 2 + 5),
    ({"prompt": [1, 2, 3]}, 3),
    ({"prompt": [[1, 2], [3]]}, 3),
    ({"input": "q" * 8, "max_output_tokens": 7}, 2 + 7),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "w" * 12}]}]}, 3),
    ({"input": ["a" * 4, "b" * 4]}, 2),
    ({"query": "abcd", "documents": ["efgh", "ijkl"]}, 3),
    ({"messages": [], "max_completion_tokens": 9, "max_tokens": 100}, 9),
    ({"prompt": [[[[[["deep" * 100]]]]]]}, 0),
])
def test_the_estimate_of_other_shapes(body, expected):
    assert tokens_estimate(body, endpoint="any") == expected


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.0121, "13ms"), (1, "1s"), (1.5, "1.5s"), (59.9991, "1m0s"), (360, "6m0s"),
    (3723.25, "1h2m3.25s"),
])
def test_durations_read_like_openais(seconds, text):
    assert duration_text(seconds) == text


# --- through the gateway, with the official SDK --------------------------------------------------
MESSAGES = [{"role": "user", "content": "How fast may I go?"}]


@pytest.fixture
def limits(gateway):
    """Set the `tests` key's and the `default` route's limits, with their buckets full."""
    from proxy.models import ApiKey, Route
    from proxy.snapshot import snapshot_reload

    key_id = ApiKey.objects.get(name="tests").id
    names = [f"{ratelimit.PREFIX}{scope}:{kind}" for scope in (f"key:{key_id}", "route:default")
             for kind in ("requests", "tokens")]
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(*names)

    def set_limits(*, key_rpm=None, key_tpm=None, route_rpm=None, route_tpm=None) -> None:
        ApiKey.objects.filter(id=key_id).update(rpm_limit=key_rpm, tpm_limit=key_tpm)
        Route.objects.filter(name="default").update(rpm_limit=route_rpm, tpm_limit=route_tpm)
        snapshot_reload()

    yield set_limits
    client.delete(*names)
    client.close()


def test_the_sdk_gets_openais_429_body_and_headers(sdk, limits, flush_calls):
    limits(key_rpm=2)
    for _ in range(2):
        sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=5)

    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=5)

    response = caught.value.response
    error = response.json()["error"]
    assert re.fullmatch(
        r"Rate limit reached for key 'tests' on requests per min \(RPM\): Limit 2, Used 2, "
        r"Requested 1\. Please try again in (30|29\.\d+)s\.", error.pop("message"))
    assert error == {"type": "requests", "param": None, "code": "rate_limit_exceeded"}
    headers = response.headers
    assert headers["retry-after"] == "30"
    assert 29_000 < int(headers["retry-after-ms"]) <= 30_000
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == (
        "2", "0")
    assert re.fullmatch(r"(1m0s|5\d\.\d+s)", headers["x-ratelimit-reset-requests"])
    assert [(c.status_code, c.error_type) for c in flush_calls()] == [
        (200, ""), (200, ""), (429, "rate_limit_exceeded")]


def test_successful_answers_carry_the_rate_limit_headers(sdk, limits):
    limits(key_rpm=100, key_tpm=10_000, route_rpm=1000)

    raw = sdk.chat.completions.with_raw_response.create(
        model="default", messages=MESSAGES, max_tokens=20)

    estimate = tokens_estimate({"messages": MESSAGES, "max_tokens": 20}, endpoint="")
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-ratelimit-limit-requests"] == "100"  # the key's, the tightest
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    assert raw.headers["x-ratelimit-reset-requests"] in ("600ms", "599ms")
    assert raw.headers["x-ratelimit-limit-tokens"] == "10000"
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(10_000 - estimate)
    assert "retry-after" not in raw.headers


def test_tpm_refuses_once_real_usage_has_settled(sdk, limits):
    limits(key_tpm=300)  # 5 tokens a second
    # Estimated at a few tokens (no max_tokens), but the backend is made to write 280.
    first = sdk.chat.completions.create(model="default", messages=MESSAGES,
                                        extra_body={"min_tokens": 280})
    used = first.usage.total_tokens
    assert used > 280

    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="default", messages=MESSAGES, max_tokens=20)

    error = caught.value.response.json()["error"]
    assert error["type"] == "tokens"
    reported = int(re.search(r"Used (\d+),", error["message"]).group(1))
    assert used - 2 <= reported <= used  # minus what refilled in the meantime
    assert "on tokens per min (TPM): Limit 300" in error["message"]


def test_the_sdks_own_retry_honours_retry_after(gateway, pool, limits, flush_calls):
    limits(key_rpm=30)  # one request back every 2 s
    fast = openai.OpenAI(base_url=gateway.url + "/v1", api_key=pool, max_retries=0)
    for _ in range(30):
        fast.completions.create(model="default", prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as caught:
        fast.completions.create(model="default", prompt="x", max_tokens=1)
    wait_s = int(caught.value.response.headers["retry-after-ms"]) / 1000
    patient = openai.OpenAI(base_url=gateway.url + "/v1", api_key=pool, max_retries=2)

    started = time.monotonic()
    answer = patient.completions.create(model="default", prompt="x", max_tokens=1)
    elapsed = time.monotonic() - started

    assert answer.choices
    assert 1.0 < wait_s <= 2.0
    assert wait_s - 0.1 <= elapsed <= wait_s + 1.0  # one wait of Retry-After, then through
    statuses = [c.status_code for c in flush_calls()]
    assert statuses[-3:] == [429, 429, 200]  # the probe, the SDK's first try, its retry
    assert statuses.count(429) == 2
