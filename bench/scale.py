"""``python -m bench.scale`` (``make bench-scale``): the figures that docs/scaling.md sizes from.

Four measurements, each of one thing that grows with traffic:

1. **Streams per second per web process at the tail target.** One simulator and one uvicorn
   gateway (bench.stack, pinned as ``make bench`` pins them; its call log on PostgreSQL, as
   deployed), driven at rising concurrency. Each level is a pair of interleaved blocks per path
   (direct, Sluice, Sluice, direct; as ``python -m bench``'s concurrent phase) and reports
   streams/s on both paths, the TTFT Sluice adds at P50 and P99, the gateway's CPU (its
   /proc CPU seconds over the Sluice blocks' wall time) and CPU ms per stream. The headline is
   the highest Sluice rate whose added TTFT P99 stays within 5 ms, and the CPU-bound ceiling,
   1000 / CPU ms per stream: what one core could serve if nothing else limited it. The simulator
   is made fast (short TTFT, quick tokens, a large batch) so that it is not what saturates; the
   direct path's rate says where the load generator and simulator, sharing one core, top out.
   The PostgreSQL connections the gateway holds are counted once it has served traffic.
2. **Call-log inserts per second.** ``analytics.callwrite.calls_insert`` (what the writer
   thread runs) on batches of SLUICE_LOG_BATCH_SIZE records built by ``CallLog.to_record``,
   into a scratch PostgreSQL database: records/s sustained, client and PostgreSQL CPU and WAL
   bytes per record; and, with the inserts in a thread as in the gateway, the longest a 1 ms
   ticker on the main thread (the event loop's place) is kept waiting, against the same ticker
   alone: the writer's longest hold on the interpreter, noise included.
3. **Rollup cost.** ``analytics.rollups.rollups_run`` over the calls just inserted (the first
   run, from nothing), the run a watermark lag later (checks only), then 15 s beat cycles at
   620 calls/s and at 6,200 calls/s (a whole minute of the latter: a run recomputes a dirty
   minute whole, so its cost grows through the minute); ms per 1,000 new calls. Then
   ``analytics.selectors.summary_compute`` (what /api/stats/summary runs) over 15 minutes and
   7 days, just after a run and with the next 15 s of calls at 6,200/s not yet rolled up (the
   summary reads those raw).
4. **Redis operations per request.** A gateway on Redis (its own database: only that one is
   flushed), a key with RPM and TPM limits, a route with the exact cache on; N misses then N
   hits, one at a time. Every command Redis runs on that database, those inside Lua scripts
   too, is counted with MONITOR between markers; ``INFO commandstats`` deltas (server-wide, so
   other users of the server show up in them) are kept as a cross-check. Then as many misses
   and hits again, 16 at a time and without MONITOR (it costs Redis CPU of its own), for
   Redis' CPU per request from ``INFO cpu``: what sizes Redis better than a count of commands,
   since a command inside a script costs less than one sent over the network; and each
   command the gateway sends, alone, 64 at a time (Redis busier, so cheaper per call).

It writes ``bench/results/scale-<UTC stamp>.md/.json`` and ``scale-latest.md``, creates the
scratch database (``--scratch-db``, dropped at the end) on the server of ``--database-url``,
and never touches another database. About two and a half minutes on a 2-core machine.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.__main__ import Tally, concurrent, machine_facts
from bench.client import Target, stream_timed
from bench.report import percentile
from bench.stack import ROUTE, SERVED_MODEL, Pinning, SimSettings, Stack, proc_cpu_s

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TEST_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
TAIL_TARGET_MS = 5.0
CACHED_ROUTE = "cached"
KEY_PLAINTEXT = "sk-sluice-scale-bench-key"
MARK = "sluice-scale-mark:"
TICK_S = 0.001
Record = dict[str, Any]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    env_db = os.environ.get("DATABASE_URL", "")
    p.add_argument("--database-url", default=env_db if env_db.startswith("postgres") else
                   TEST_DATABASE_URL, help="a PostgreSQL server (only its address is used)")
    p.add_argument("--scratch-db", default="sluice_scale",
                   help="database created, used and dropped on that server")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/9",
                   help="the Redis database the gateway uses (flushed before and after)")
    p.add_argument("--levels", default="4,8,16,32,64,128", help="streams in flight, per level")
    p.add_argument("--stream-requests", type=int, default=600,
                   help="requests per path per level (at least 8 x the level)")
    p.add_argument("--stream-tokens", type=int, default=64, help="answer length of a stream")
    # 1 ms between tokens: quick, yet each token still reaches the gateway as its own read
    # (as a real stream's do), so the CPU per stream counts every chunk's pass-through.
    p.add_argument("--tokens-per-s", type=float, default=1000.0,
                   help="simulator decode speed per sequence")
    p.add_argument("--ttft-ms", type=float, default=20.0, help="simulator time to first token")
    p.add_argument("--insert-records", type=int, default=100_000)
    p.add_argument("--gil-records", type=int, default=20_000)
    p.add_argument("--redis-requests", type=int, default=200, help="misses, then as many hits")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    args = p.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    return args


def log(message: str) -> None:
    print(f"[bench.scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# --- the scratch database -------------------------------------------------------------------


def db_url(base: str, name: str) -> str:
    """`base` with its database name replaced by `name`."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path="/" + name))


def scratch_recreate(base: str, name: str, *, create: bool = True) -> None:
    """Drop the scratch database if it is there (a run that died), and create it afresh."""
    import psycopg

    with psycopg.connect(db_url(base, "postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            admin.execute(f'CREATE DATABASE "{name}"')


def django_setup(database_url: str) -> None:
    """This process's Django on the scratch database, migrated (the day partitions included)."""
    os.environ.update({"DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "config.settings",
                       "SLUICE_VAR_DIR": tempfile.mkdtemp(prefix="sluice-scale-")})
    os.environ.pop("REDIS_URL", None)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)


def config_clear() -> None:
    """No backend, route or key left by the previous gateway (each Stack seeds its own)."""
    from proxy.models import ApiKey, Backend, Route

    for model in (ApiKey, Route, Backend):
        model.objects.all().delete()


def calls_clear() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("TRUNCATE analytics_call, analytics_minuterollup, analytics_hourrollup, "
                    "analytics_rollupstate")


def pg_scalar(sql: str) -> Any:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def pg_connections_other(database_url: str) -> int:
    """Connections to the scratch database other than this process's own."""
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND pid <> pg_backend_pid()").fetchone()[0]


# --- 1. streams per second per web process --------------------------------------------------


def run_delay_s(pid: int) -> float:
    """Seconds the process's main thread (the event loop) has waited, runnable, for a CPU:
    the time other processes on its core took from it."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def level_row(concurrency: int, out: dict[str, Any], cpu_s: float,
              waited_s: float) -> dict[str, Any]:
    d, s = out["direct"], out["sluice"]
    cpu_ms = cpu_s * 1000 / max(1, s["requests"])
    return {
        "concurrency": concurrency, "requests_per_path": s["requests"],
        "direct_rps": d["rps"], "sluice_rps": s["rps"], "sluice_vs_direct": s["rps"] / d["rps"],
        "direct_ttft_p50_ms": d["ttft_p50_ms"], "direct_ttft_p99_ms": d["ttft_p99_ms"],
        "sluice_ttft_p50_ms": s["ttft_p50_ms"], "sluice_ttft_p99_ms": s["ttft_p99_ms"],
        "added_ttft_p50_ms": s["ttft_p50_ms"] - d["ttft_p50_ms"],
        "added_ttft_p99_ms": s["ttft_p99_ms"] - d["ttft_p99_ms"],
        "gateway_cpu_pct": cpu_s / s["wall_s"] * 100, "cpu_ms_per_stream": cpu_ms,
        "gateway_cpu_wait_pct": waited_s / s["wall_s"] * 100,
        "cpu_ceiling_rps": 1000 / cpu_ms if cpu_ms else None,
    }


async def streams_measure(stack: Stack, *, levels: Sequence[int], requests: int,
                          tokens: int) -> tuple[list[dict[str, Any]], Tally]:
    top = max(levels)
    targets = {
        "direct": Target("direct", stack.direct_url, SERVED_MODEL, "unused", concurrency=top),
        "sluice": Target("sluice", stack.sluice_url, ROUTE, stack.master_key, concurrency=top),
    }
    for t in targets.values():
        await t.open()
    tally, rows = Tally(), []
    gc.collect()
    gc.freeze()  # the load generator's own collections should not land in the samples
    try:
        for level in levels:
            n = max(requests, level * 8)
            log(f"streams: {level} in flight, {n} per path")
            waited = run_delay_s(stack.gateway_pid)
            out, cpu = await concurrent(targets, tally, requests=n, blocks=2, concurrency=level,
                                        tokens=tokens, pid=stack.gateway_pid)
            waited = run_delay_s(stack.gateway_pid) - waited
            rows.append(level_row(level, out, cpu, waited))
    finally:
        for t in targets.values():
            await t.close()
    return rows, tally


def streams_headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest Sluice rate within the tail target, and the CPU ceiling at the peak rate."""
    within = [r for r in rows if r["added_ttft_p99_ms"] <= TAIL_TARGET_MS]
    best = max(within, key=lambda r: r["sluice_rps"]) if within else None
    peak = max(rows, key=lambda r: r["sluice_rps"])
    return {
        "tail_target_ms": TAIL_TARGET_MS,
        "streams_per_s_at_target": best["sluice_rps"] if best else None,
        "concurrency_at_target": best["concurrency"] if best else None,
        "peak_streams_per_s": peak["sluice_rps"], "peak_concurrency": peak["concurrency"],
        "peak_added_ttft_p99_ms": peak["added_ttft_p99_ms"],
        "cpu_ms_per_stream_at_peak": peak["cpu_ms_per_stream"],
        "cpu_ceiling_streams_per_s": peak["cpu_ceiling_rps"],
    }


def streams_part(args: argparse.Namespace, scratch: str, pinning: Pinning) -> dict[str, Any]:
    sim = SimSettings(ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s, max_num_seqs=1024)
    config_clear()
    with Stack(sim_settings=sim, pinning=pinning, database_url=scratch) as stack:
        rows, tally = asyncio.run(streams_measure(stack, levels=args.levels,
                                                  requests=args.stream_requests,
                                                  tokens=args.stream_tokens))
        connections = pg_connections_other(scratch)
    return {"levels": rows, "headline": streams_headline(rows),
            "pg_connections_per_web_process": connections,
            "responses": {"total": tally.total, "ok": tally.ok, "failures": tally.failures},
            "sim": {"ttft_ms": sim.ttft_ms, "tokens_per_s": sim.tokens_per_s,
                    "max_num_seqs": sim.max_num_seqs, "stream_tokens": args.stream_tokens},
            "loadavg_after": loadavg()}


# --- 4. Redis operations per request --------------------------------------------------------


@dataclass
class RedisMonitor:
    """Every command Redis runs on one database, Lua's included ("lua:" prefix), counted per
    phase; a phase starts at an ECHO marker that this process sends on that database."""

    url: str
    phases: dict[str, Counter[str]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        import redis

        self.db = int(urlsplit(self.url).path.strip("/") or 0)
        self.client = redis.Redis.from_url(self.url)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 5
        while "start" not in self.seen and time.monotonic() < deadline:
            self.client.echo(MARK + "start")  # until MONITOR is listening
            time.sleep(0.05)

    def mark(self, phase: str) -> None:
        self.client.echo(MARK + phase)
        deadline = time.monotonic() + 5
        while phase not in self.seen and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.mark("stop")
        if self._thread is not None:
            self._thread.join(5)

    def cpu_s(self) -> float:
        """Redis' own CPU seconds (user + system), the whole server's."""
        cpu = self.client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def commandstats(self) -> dict[str, int]:
        return {name.removeprefix("cmdstat_"): int(v["calls"])
                for name, v in self.client.info("commandstats").items()}

    def _listen(self) -> None:
        import redis

        phase = ""
        with redis.Redis.from_url(self.url).monitor() as monitor:
            for c in monitor.listen():
                command = c["command"]
                if c["db"] != self.db:
                    continue
                if command.startswith("ECHO " + MARK):
                    phase = command.removeprefix("ECHO " + MARK)
                    self.seen.append(phase)
                    if phase == "stop":
                        return
                    self.phases.setdefault(phase, Counter())
                    continue
                name = command.split(" ", 1)[0].lower()
                if phase and name != "info":
                    lua = "lua:" if c["client_type"] == "lua" else ""
                    self.phases[phase][lua + name] += 1


def redis_config_seed() -> None:
    """A key with RPM and TPM limits and a route with the exact cache, before the gateway
    starts (it reads them at start-up)."""
    from proxy.models import ApiKey, Route

    key, _ = ApiKey.issue(name="scale", plaintext=KEY_PLAINTEXT)
    ApiKey.objects.filter(id=key.id).update(rpm_limit=10_000_000, tpm_limit=1_000_000_000)
    Route.objects.create(name=CACHED_ROUTE, model=SERVED_MODEL, cache_exact=True)


def seeded(body: bytes, seed: int) -> bytes:
    """The same request with a `seed`: a different exact-cache key per seed."""
    return body[:-1] + f',"seed":{seed}}}'.encode()


async def cache_outcome(target: Target, body: bytes) -> str:
    assert target.session is not None
    async with target.session.post(target.url, data=body) as resp:
        await resp.read()
        return resp.headers.get("x-sluice-cache", f"none (status {resp.status})")


def per_request(counts: Counter[str], n: int) -> dict[str, float]:
    return {name: round(calls / n, 3) for name, calls in sorted(counts.items())}


def stats_delta(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    skip = {"info", "echo", "monitor"}
    delta = {k: v - before.get(k, 0) for k, v in after.items() if k not in skip}
    return {k: round(v / n, 3) for k, v in sorted(delta.items()) if v}


async def redis_requests(stack: Stack, monitor: RedisMonitor, n: int) -> dict[str, Any]:
    target = Target("cached", stack.sluice_url, CACHED_ROUTE, KEY_PLAINTEXT, concurrency=1)
    await target.open()
    body = target.body(stream=True, max_tokens=32)
    hit_body, failed = seeded(body, -1), 0
    try:
        for i in range(10):  # warm-up: connections, scripts loaded, one answer stored
            await stream_timed(target, seeded(body, -100 - i))
        await stream_timed(target, hit_body)
        await asyncio.sleep(0.5)
        outcomes = {"miss": await cache_outcome(target, seeded(body, -2)),
                    "hit": await cache_outcome(target, hit_body)}
        await asyncio.sleep(0.5)
        monitor.start()
        monitor.mark("idle")
        await asyncio.sleep(2.0)
        stats = {"misses": monitor.commandstats()}
        monitor.mark("misses")
        for i in range(n):
            failed += not (await stream_timed(target, seeded(body, i))).ok
        await asyncio.sleep(0.5)  # the store and the TPM correction run after [DONE]
        stats["hits"] = monitor.commandstats()
        monitor.mark("hits")
        for _ in range(n):
            failed += not (await stream_timed(target, hit_body)).ok
        await asyncio.sleep(0.5)
        stats["end"] = monitor.commandstats()
        monitor.stop()
        cpu = await redis_cpu(stack, monitor, body, n)
    finally:
        await target.close()
    return {"outcomes": outcomes, "failed": failed, "stats": stats, "cpu_us": cpu}


async def requests_run(target: Target, bodies: Sequence[bytes], concurrency: int) -> int:
    """Stream every body, `concurrency` at a time; return how many failed."""
    pending, failed = list(reversed(bodies)), 0

    async def worker() -> None:
        nonlocal failed
        while pending:
            failed += not (await stream_timed(target, pending.pop())).ok

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


async def redis_cpu(stack: Stack, monitor: RedisMonitor, body: bytes,
                    n: int) -> dict[str, float]:
    """Redis' CPU per miss and per hit, without MONITOR (which costs Redis CPU itself):
    fresh seeds, then one stored answer over and over, 16 at a time. What Redis burns while
    idle (its timers, other users of the server) over as long is taken off."""
    target = Target("cached", stack.sluice_url, CACHED_ROUTE, KEY_PLAINTEXT, concurrency=16)
    await target.open()
    phases = {"per_miss": [seeded(body, 10_000 + i) for i in range(n)],
              "per_hit": [seeded(body, -1)] * n}
    out: dict[str, float] = {"failed": 0}
    try:
        cpu, started = monitor.cpu_s(), time.perf_counter()
        await asyncio.sleep(2.0)
        idle_per_s = (monitor.cpu_s() - cpu) / (time.perf_counter() - started)
        for name, bodies in phases.items():
            cpu, started = monitor.cpu_s(), time.perf_counter()
            out["failed"] += await requests_run(target, bodies, 16)
            await asyncio.sleep(0.5)  # the store and the TPM correction run after [DONE]
            busy = monitor.cpu_s() - cpu - idle_per_s * (time.perf_counter() - started)
            out[name] = busy * 1e6 / n
    finally:
        await target.close()
    return out | {"idle_ms_per_s": idle_per_s * 1000}


async def redis_op_costs(url: str, *, n: int = 4000, concurrency: int = 64) -> dict[str, float]:
    """Redis CPU µs per call of each command the gateway sends, `concurrency` at a time from
    this process: under load Redis serves several ready clients per wake-up, so a call costs
    less than one at a time. Keys under sluice-scale: in the bench's own database."""
    import redis.asyncio as aredis

    from proxy.ratelimit import _LUA_ADJUST, _LUA_TAKE

    client = aredis.Redis.from_url(url, max_connections=concurrency)
    take, adjust = client.register_script(_LUA_TAKE), client.register_script(_LUA_ADJUST)
    answer = b"x" * 1500  # a short stored answer
    ops: dict[str, Callable[[int], Any]] = {
        "evalsha take (2 buckets)": lambda i: take(
            keys=[f"sluice-scale:{i % 50}:r", f"sluice-scale:{i % 50}:t"],
            args=[10_000_000, 1, 1_000_000_000, 100]),
        "evalsha adjust (1 bucket)": lambda i: adjust(
            keys=[f"sluice-scale:{i % 50}:t"], args=[-50, 1_000_000_000]),
        "get": lambda i: client.get("sluice-scale:answer"),
        "set 1.5 KB ex": lambda i: client.set(f"sluice-scale:c:{i}", answer, ex=60),
    }
    out = {}
    try:
        for name, op in ops.items():
            await op(0)  # loads the script

            async def worker(k: int, op: Callable[[int], Any] = op) -> None:
                for j in range(n // concurrency):
                    await op(k * n + j)

            cpu = await _redis_cpu_s(client)
            await asyncio.gather(*(worker(k) for k in range(concurrency)))
            out[name] = (await _redis_cpu_s(client) - cpu) * 1e6 / n
    finally:
        await client.flushdb()
        await client.aclose()
    return out


async def _redis_cpu_s(client: Any) -> float:
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def redis_part(args: argparse.Namespace, scratch: str, pinning: Pinning) -> dict[str, Any]:
    import redis

    n = args.redis_requests
    redis.Redis.from_url(args.redis_url).flushdb()  # this database only
    config_clear()
    redis_config_seed()
    monitor = RedisMonitor(args.redis_url)
    with Stack(pinning=pinning, database_url=scratch, redis_url=args.redis_url) as stack:
        got = asyncio.run(redis_requests(stack, monitor, n))
    monitor.client.flushdb()
    monitor.client.close()
    op_costs = asyncio.run(redis_op_costs(args.redis_url))
    s = got["stats"]
    return {
        "requests_each": n, "failed": got["failed"] + got["cpu_us"]["failed"],
        "cache_header_check": got["outcomes"],
        "per_miss": per_request(monitor.phases.get("misses", Counter()), n),
        "per_hit": per_request(monitor.phases.get("hits", Counter()), n),
        "idle_per_s": per_request(monitor.phases.get("idle", Counter()), 2),
        "commandstats_per_miss": stats_delta(s["misses"], s["hits"], n),
        "commandstats_per_hit": stats_delta(s["hits"], s["end"], n),
        "redis_cpu_us_per_miss": got["cpu_us"]["per_miss"],
        "redis_cpu_us_per_hit": got["cpu_us"]["per_hit"],
        "redis_idle_cpu_ms_per_s": got["cpu_us"]["idle_ms_per_s"],
        "redis_cpu_us_per_op_64_at_once": op_costs,
        "limits": "key RPM and TPM (route limits none)", "loadavg_after": loadavg(),
    }


# --- 2. call-log inserts ----------------------------------------------------------------------


def record_template() -> Record:
    """One streamed call's record, as the proxy hands it to the writer."""
    from proxy.accounting import CallLog
    from proxy.snapshot import KeyInfo, RouteInfo, snapshot_current

    log_ = CallLog(endpoint="chat/completions")
    log_.key = KeyInfo(id=1, name="app-1")
    log_.route = RouteInfo(name="chat", model="big-70b", baseline_model="big-70b")
    log_.requested_model, log_.served_model, log_.backend = "chat", "big-70b", "sim-1"
    log_.stream, log_.cache, log_.backend_reason = True, "miss", "least_load"
    log_.prompt_tokens, log_.completion_tokens, log_.ttft_ms = 812, 96, 21.5
    return log_.to_record(snapshot_current())


def records_build(n: int, *, start: datetime, end: datetime, seed: int) -> list[Record]:
    """`n` records over [start, end) in time order, each its own request id, with the
    routes, backends, tokens and latencies varied."""
    rng, template = random.Random(seed), record_template()
    step = (end - start) / max(1, n)
    out = []
    for i in range(n):
        row = dict(template)
        latency = rng.lognormvariate(5.9, 0.6)
        row.update(created_at=start + step * i, request_id=f"req-{rng.getrandbits(128):032x}",
                   api_key_id=1 + i % 5, api_key_name=f"app-{1 + i % 5}",
                   route=("chat", "chat", "code")[i % 3], backend=f"sim-{1 + i % 3}",
                   prompt_tokens=rng.randint(50, 2000), completion_tokens=rng.randint(20, 500),
                   latency_ms=round(latency, 3), ttft_ms=round(latency * 0.15, 3),
                   status_code=502 if i % 100 == 0 else 200,
                   error_type="upstream_error" if i % 100 == 0 else "")
        out.append(row)
    return out


def batches(records: list[Record], size: int) -> list[list[Record]]:
    return [records[i:i + size] for i in range(0, len(records), size)]


def inserts_measure(records: list[Record], *, batch: int) -> dict[str, Any]:
    """calls_insert batch after batch on this thread: rate, time per batch, CPU on both sides
    (the PostgreSQL backend is a process on this machine) and WAL written."""
    from analytics.callwrite import calls_insert

    pg_pid = pg_scalar("SELECT pg_backend_pid()")
    wal0 = pg_scalar("SELECT pg_current_wal_lsn()")
    cpu0, pg0, times = time.process_time(), proc_cpu_s(pg_pid) or 0.0, []
    started = time.perf_counter()
    for chunk in batches(records, batch):
        times.append(_timed(lambda chunk=chunk: calls_insert(chunk)))
    wall = time.perf_counter() - started
    client_cpu, pg_cpu = time.process_time() - cpu0, (proc_cpu_s(pg_pid) or 0.0) - pg0
    wal = pg_scalar(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{wal0}')")
    per_k = 1000 / len(records)
    return {
        "records": len(records), "batch": batch, "wall_s": wall,
        "records_per_s": len(records) / wall,
        "batch_ms_p50": percentile(times, 50) * 1000, "batch_ms_p99": percentile(times, 99) * 1000,
        "client_cpu_ms_per_1k": client_cpu * 1000 * per_k,
        "pg_cpu_ms_per_1k": pg_cpu * 1000 * per_k,
        "wal_bytes_per_record": float(wal) / len(records),
    }


def ticks(until: Callable[[], bool]) -> list[float]:
    """How late each 1 ms sleep of this thread wakes, until `until()`: the time it waited for
    the interpreter (and for the CPU, on a busy machine)."""
    lags = []
    while not until():
        t = time.perf_counter()
        time.sleep(TICK_S)
        lags.append(time.perf_counter() - t - TICK_S)
    return lags


def gil_measure(records: list[Record], *, batch: int) -> dict[str, Any]:
    """The writer in a thread, as in the gateway, with a ticker in the event loop's place;
    then the ticker alone for as long."""
    from django.db import connection

    from analytics.callwrite import calls_insert

    done = threading.Event()

    def writer() -> None:
        for chunk in batches(records, batch):
            calls_insert(chunk)
        connection.close()
        done.set()

    started = time.perf_counter()
    threading.Thread(target=writer, daemon=True).start()
    busy = ticks(done.is_set)
    seconds = time.perf_counter() - started
    end = time.perf_counter() + seconds
    alone = ticks(lambda: time.perf_counter() >= end)
    return {
        "records": len(records), "seconds": seconds,
        "with_writer_max_ms": max(busy) * 1000, "with_writer_p99_ms": percentile(busy, 99) * 1000,
        "alone_max_ms": max(alone) * 1000, "alone_p99_ms": percentile(alone, 99) * 1000,
    }


def table_bytes_per_row() -> float:
    rows = pg_scalar("SELECT count(*) FROM analytics_call")
    size = pg_scalar("SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                     "WHERE inhparent = 'analytics_call'::regclass")
    return float(size or 0) / max(1, rows)


# --- 3. rollups -------------------------------------------------------------------------------


def rollup_timed(now: datetime) -> dict[str, Any]:
    from analytics.rollups import rollups_run

    pg_pid = pg_scalar("SELECT pg_backend_pid()")
    pg0 = proc_cpu_s(pg_pid) or 0.0
    started = time.perf_counter()
    result = rollups_run(now=now)
    return {"ms": (time.perf_counter() - started) * 1000, "minutes": result.minutes,
            "hours": result.hours, "pg_cpu_ms": ((proc_cpu_s(pg_pid) or 0.0) - pg0) * 1000}


BEAT_CYCLES = ((620, 1), (6200, 4))  # (calls/s, 15 s slices from a minute's start)
PERIOD = timedelta(seconds=15)  # the beat's rollups-update period


def rollups_measure(*, t0: datetime, calls: int, batch: int) -> dict[str, Any]:
    """The first run over `calls` calls before t0, the run a lag later, then beat cycles (15 s
    of calls, then a run) from the start of a minute: a run recomputes its dirty minutes whole,
    so the fourth of a minute re-reads all 60 s of it. Then the summary over 15 minutes and
    7 days, just after a run and with the next 15 s of calls not rolled up yet."""
    from analytics.rollups import SETTLE_S, WATERMARK_LAG_S

    settle = timedelta(seconds=SETTLE_S + 0.5)
    first = rollup_timed(t0 + settle)
    first["ms_per_1k_calls"] = first["ms"] * 1000 / calls
    at = t0 + timedelta(seconds=WATERMARK_LAG_S) + settle
    lag = rollup_timed(at)
    cycles = []
    for rate, slices in BEAT_CYCLES:
        at = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for k in range(slices):
            calls_spread(rate * 15, start=at, batch=batch, seed=100 + len(cycles))
            at += PERIOD
            run = rollup_timed(at + settle)
            cycles.append({"calls_per_s": rate, "calls": rate * 15, "minute_s": 15 * (k + 1),
                           **run, "ms_per_1k_calls": run["ms"] * 1000 / (rate * 15)})
    fresh = summary_timed(now=at + settle)
    calls_spread(BEAT_CYCLES[-1][0] * 15, start=at, batch=batch, seed=99)
    return {"calls_first_run": calls, "first_run": first, "run_a_lag_later": lag,
            "beat_cycles": cycles, "summary_ms_after_a_run": fresh,
            "summary_ms_15_s_raw": summary_timed(now=at + PERIOD),
            "raw_rate": BEAT_CYCLES[-1][0]}


def calls_spread(n: int, *, start: datetime, batch: int, seed: int) -> None:
    """`n` calls over the 15 s from `start`, inserted as the writer would (not timed)."""
    from analytics.callwrite import calls_insert

    for chunk in batches(records_build(n, start=start, end=start + PERIOD, seed=seed), batch):
        calls_insert(chunk)


def summary_timed(*, now: datetime) -> dict[str, float]:
    """Median of 5 `summary_compute` (what /api/stats/summary runs) over 15 min and 7 days."""
    from analytics.selectors import summary_compute

    return {label: statistics.median(_timed(lambda m=m: summary_compute(minutes=m, now=now))
                                     for _ in range(5)) * 1000
            for label, m in (("15 min", 15), ("7 days", 7 * 24 * 60))}


def database_part(args: argparse.Namespace) -> dict[str, Any]:
    from django.conf import settings
    from django.utils import timezone

    batch = settings.SLUICE_LOG_BATCH_SIZE
    calls_clear()
    t0 = timezone.now() - timedelta(minutes=3)
    window = (t0 - timedelta(minutes=10), t0)
    log(f"inserts: {args.insert_records} records, batches of {batch}")
    records = records_build(args.insert_records, start=window[0], end=window[1], seed=1)
    inserts = inserts_measure(records, batch=batch)
    log(f"inserts in a thread against a 1 ms ticker: {args.gil_records} records")
    gil = gil_measure(records_build(args.gil_records, start=window[0], end=window[1], seed=2),
                      batch=batch)
    inserts["table_bytes_per_row"] = table_bytes_per_row()
    log("rollups")
    rollups = rollups_measure(t0=t0, calls=args.insert_records + args.gil_records,
                              batch=batch)
    return {"inserts": inserts, "gil": gil, "rollups": rollups, "loadavg_after": loadavg()}


# --- the report -------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def streams_md(s: dict[str, Any]) -> list[str]:
    h, sim = s["headline"], s["sim"]
    lines = [
        "## 1. Streams per second, one web process (one core)", "",
        f"Simulator: TTFT {sim['ttft_ms']:g} ms, {sim['tokens_per_s']:g} tokens/s per sequence, "
        f"max_num_seqs {sim['max_num_seqs']}; {sim['stream_tokens']} tokens per stream. "
        f"Responses: {s['responses']['ok']} of {s['responses']['total']} ok.", "",
        "| in flight | direct streams/s | Sluice streams/s | Sluice/direct | added TTFT P50 ms "
        "| added TTFT P99 ms | Sluice TTFT P99 ms | gateway CPU % | waited for CPU % "
        "| CPU ms/stream | CPU ceiling streams/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['concurrency']} | {_f(r['direct_rps'])} | {_f(r['sluice_rps'])} | "
              f"{r['sluice_vs_direct'] * 100:.1f} % | {_f(r['added_ttft_p50_ms'], 2)} | "
              f"{_f(r['added_ttft_p99_ms'], 2)} | {_f(r['sluice_ttft_p99_ms'], 2)} | "
              f"{_f(r['gateway_cpu_pct'])} | {_f(r['gateway_cpu_wait_pct'])} | "
              f"{_f(r['cpu_ms_per_stream'], 2)} | "
              f"{_f(r['cpu_ceiling_rps'], 0)} |" for r in s["levels"]]
    return lines + [
        "", f"- **Highest Sluice rate with added TTFT P99 <= {h['tail_target_ms']:g} ms: "
        f"{_f(h['streams_per_s_at_target'])} streams/s** (at {h['concurrency_at_target']} "
        "in flight)",
        f"- Peak: {_f(h['peak_streams_per_s'])} streams/s at {h['peak_concurrency']} in flight "
        f"(added TTFT P99 {_f(h['peak_added_ttft_p99_ms'], 2)} ms), "
        f"{_f(h['cpu_ms_per_stream_at_peak'], 2)} CPU ms per stream: CPU-bound ceiling "
        f"**{_f(h['cpu_ceiling_streams_per_s'], 0)} streams/s per core**",
        f"- PostgreSQL connections held by the web process after the run: "
        f"{s['pg_connections_per_web_process']}", ""]


def database_md(d: dict[str, Any]) -> list[str]:
    i, g, r = d["inserts"], d["gil"], d["rollups"]
    lines = [
        "## 2. Call-log inserts (PostgreSQL, COPY via a temp table)", "",
        f"- {i['records']:,} records in batches of {i['batch']}: **{_f(i['records_per_s'], 0)} "
        f"records/s** from one writer; batch P50 {_f(i['batch_ms_p50'], 2)} ms, "
        f"P99 {_f(i['batch_ms_p99'], 2)} ms",
        f"- CPU per 1,000 records: writer {_f(i['client_cpu_ms_per_1k'])} ms, PostgreSQL "
        f"backend {_f(i['pg_cpu_ms_per_1k'])} ms; WAL {_f(i['wal_bytes_per_record'], 0)} "
        f"bytes/record; table + indexes {_f(i['table_bytes_per_row'], 0)} bytes/row",
        f"- Writer in a thread ({g['records']:,} records, {_f(g['seconds'], 1)} s), a 1 ms "
        f"ticker's longest wait: **{_f(g['with_writer_max_ms'], 2)} ms** (P99 "
        f"{_f(g['with_writer_p99_ms'], 2)} ms); ticker alone {_f(g['alone_max_ms'], 2)} ms "
        f"(P99 {_f(g['alone_p99_ms'], 2)} ms)", "",
        "## 3. Rollups", "",
        "| run | calls | ms | ms per 1,000 calls | minutes / hours recomputed "
        "| PostgreSQL CPU ms |", "|---|---:|---:|---:|---:|---:|",
        _rollup_row("first run, from nothing", r["calls_first_run"], r["first_run"]),
        _rollup_row("a watermark lag later (checks)", None, r["run_a_lag_later"]),
    ]
    lines += [_rollup_row(f"beat cycle: 15 s at {c['calls_per_s']:,} calls/s, the minute's "
                          f"first {c['minute_s']} s", c["calls"], c) for c in r["beat_cycles"]]
    fresh, raw = r["summary_ms_after_a_run"], r["summary_ms_15_s_raw"]
    return lines + [
        "", "Summary (`summary_compute`, what /api/stats/summary runs), median of 5, over this "
        "run's ~15 minutes of calls:",
        f"- just after a run: 15 min {_f(fresh['15 min'], 1)} ms, 7 days "
        f"{_f(fresh['7 days'], 1)} ms",
        f"- with 15 s of calls at {r['raw_rate']:,} calls/s not rolled up yet (read raw): "
        f"15 min {_f(raw['15 min'], 1)} ms, 7 days {_f(raw['7 days'], 1)} ms", ""]


def _rollup_row(name: str, calls: int | None, run: dict[str, Any]) -> str:
    per_k = _f(run["ms"] * 1000 / calls, 2) if calls else "-"
    return (f"| {name} | {calls or '-'} | {_f(run['ms'])} | {per_k} | "
            f"{run['minutes']} / {run['hours']} | {_f(run['pg_cpu_ms'])} |")


def redis_md(r: dict[str, Any]) -> list[str]:
    def fmt(counts: dict[str, float]) -> str:
        total = sum(counts.values())
        return f"**{total:g}**: " + ", ".join(f"{k} {v:g}" for k, v in counts.items())

    return [
        "## 4. Redis commands per request", "",
        f"{r['requests_each']} streamed misses, then {r['requests_each']} hits, one at a time; "
        f"{r['limits']}, exact cache on; failed responses {r['failed']}; `x-sluice-cache` "
        f"check: {r['cache_header_check']}. Counted with MONITOR on the gateway's database "
        "(\"lua:\" = run inside a script, not a round trip).", "",
        f"- per miss: {fmt(r['per_miss'])}",
        f"- per hit: {fmt(r['per_hit'])}",
        f"- idle, per second: {fmt(r['idle_per_s']) if r['idle_per_s'] else '0'}",
        f"- Redis CPU (its `INFO cpu`, whole server, without MONITOR, 16 at a time): "
        f"**{_f(r['redis_cpu_us_per_miss'])} µs per miss, {_f(r['redis_cpu_us_per_hit'])} µs "
        f"per hit** (idle: {_f(r['redis_idle_cpu_ms_per_s'], 2)} ms/s, taken off)",
        "- Redis CPU µs per call, 64 calls at a time from one client: " + ", ".join(
            f"{k} {v:.1f}" for k, v in r["redis_cpu_us_per_op_64_at_once"].items()),
        f"- `INFO commandstats` (whole server) per miss: {r['commandstats_per_miss']}",
        f"- `INFO commandstats` (whole server) per hit: {r['commandstats_per_hit']}", ""]


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    head = [
        "# Sluice at scale: the measured inputs", "",
        f"- {data['started_utc']}, {data['wall_s']:.0f} s; {m['nproc']} CPUs ({m['cpu_model']}), "
        f"Python {m['python']}, commit {m['commit']}; {data['pinning']}",
        f"- load average (1, 5, 15 min) at start {data['loadavg_start']}, after the streams "
        f"{data['streams']['loadavg_after']}, after Redis {data['redis']['loadavg_after']}, "
        f"after the database part {data['database']['loadavg_after']}", ""]
    return "\n".join(head + streams_md(data["streams"]) + database_md(data["database"])
                     + redis_md(data["redis"]))


def results_write(data: dict[str, Any], out: Path, started: datetime) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"scale-{started:%Y%m%dT%H%M%SZ}"
    text = markdown(data)
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2, sort_keys=True,
                                                    default=str) + "\n")
    (out / "scale-latest.md").write_text(text)
    print(text)
    return stem


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, t0 = datetime.now(UTC), time.perf_counter()
    data: dict[str, Any] = {"started_utc": f"{started:%Y-%m-%d %H:%M:%S} UTC",
                            "machine": machine_facts(), "loadavg_start": loadavg()}
    pinning = Pinning.choose(True)
    data["pinning"] = pinning.describe()
    scratch = db_url(args.database_url, args.scratch_db)
    log(f"scratch database {args.scratch_db} on {urlsplit(args.database_url).hostname}")
    scratch_recreate(args.database_url, args.scratch_db)
    try:
        django_setup(scratch)
        data["streams"] = streams_part(args, scratch, pinning)
        log("Redis commands per request")
        data["redis"] = redis_part(args, scratch, pinning)
        data["database"] = database_part(args)
    finally:
        from django.db import connections

        connections.close_all()
        scratch_recreate(args.database_url, args.scratch_db, create=False)
    data["wall_s"] = time.perf_counter() - t0
    stem = results_write(data, args.out, started)
    log(f"wrote {stem}.md/.json and scale-latest.md in {data['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
