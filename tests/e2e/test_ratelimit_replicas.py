"""Two gateway replicas share one Redis, so a key's limit holds across them: a key allowed N
requests a minute gets N through the pair, not N through each."""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import redis
from django.conf import settings

from analytics.models import Call
from proxy.models import ApiKey
from proxy.ratelimit import PREFIX
from tests.processes import GatewayProcess, db_url

RPM = 20



@pytest.fixture
def limited_key(pool):
    """The `tests` key (committed, so the replicas read it) at RPM requests a minute, its Redis
    buckets deleted before and after so that no earlier run leaves it half spent."""
    key = ApiKey.objects.get(name="tests")
    key.rpm_limit = RPM
    key.save(update_fields=["rpm_limit"])
    client = redis.Redis.from_url(settings.REDIS_URL)
    names = [f"{PREFIX}key:{key.id}:requests", f"{PREFIX}key:{key.id}:tokens"]
    client.delete(*names)
    yield pool
    client.delete(*names)
    client.close()


@pytest.fixture
def replicas(limited_key):
    started = [GatewayProcess(database_url=db_url(), master_key="sk-master-replicas",
                              env={"REDIS_URL": settings.REDIS_URL}) for _ in range(2)]
    try:
        for gateway in started:
            gateway.start()
        yield started
    finally:
        for gateway in started:
            gateway.kill()


def send(gateway: GatewayProcess, api_key: str) -> int:
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0, timeout=30)
    try:
        sdk.completions.create(model="default", prompt="x", max_tokens=1)
    except openai.RateLimitError as exc:
        assert exc.response.json()["error"]["code"] == "rate_limit_exceeded"
        return 429
    return 200


def wait_for_calls(n: int, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and Call.objects.count() < n:
        time.sleep(0.1)
    return Call.objects.count()


def test_two_replicas_share_one_budget(replicas, limited_key):
    targets = [replicas[i % 2] for i in range(2 * RPM)]  # alternating

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as threads:
        statuses = list(threads.map(lambda gateway: send(gateway, limited_key), targets))
    elapsed = time.monotonic() - started

    accepted = statuses.count(200)
    refill = math.floor(elapsed * RPM / 60)  # what the bucket could regain meanwhile
    assert set(statuses) == {200, 429}
    assert RPM <= accepted <= RPM + refill, (accepted, elapsed)
    assert refill < RPM / 2  # the bound is meaningful: far from the 2 × RPM of two budgets
    for gateway in replicas:  # each replica refused some: neither had a budget of its own
        assert 429 in [s for s, g in zip(statuses, targets, strict=True) if g is gateway]
    assert wait_for_calls(2 * RPM) == 2 * RPM
    assert Call.objects.filter(status_code=429).count() == 2 * RPM - accepted
