"""A P99-latency alert over real traffic: it fires once when the backend is made slow, and
resolves once when the backend recovers.

Real parts throughout: a simulator process of its own (its first byte slowed and restored at
run time through `POST /sim/faults`), a gateway process (uvicorn, as `make run` starts it)
that writes its calls to the test PostgreSQL through its buffered writer, the official
`openai` SDK as the client, and a local HTTP server as the rule's webhook. The test plays Celery
beat: `rollups_run` then `rules_evaluate`, each with a clock it sets.

The clock. Calls are stamped with real time, and a rule's window is its last
`window_minutes` whole minutes and the current one so far, [floor(t) - N min, t)
(`analytics.selectors.summary_compute`). Every run is at or after the real time of the calls
it must see, and at most 90 s after the slow ones, so each 2-minute window starts at least
30 s before them and holds every call of the test. A window that held the fast calls but not
the slow ones would have to start on a real minute boundary passed between the two phases
(up to a minute of waiting). So the recovery is shown as production traffic shows it: after
the recovery, enough fast calls flow that the slow ones are under 1 % of the window, and its
nearest-rank P99 is a fast call's latency. Were the backend still slow, or no fast traffic
to follow, the P99 would stay above the threshold and the rule would stay firing.
"""
from __future__ import annotations

import json
import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import openai
import pytest
from django.utils import timezone

from alerts.evaluate import RunResult, rules_evaluate
from alerts.models import AlertEvent, AlertRule, EventKind, NotifyStatus, State
from analytics.models import Call
from analytics.rollups import rollups_run
from analytics.selectors import summary_compute
from proxy.models import ApiKey, Backend, Route
from simulator.process import SimulatorProcess
from tests.alerts.support import Recorder
from tests.processes import GatewayProcess, db_url, until_true

MODEL = "sim-model"
DELAY_MS = 2000  # the slow backend's extra wait before its first byte
THRESHOLD_MS = 1000  # far below the slow calls, far above the fast ones (~10 ms)
FOR_S = 30
WINDOW_MINUTES = 2
SLOW_CALLS = 2
# With SLOW_CALLS slow ones among n calls, the nearest-rank P99 (rank ceil(0.99 n)) is a fast
# call once n - ceil(0.99 n) > SLOW_CALLS; this many (n = 407, 4 above the rank) leaves room
# for two fast calls slower than the threshold too, on a loaded machine.
FAST_CALLS = 400
BASELINE_CALLS = 5




@pytest.fixture
def sim():
    with SimulatorProcess(model=MODEL, ttft_ms=5, tokens_per_s=2000, seed=1) as process:
        yield process


@pytest.fixture
def webhook():
    server = Recorder()
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def sdk(transactional_db, sim, settings):
    """The SDK, through a gateway process whose only backend is `sim`."""
    settings.SLUICE_ALERT_WEBHOOK_URL = ""  # the rule's own webhook only
    AlertRule.objects.all().delete()  # the migration's defaults watch the same calls
    Backend.objects.create(name="sim-1", base_url=sim.url, model=MODEL)
    Route.objects.create(name="default", model=MODEL)
    _, key = ApiKey.issue(name="alert-e2e")
    gateway = GatewayProcess(database_url=db_url(), master_key="sk-master-alert-e2e",
                             env={"SLUICE_LOG_FLUSH_INTERVAL_S": "0.2"})
    gateway.start(timeout_s=60)
    try:
        yield openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0,
                            timeout=60)
    finally:
        gateway.kill()
        shutil.rmtree(gateway.var_dir, ignore_errors=True)


@pytest.fixture
def rule(sdk, webhook) -> AlertRule:
    """Created after `sdk` has removed the default rules."""
    return AlertRule.objects.create(
        name="p99 above 1 s", metric="p99_latency", comparison="gt",
        threshold=THRESHOLD_MS, window_minutes=WINDOW_MINUTES, for_s=FOR_S,
        webhook_url=webhook.url + "/hook")


def faults_set(sim: SimulatorProcess, **faults) -> None:
    request = urllib.request.Request(sim.url + "/sim/faults", data=json.dumps(faults).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def traffic(sdk: openai.OpenAI, count: int, *, threads: int = 4) -> None:
    """`count` chat completions, `threads` at a time; then wait until the gateway has
    written them all (and every earlier call) to the call log."""
    expected = Call.objects.count() + count

    def one(i: int) -> None:
        sdk.chat.completions.create(model="default", max_tokens=4,
                                    messages=[{"role": "user", "content": f"Call {i}."}])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(count)))
    assert until_true(lambda: Call.objects.count() >= expected), "the calls never reached the log"
    assert Call.objects.count() == expected


class Beat:
    """What Celery beat does, at times the test sets: the rollups, then the alerts."""

    def __init__(self) -> None:
        self.last: datetime | None = None

    def run(self, at: datetime) -> RunResult:
        assert self.last is None or at > self.last, "a rule ignores a clock behind its last run"
        self.last = at
        rollups_run(now=at)
        return rules_evaluate(now=at)


def state(rule: AlertRule) -> tuple[str, float | None]:
    rule.refresh_from_db()
    return rule.state, rule.last_value


def slow_phase(sdk, sim, rule: AlertRule, beat: Beat) -> datetime:
    """Fast traffic leaves the rule ok; slow traffic makes it pending, and firing `for_s`
    later. Returns the time it fired."""
    traffic(sdk, BASELINE_CALLS)
    assert beat.run(timezone.now()).fired == 0
    rule_state, value = state(rule)
    assert rule_state == State.OK and value is not None and value < THRESHOLD_MS

    faults_set(sim, ttfb_delay_ms=DELAY_MS)
    traffic(sdk, SLOW_CALLS, threads=SLOW_CALLS)
    assert Call.objects.filter(latency_ms__gte=DELAY_MS).count() == SLOW_CALLS

    slow = timezone.now()
    assert beat.run(slow).fired == 0
    assert state(rule)[0] == State.PENDING
    assert beat.run(slow + timedelta(seconds=FOR_S / 2)).fired == 0
    assert state(rule)[0] == State.PENDING
    fired = slow + timedelta(seconds=FOR_S)
    result = beat.run(fired)
    assert (result.fired, result.resolved, result.notified) == (1, 0, 1)
    return fired


def test_a_slow_backend_fires_the_p99_rule_once_with_one_webhook_post(sdk, sim, rule,
                                                                      webhook):
    beat = Beat()
    fired = slow_phase(sdk, sim, rule, beat)

    rule_state, value = state(rule)
    assert rule_state == State.FIRING and value > 0.95 * DELAY_MS  # buckets: within 2 %
    for seconds in (15, 30, 45):  # still slow: beat keeps evaluating, nothing more happens
        result = beat.run(fired + timedelta(seconds=seconds))
        assert (result.fired, result.resolved, result.notified) == (0, 0, 0)
    assert state(rule)[0] == State.FIRING

    event = AlertEvent.objects.get(rule=rule)
    assert (event.kind, event.at, event.notify_status) == (EventKind.FIRED, fired,
                                                           NotifyStatus.SENT)
    assert [r["path"] for r in webhook.requests] == ["/hook"]
    body = webhook.requests[0]["json"]
    assert (body["state"], body["rule_id"], body["threshold"]) == ("firing", rule.pk,
                                                                   THRESHOLD_MS)
    assert body["value"] == value


def test_the_rule_resolves_once_when_the_backend_recovers(sdk, sim, rule, webhook):
    beat = Beat()
    fired = slow_phase(sdk, sim, rule, beat)
    assert beat.run(fired + timedelta(seconds=15)).fired == 0
    assert state(rule)[0] == State.FIRING

    faults_set(sim, ttfb_delay_ms=0)
    traffic(sdk, FAST_CALLS)

    resolved = max(timezone.now(), fired + timedelta(seconds=30))
    result = beat.run(resolved)
    assert (result.fired, result.resolved, result.notified) == (0, 1, 1)
    rule_state, value = state(rule)
    assert rule_state == State.OK and value < THRESHOLD_MS
    # The window still holds the slow calls: the fast ones outnumber them, as in production.
    window = summary_compute(minutes=WINDOW_MINUTES, now=resolved)
    assert window["requests"] == BASELINE_CALLS + SLOW_CALLS + FAST_CALLS
    assert window["p99_ms"] == value
    for seconds in (15, 30):  # fast from now on: nothing more either
        result = beat.run(resolved + timedelta(seconds=seconds))
        assert (result.fired, result.resolved, result.notified) == (0, 0, 0)
    assert state(rule)[0] == State.OK

    history = list(AlertEvent.objects.filter(rule=rule).order_by("at", "id")
                   .values_list("kind", "at", "started_at", "notify_status"))
    assert history == [(EventKind.FIRED, fired, fired, NotifyStatus.SENT),
                       (EventKind.RESOLVED, resolved, fired, NotifyStatus.SENT)]
    assert [r["json"]["state"] for r in webhook.requests] == ["firing", "resolved"]
    body = webhook.requests[1]["json"]
    assert body["value"] < THRESHOLD_MS
    assert (body["started_at"], body["resolved_at"]) == (fired.isoformat(),
                                                         resolved.isoformat())
