"""Debian's nginx, running deploy/nginx.conf itself (rendered by deploy/nginx_render.py), in
front of two Sluice web replicas that share the test PostgreSQL and Redis, with two simulated
backends and one Celery worker.

Through nginx a stream reaches the app as it is generated; a key's rate limit, the exact and
semantic caches, admin edits, the call log, the rollups and the summary are one across the
replicas; and a replica killed under load costs only the streams it had started: nginx sends
the rest to the other replica, and the calls it had answered come back from its journal when a
replacement starts on its var dir.

One set of processes for the module (starting them is most of its time). Built to run on a
loaded two-core machine: timeouts are generous, and the figures are printed (pytest -s)."""
from __future__ import annotations

import http.cookiejar
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.db.models import Sum

from analytics.models import Call, MinuteRollup, RollupState
from analytics.rollups import SETTLE_S
from analytics.tasks import rollups_update
from deploy.nginx_render import nginx_render
from proxy.cache import PREFIX as CACHE_PREFIX
from proxy.cache import cache_key
from proxy.models import ApiKey, Backend, Route
from proxy.ratelimit import PREFIX as RATELIMIT_PREFIX
from proxy.semantic_index import PREFIX as SEMANTIC_PREFIX
from proxy.snapshot import RouteInfo
from simulator.process import SimulatorProcess, free_port
from tests.processes import ROOT, GatewayProcess, TcpRelay, db_url

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = [
    pytest.mark.skipif(NGINX is None,
                       reason="needs Debian's nginx: `make nginx-deps` (apt-get install nginx)"),
    # Each test reads in a transaction that it rolls back; what the replicas must see is
    # committed by the module's fixture, or by `committed()`.
    pytest.mark.django_db,
]

SIM_MODEL = "sim-model"
TOKENS_PER_S = 25.0  # slow backends: a stream of 50 tokens takes 2 s to generate
REFRESH_S = 1.0  # SLUICE_CONFIG_REFRESH_S of the replicas
RPM = 20
MASTER = "sk-master-nginx-e2e"
TAG = uuid.uuid4().hex[:8]  # Redis outlives test runs: this run's routes have names of its own
EXACT_ROUTE, SEMANTIC_ROUTE, WARM_ROUTE = f"exact-{TAG}", f"semantic-{TAG}", f"warm-{TAG}"
STAFF_USER, STAFF_PASSWORD = "ops", f"ops-{TAG}"
LONG = 90.0  # seconds: any wait for something that should take one or two


def say(message: str) -> None:
    print(f"[nginx e2e] {message}")



def committed(write: Callable[[], Any]) -> Any:
    """Run a write on a connection of its own (a thread's), outside the test's transaction, so
    that the replicas see it."""
    def run() -> Any:
        try:
            return write()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(run).result()


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = LONG,
               every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)
    return result


# --- processes ----------------------------------------------------------------------------
class Nginx:
    """deploy/nginx.conf rendered for `upstreams`, run in the foreground in a temp prefix."""

    def __init__(self, *, upstreams: list[str]) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="sluice-nginx-"))
        self.prefix.chmod(0o755)  # run as root, the workers are `nobody`: their temp files
        self.port = free_port()
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(nginx_render(listen=f"127.0.0.1:{self.port}", upstreams=upstreams))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, *extra: str) -> list[str]:
        return [NGINX, "-p", f"{self.prefix}/", "-c", str(self.conf),
                "-g", f"daemon off; pid {self.prefix}/nginx.pid;", *extra]

    def start(self) -> Nginx:
        checked = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                     stderr=(self.prefix / "stderr.log").open("wb"))
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"nginx exited:\n{self.errors()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, f"nginx did not listen:\n{self.errors()}"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def errors(self) -> str:
        return "".join((self.prefix / name).read_text(errors="replace")
                       for name in ("stderr.log", "error.log") if (self.prefix / name).exists())

    def access(self) -> list[dict[str, Any]]:
        """The access log's entries (JSON lines, see log_format in deploy/nginx.conf), each
        with `ports`: every replica tried, in order (a retried request lists two)."""
        entries = []
        for line in (self.prefix / "access.log").read_text().splitlines():
            entry = json.loads(line)
            entry["ports"] = [int(a.rsplit(":", 1)[1]) for a in entry["upstream"].split(", ")
                              if ":" in a]
            entries.append(entry)
        return entries

    def served(self) -> dict[str, dict[str, Any]]:
        """Entries by the request id of the replica that answered."""
        return {e["request_id"]: e for e in self.access() if e["request_id"]}


def replica(*, database_url: str, var_dir: str | None = None) -> GatewayProcess:
    return GatewayProcess(database_url=database_url, master_key=MASTER, var_dir=var_dir, env={
        "REDIS_URL": settings.REDIS_URL,
        # As in production: one secret for every replica, or a session (the admin) signed by
        # one is not valid on the other (each var dir would make its own).
        "SLUICE_SECRET_KEY": f"nginx-e2e-{TAG}-" + "x" * 40,
        "SLUICE_CONFIG_REFRESH_S": str(REFRESH_S),
        "SLUICE_SEMANTIC_SYNC_S": "0.2",
        # Longer than nginx's upstream keepalive_timeout (60 s), as deploy/nginx.conf asks.
        "UVICORN_TIMEOUT_KEEP_ALIVE": "75",
    })


def worker_start(var_dir: Path, queue: str) -> subprocess.Popen:
    """One Celery worker on the Redis broker, taking only this module's queue."""
    env = {**os.environ, "DATABASE_URL": db_url(), "REDIS_URL": settings.REDIS_URL,
           "SLUICE_VAR_DIR": str(var_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "-Q", queue,
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=(var_dir / "worker.log").open("wb"))


@dataclass
class Key:
    id: int
    secret: str


@dataclass
class Stack:
    a: GatewayProcess
    b: GatewayProcess  # its database link goes through `relay`, which a test cuts
    relay: TcpRelay
    nginx: Nginx
    queue: str
    keys: dict[str, Key]
    gateways: list[GatewayProcess] = field(default_factory=list)  # all started, for teardown


def config_create(sims: list[SimulatorProcess]) -> dict[str, Key]:
    """Backends, routes, keys and a staff user, committed: the replicas read them."""
    for i, sim in enumerate(sims, start=1):
        Backend.objects.create(name=f"sim-{i}", base_url=sim.url, model=SIM_MODEL)
    Route.objects.create(name="default", model=SIM_MODEL)
    Route.objects.create(name=EXACT_ROUTE, model=SIM_MODEL, cache_exact=True)
    # Semantic routes at start-up: each replica loads its embedder then, in the background.
    Route.objects.create(name=SEMANTIC_ROUTE, model=SIM_MODEL, cache_semantic=True)
    Route.objects.create(name=WARM_ROUTE, model=SIM_MODEL, cache_semantic=True)
    keys = {}
    for name in ("main", "limited", "edited", "kill"):
        key, secret = ApiKey.issue(name=name)
        keys[name] = Key(key.id, secret)
    ApiKey.objects.filter(name="limited").update(rpm_limit=RPM)
    get_user_model().objects.create_superuser(STAFF_USER, "ops@example.com", STAFF_PASSWORD)
    return keys


def redis_forget(keys: dict[str, Key], queue: str) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    names = [f"{RATELIMIT_PREFIX}key:{k.id}:{b}" for k in keys.values()
             for b in ("requests", "tokens")]
    names += [SEMANTIC_PREFIX + r for r in (EXACT_ROUTE, SEMANTIC_ROUTE, WARM_ROUTE)]
    names += [queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
    client.delete(*names)
    client.close()


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), ExitStack() as cleanup:
        # The database is this module's for its run, emptied before and after as a
        # transactional test would.
        call_command("flush", interactive=False, verbosity=0)
        cleanup.callback(call_command, "flush", interactive=False, verbosity=0)
        sims = [SimulatorProcess(model=SIM_MODEL, ttft_ms=30, tokens_per_s=TOKENS_PER_S,
                                 seed=1) for _ in range(2)]
        for sim in sims:
            cleanup.callback(sim.stop)
            sim.start()
        keys = config_create(sims)
        queue = f"test-nginx-{TAG}"  # the worker's: no other worker on this Redis takes it
        redis_forget(keys, queue)  # a bucket of an earlier run's key of the same id
        cleanup.callback(redis_forget, keys, queue)

        relay = TcpRelay(int(connection.settings_dict["PORT"] or 5432)).start()
        cleanup.callback(relay.cut)
        a = replica(database_url=db_url())
        b = replica(database_url=db_url(relay.port))
        gateways = [a, b]

        def gateways_stop():
            for gateway in gateways:
                gateway.kill()
            for var_dir in {g.var_dir for g in gateways}:
                shutil.rmtree(var_dir, ignore_errors=True)

        cleanup.callback(gateways_stop)
        worker_dir = Path(tempfile.mkdtemp(prefix="sluice-worker-"))
        worker = worker_start(worker_dir, queue)
        cleanup.callback(shutil.rmtree, worker_dir, ignore_errors=True)
        cleanup.callback(worker.wait, timeout=30)
        cleanup.callback(worker.terminate)
        with ThreadPoolExecutor(max_workers=2) as threads:
            list(threads.map(lambda g: g.start(timeout_s=LONG), gateways))
        nginx = Nginx(upstreams=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]).start()
        cleanup.callback(nginx.stop)
        started = time.monotonic()
        for gateway in gateways:
            embedder_wait(sdk(gateway.url, keys["main"].secret))
        say(f"embedders ready {time.monotonic() - started:.1f} s after the replicas answered")
        yield Stack(a=a, b=b, relay=relay, nginx=nginx, queue=queue, keys=keys,
                    gateways=gateways)


# --- clients ------------------------------------------------------------------------------
def sdk(url: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=LONG)


def ask(client: openai.OpenAI, content: str, *, model: str = "default", max_tokens: int = 4,
        **params: Any):
    """A non-streamed chat call; the raw response (headers, then `.parse()`)."""
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
        **params)


def embedder_wait(client: openai.OpenAI) -> None:
    """Until the replica's semantic lookups run (they are `skipped` while its model loads)."""
    for i in range(int(LONG / 0.5)):
        raw = ask(client, f"Warm-up question {i} of run {TAG}?", model=WARM_ROUTE,
                  temperature=0, max_tokens=1)
        if raw.headers["x-sluice-cache"] != "skipped":
            return
        time.sleep(0.5)
    pytest.fail("the replica's embedder did not load")


def calls_of(request_ids: list[str], *, timeout_s: float = LONG) -> list[Call]:
    """The Call rows of these request ids, once each of them has one."""
    wanted = set(request_ids)
    wait_until(lambda: wanted <= set(Call.objects.filter(request_id__in=wanted)
                                     .values_list("request_id", flat=True)),
               f"the calls of {len(wanted)} request ids", timeout_s=timeout_s, every_s=0.2)
    return list(Call.objects.filter(request_id__in=wanted))


@dataclass
class Timed:
    headers: Any
    arrivals: list[float]  # seconds from the request to each chunk with text
    total: float

    @property
    def ttft(self) -> float:
        return self.arrivals[0]


def stream_timed(client: openai.OpenAI, tokens: int) -> Timed:
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": f"Tell me a story ({TAG})."}],
        max_tokens=tokens, stream=True, extra_body={"ignore_eos": True})
    arrivals = [time.monotonic() - started for chunk in raw.parse()
                if chunk.choices and chunk.choices[0].delta.content]
    return Timed(raw.headers, arrivals, time.monotonic() - started)


# --- streams ------------------------------------------------------------------------------
def test_a_stream_reaches_the_app_through_nginx_as_it_is_generated(stack):
    tokens = 50
    generation_s = tokens / TOKENS_PER_S  # 2 s

    via = stream_timed(sdk(stack.nginx.url, stack.keys["main"].secret), tokens)
    direct = stream_timed(sdk(stack.a.url, stack.keys["main"].secret), tokens)

    say(f"stream of {tokens} tokens: via nginx TTFT {via.ttft * 1000:.0f} ms, total "
        f"{via.total:.2f} s; direct to a replica TTFT {direct.ttft * 1000:.0f} ms, total "
        f"{direct.total:.2f} s")
    assert len(via.arrivals) == tokens
    assert via.total >= 0.8 * generation_s
    assert via.ttft < via.total / 4  # not held back until the end
    # Token by token: the second half of the tokens arrive in the second half of the time.
    middle = via.ttft + (via.total - via.ttft) / 2
    assert sum(t >= middle for t in via.arrivals) >= tokens / 3
    assert via.headers["x-accel-buffering"] == "no"  # passed on, for a proxy in front of nginx
    assert "no-cache" in via.headers["cache-control"]
    assert via.headers["x-request-id"].startswith("req-")


# --- rate limits --------------------------------------------------------------------------
def test_a_keys_rate_limit_holds_across_both_replicas_through_nginx(stack):
    client = sdk(stack.nginx.url, stack.keys["limited"].secret)

    def send(i: int) -> tuple[int, str]:
        try:
            raw = client.completions.with_raw_response.create(model="default",
                                                               prompt=f"x {i}", max_tokens=1)
            return 200, raw.headers["x-request-id"]
        except openai.RateLimitError as exc:
            assert exc.response.json()["error"]["code"] == "rate_limit_exceeded"
            return 429, exc.response.headers["x-request-id"]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as threads:
        results = list(threads.map(send, range(2 * RPM)))
    elapsed = time.monotonic() - started

    accepted = [rid for status, rid in results if status == 200]
    refill = math.floor(elapsed * RPM / 60)  # what the bucket could regain meanwhile
    served = stack.nginx.served()
    by_replica = Counter((served[rid]["ports"][-1], status) for status, rid in results)
    say(f"rate limit {RPM}/min through nginx: {len(accepted)} of {2 * RPM} accepted in "
        f"{elapsed:.1f} s; (replica port, status): {dict(by_replica)}")
    assert RPM <= len(accepted) <= RPM + refill, (len(accepted), elapsed)
    assert refill < RPM / 2  # far from the 2 x RPM of a budget per replica
    for gateway in (stack.a, stack.b):  # each replica took some and refused some
        assert by_replica[(gateway.port, 200)] >= 1 and by_replica[(gateway.port, 429)] >= 1
    assert all(len(served[rid]["ports"]) == 1 for _, rid in results)  # a 429 is not retried
    rows = calls_of([rid for _, rid in results])
    assert Counter(c.status_code for c in rows) == {200: len(accepted),
                                                    429: 2 * RPM - len(accepted)}


# --- caches -------------------------------------------------------------------------------
def test_an_answer_cached_by_one_replica_is_a_hit_on_the_other(stack):
    a, b = (sdk(g.url, stack.keys["main"].secret) for g in (stack.a, stack.b))
    store = redis.Redis.from_url(settings.REDIS_URL)

    # Exact: the same request.
    question = f"What is the capital of France? ({TAG})"
    params = {"temperature": 0, "max_tokens": 8}
    first = ask(a, question, model=EXACT_ROUTE, **params)
    body = {"messages": [{"role": "user", "content": question}], "model": EXACT_ROUTE, **params}
    entry = CACHE_PREFIX + cache_key(RouteInfo(name=EXACT_ROUTE, model=SIM_MODEL,
                                               baseline_model=SIM_MODEL), body,
                                     endpoint="chat/completions")
    wait_until(lambda: store.exists(entry), "the exact entry in Redis", timeout_s=10)
    second = ask(b, question, model=EXACT_ROUTE, **params)
    store.delete(entry)

    # Semantic: a paraphrase. Each replica pulls the entries that others appended to the
    # route's Redis stream every SLUICE_SEMANTIC_SYNC_S (0.2 s).
    original = ask(a, "How do I reverse a list in Python?", model=SEMANTIC_ROUTE,
                   temperature=0, max_tokens=16)
    wait_until(lambda: store.xlen(SEMANTIC_PREFIX + SEMANTIC_ROUTE) >= 1,
               "the semantic entry in Redis", timeout_s=30)
    time.sleep(1.5)  # a few sync periods, on a loaded machine
    paraphrase = ask(b, "What's the way to reverse a Python list?", model=SEMANTIC_ROUTE,
                     temperature=0, max_tokens=16)
    store.close()

    responses = (first, second, original, paraphrase)
    outcomes = [r.headers["x-sluice-cache"] for r in responses]
    say(f"caches, replica a then b: exact {outcomes[:2]}, semantic {outcomes[2:]}")
    assert outcomes == ["miss", "exact", "miss", "semantic"]
    text = [r.parse().choices[0].message.content for r in responses]
    assert text[0] == text[1] and text[2] == text[3]
    ids = [r.headers["x-request-id"] for r in responses]
    rows = {c.request_id: c.cache for c in calls_of(ids)}
    assert [rows[i] for i in ids] == ["miss", "exact", "miss", "semantic"]


# --- admin edits --------------------------------------------------------------------------
class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Browser:
    """A staff user's cookies and forms, over real HTTP (any port: cookies ignore ports)."""

    def __init__(self) -> None:
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirects)

    def open(self, url: str, fields: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str, Message]:
        data = None if fields is None else urllib.parse.urlencode(fields).encode()
        request = urllib.request.Request(url, data=data, headers=headers or {})
        try:
            with self.opener.open(request, timeout=LONG) as response:
                return response.status, response.read().decode(), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace"), exc.headers

    def form(self, url: str, fields: dict[str, str], **headers: str) -> tuple[int, Message]:
        """GET the form for its CSRF token, then POST the fields."""
        status, page, _ = self.open(url)
        assert status == 200, (url, status)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        status, _, response_headers = self.open(url, {"csrfmiddlewaretoken": token, **fields},
                                                headers)
        return status, response_headers


def key_works(gateway: GatewayProcess, secret: str) -> bool:
    try:
        ask(sdk(gateway.url, secret), "ping", max_tokens=1)
        return True
    except openai.AuthenticationError:
        return False


def test_an_admin_edit_on_one_replica_reaches_the_other_within_the_refresh(stack):
    key = stack.keys["edited"]
    assert key_works(stack.a, key.secret) and key_works(stack.b, key.secret)

    # The staff user logs in through nginx as a browser would (the form's Origin is nginx's
    # address: the Host nginx passes on must carry the port for Django's CSRF check), and the
    # session holds on whichever replica serves the next page.
    browser = Browser()
    status, headers = browser.form(
        stack.nginx.url + "/admin/login/?next=/admin/",
        {"username": STAFF_USER, "password": STAFF_PASSWORD, "next": "/admin/"},
        Origin=stack.nginx.url)
    assert (status, headers.get("Location")) == (302, "/admin/")
    pages = [browser.open(stack.nginx.url + "/admin/")[0] for _ in range(4)]
    assert pages == [200] * 4
    ports = {e["ports"][-1] for e in stack.nginx.access() if e["uri"] == "/admin/"}
    assert ports == {stack.a.port, stack.b.port}

    # Revoke the key in the admin form of replica a (the checkbox left unticked).
    status, _ = browser.form(f"{stack.a.url}/admin/proxy/apikey/{key.id}/change/",
                             {"name": "edited", "rpm_limit": "", "tpm_limit": "",
                              "_save": "Save"})
    saved = time.monotonic()
    assert status == 302
    assert ApiKey.objects.get(id=key.id).is_active is False

    assert not key_works(stack.a, key.secret)  # at once where it was saved
    wait_until(lambda: not key_works(stack.b, key.secret), "replica b to drop the key",
               timeout_s=REFRESH_S + 10, every_s=0.05)
    followed = time.monotonic() - saved
    say(f"admin edit on a: b refused the revoked key {followed:.2f} s later "
        f"(SLUICE_CONFIG_REFRESH_S={REFRESH_S})")
    assert followed <= REFRESH_S + 4.0  # a refresh period, and slack for a loaded machine


# --- one log, one rollup, one summary -----------------------------------------------------
def request_id_of(client: openai.OpenAI, content: str, *, stream: bool) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": content}], max_tokens=3,
        stream=stream)
    if stream:
        assert any(chunk.choices and chunk.choices[0].finish_reason for chunk in raw.parse())
    return raw.headers["x-request-id"]


def settled_count() -> int:
    """Call rows, once every replica's buffered records are written: the count holds still."""
    count = -1
    while count != (count := Call.objects.count()):
        time.sleep(1.0)
    return count


def test_both_replicas_calls_land_in_one_log_one_rollup_and_one_summary(stack):
    ids: dict[str, list[str]] = {}
    for name, url in (("a", stack.a.url), ("b", stack.b.url), ("nginx", stack.nginx.url)):
        client = sdk(url, stack.keys["main"].secret)
        ids[name] = [request_id_of(client, f"log {name} {i} {TAG}", stream=i % 2 == 1)
                     for i in range(4)]

    everyone = [i for name in ids for i in ids[name]]
    rows = calls_of(everyone)
    assert Counter(c.request_id for c in rows) == Counter(set(everyone))  # each once
    total = settled_count()

    # The worker's rollup task, once the calls are older than the settling time.
    time.sleep(SETTLE_S + 0.5)
    runs = RollupState.objects.filter(pk=1).values_list("rolled_through", flat=True).first()
    rollups_update.apply_async(queue=stack.queue)
    rolled = lambda: MinuteRollup.objects.aggregate(n=Sum("requests"))["n"] or 0  # noqa: E731
    wait_until(lambda: rolled() == total, f"the rollups to count {total} calls")
    # A second run counts nothing twice.
    first_run = RollupState.objects.get(pk=1).rolled_through
    assert first_run != runs
    rollups_update.apply_async(queue=stack.queue)
    wait_until(lambda: RollupState.objects.get(pk=1).rolled_through != first_run,
               "the second rollup run")
    assert rolled() == total

    summaries = {}
    for name, url in (("a", stack.a.url), ("b", stack.b.url), ("nginx", stack.nginx.url)):
        request = urllib.request.Request(url + "/api/stats/summary?minutes=60",
                                         headers={"Authorization": f"Bearer {MASTER}"})
        with urllib.request.urlopen(request, timeout=LONG) as response:
            summaries[name] = json.loads(response.read())["requests"]
    say(f"one log: {total} calls in all; rollup rows sum to {rolled()}; "
        f"/api/stats/summary requests per replica: {summaries}")
    assert summaries == {"a": total, "b": total, "nginx": total}


# --- a replica killed under load ----------------------------------------------------------
@dataclass
class Outcome:
    stream: bool
    started: float
    ended: float = 0.0
    request_id: str = ""  # of the replica that answered (its headers)
    answered: bool = False  # the response started (a stream's headers came)
    ok: bool = False  # the whole answer arrived
    error: str = ""


def call_once(client: openai.OpenAI, i: int, *, stream: bool, on_answer: Callable) -> Outcome:
    outcome = Outcome(stream=stream, started=time.monotonic())
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": f"load {i} {TAG}"}],
            max_tokens=25, stream=stream, extra_body={"ignore_eos": True})  # 1 s each
        outcome.request_id, outcome.answered = raw.headers["x-request-id"], True
        if stream:
            outcome.ok = any([chunk.choices and chunk.choices[0].finish_reason
                              for chunk in raw.parse()])
        else:
            outcome.ok = raw.parse().choices[0].finish_reason is not None
    except Exception as exc:  # a cut stream, or any failure: counted, then asserted on
        outcome.error = repr(exc)
    outcome.ended = time.monotonic()
    on_answer(outcome)
    return outcome


def test_a_replica_killed_under_load_loses_only_the_streams_it_had_started(stack):
    a, b, key = stack.a, stack.b, stack.keys["kill"]
    # Replica b's database goes away first: every call it answers from here on exists only
    # in its journal (and memory) when it dies, so what the replacement brings is all of it.
    stack.relay.cut()
    client = sdk(stack.nginx.url, key.secret)
    done: list[Outcome] = []
    lock = threading.Lock()

    def on_answer(outcome: Outcome) -> None:
        with lock:
            done.append(outcome)

    requests, concurrency = 48, 16
    with ThreadPoolExecutor(max_workers=concurrency) as threads:
        futures = [threads.submit(call_once, client, i, stream=i % 2 == 0, on_answer=on_answer)
                   for i in range(requests)]
        # Kill b once the first wave is answered and the second is a third of the way: its
        # streams have begun (they are cut), its non-streamed calls have not (nginx retries
        # them), and so have the streams still waiting for their first token.
        wait_until(lambda: len(done) >= concurrency * 3 // 4, "the first wave", every_s=0.01)
        time.sleep(0.35)
        killed_at = time.monotonic()
        b.kill()  # SIGKILL
        outcomes = [f.result() for f in futures]

    served = stack.nginx.served()
    in_flight = [o for o in outcomes if o.started <= killed_at < o.ended]
    failed = [o for o in outcomes if not o.ok]
    retried = [served[o.request_id] for o in outcomes
               if o.request_id and len(served[o.request_id]["ports"]) > 1]
    answered_by = Counter(served[o.request_id]["ports"][-1] for o in outcomes if o.ok)
    on_b = [o for o in in_flight if o.request_id and served[o.request_id]["ports"][0] == b.port]
    say(f"kill under load: {requests} requests ({concurrency} at a time, half streamed), "
        f"{len(in_flight)} in flight at the kill, {len(on_b)} of them on b "
        f"({sum(o.stream for o in on_b)} streams); {len(failed)} failed (streams cut after "
        f"their first byte), {len(retried)} retried by nginx on a and answered; answered "
        f"in all by a: {answered_by[a.port]}, by b: {answered_by[b.port]}")
    assert not [o.error for o in failed if not (o.stream and o.answered)]  # all cut mid-stream
    assert all(served[o.request_id]["ports"] == [b.port] for o in failed)
    assert retried and all(e["ports"][0] == b.port and e["status"] == 200 for e in retried)
    assert all(o.ok for o in outcomes if o.started > killed_at)  # after the kill: all fine
    assert len(failed) <= len([o for o in in_flight if o.stream])

    # Every answered call of a is logged; those of b are in its journal only.
    answered = [o.request_id for o in outcomes if o.ok]
    of_a = [i for i in answered if served[i]["ports"][-1] == a.port]
    of_b = [i for i in answered if served[i]["ports"][-1] == b.port]
    calls_of(of_a)
    assert not Call.objects.filter(request_id__in=of_b).exists()
    assert of_b and b.journal_segments()

    # A replacement on b's var dir replays them (no semantic route: it need not load a model).
    committed(lambda: Route.objects.filter(cache_semantic=True).update(cache_semantic=False))
    replacement = replica(database_url=db_url(), var_dir=b.var_dir)
    stack.gateways.append(replacement)
    started = time.monotonic()
    replacement.start(timeout_s=LONG)
    calls_of(of_b)
    say(f"the replacement on b's var dir: {len(of_b)} calls of b from its journal logged "
        f"{time.monotonic() - started:.1f} s after its start")
    rows = Call.objects.filter(api_key_id=key.id)
    by_id = Counter(rows.values_list("request_id", flat=True))
    assert all(by_id[i] == 1 for i in answered) and max(by_id.values()) == 1
    # Bounded: the answered calls, and at most the cut streams besides (recorded just
    # before their end, which never reached the app).
    assert len(answered) <= rows.count() <= len(answered) + len(failed)
