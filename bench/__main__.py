"""``python -m bench``: direct vs through Sluice, interleaved, in one run.

Why interleaved: on a 2-core machine, background noise (another process, CPU frequency,
the simulator's own GC) drifts over seconds. Measuring all direct requests and then all
Sluice requests would charge that drift to whichever path ran second; alternating request by
request (one in flight) and block by block (concurrent) spreads it over both.

Phases:
1. warm-up (discarded): connections opened, code paths and caches warm on every process;
2. one request in flight: per round, one streaming and one non-streaming request on each
   path, the path order swapped every round;
3. ``--concurrency`` streams in flight: blocks of requests per path, in the order
   direct, Sluice, Sluice, direct, ... so that a linear drift cancels;
4. the gateway's RSS, its CPU per request, and the checks (every answer 200 with text, and
   one call record per Sluice request once the gateway has flushed on shutdown).

Exit status 1 when any check failed: the report still gets written, headed by the failures.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.client import Result, Target, plain_timed, stream_timed
from bench.report import Paired, markdown, percentile
from bench.stack import (
    ROOT,
    ROUTE,
    SERVED_MODEL,
    Pinning,
    SimSettings,
    Stack,
    cpu_steal_s,
    proc_cpu_s,
    proc_rss_kib,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=300,
                   help="one-in-flight rounds per path (each: one stream + one non-stream)")
    p.add_argument("--warmup", type=int, default=20, help="discarded rounds before measuring")
    p.add_argument("--concurrency", type=int, default=16, help="streams in flight in phase 3")
    p.add_argument("--stream-requests", type=int, default=800,
                   help="requests per path in the concurrent phase")
    p.add_argument("--stream-blocks", type=int, default=4,
                   help="alternating blocks per path the concurrent requests are split into")
    p.add_argument("--max-tokens", type=int, default=32,
                   help="answer length at one request in flight")
    p.add_argument("--stream-tokens", type=int, default=64,
                   help="answer length in the concurrent phase")
    p.add_argument("--ttft-ms", type=float, default=20.0, help="simulator time to first token")
    p.add_argument("--tokens-per-s", type=float, default=500.0,
                   help="simulator decode speed per sequence")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the gateway and the load generator to separate CPUs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.concurrency < 1 or args.stream_requests < args.stream_blocks:
        p.error("--rounds and --concurrency must be >= 1, --stream-requests >= --stream-blocks")
    return args


@dataclass
class Tally:
    """Every answer goes through here, so no failed request can slip out of the checks."""

    total: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    events: dict[str, list[int]] = field(default_factory=lambda: {"direct": [], "sluice": []})
    sluice_requests: int = 0

    def add(self, path: str, result: Result, *, stream: bool) -> Result:
        self.total += 1
        if path == "sluice":
            self.sluice_requests += 1
        if result.ok:
            self.ok += 1
        elif len(self.failures) < 10:
            self.failures.append(f"{path} {'stream' if stream else 'plain'}: "
                                 f"status {result.status} {result.error or 'empty text'}")
        if stream:
            self.events[path].append(result.content_events)
        return result


async def one_in_flight(targets: dict[str, Target], tally: Tally, *, rounds: int,
                        max_tokens: int, pid: int) -> tuple[dict[str, Paired], float]:
    """Phase 2; returns the metrics and the gateway's CPU seconds over its requests."""
    bodies = {name: (t.body(stream=True, max_tokens=max_tokens),
                     t.body(stream=False, max_tokens=max_tokens)) for name, t in targets.items()}
    samples: dict[str, dict[str, list[float]]] = {
        metric: {"direct": [], "sluice": []}
        for metric in ("TTFT (stream)", "stream total", "non-stream total", "gap between tokens")
    }
    cpu0 = proc_cpu_s(pid) or 0.0
    for i in range(rounds):
        order = ("direct", "sluice") if i % 2 == 0 else ("sluice", "direct")
        for path in order:
            r = tally.add(path, await stream_timed(targets[path], bodies[path][0]), stream=True)
            samples["TTFT (stream)"][path].append(r.ttft_s if r.ttft_s is not None else r.total_s)
            samples["stream total"][path].append(r.total_s)
            samples["gap between tokens"][path].extend(r.gaps_s)
        for path in order:
            r = tally.add(path, await plain_timed(targets[path], bodies[path][1]), stream=False)
            samples["non-stream total"][path].append(r.total_s)
    cpu = (proc_cpu_s(pid) or 0.0) - cpu0
    metrics = {name: Paired(name, s["direct"], s["sluice"], paired=name != "gap between tokens")
               for name, s in samples.items()}
    return metrics, cpu


async def block_run(target: Target, tally: Tally, *, requests: int, concurrency: int,
                    body: bytes, path: str, stream: bool = True) -> tuple[list[Result], float]:
    """``requests`` requests, ``concurrency`` at a time; returns the results and wall time."""
    timed = stream_timed if stream else plain_timed
    remaining = requests
    results: list[Result] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            results.append(tally.add(path, await timed(target, body), stream=stream))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - started


async def concurrent(targets: dict[str, Target], tally: Tally, *, requests: int, blocks: int,
                     concurrency: int, tokens: int, pid: int,
                     stream: bool = True) -> tuple[dict[str, Any], float]:
    """Phase 3 (streamed, then non-streamed); returns per-path throughput and TTFT/latency,
    and the gateway's CPU over its blocks."""
    bodies = {name: t.body(stream=stream, max_tokens=tokens) for name, t in targets.items()}
    for path in ("direct", "sluice"):  # open `concurrency` connections on each hop, discarded
        await block_run(targets[path], tally, requests=concurrency * 2, concurrency=concurrency,
                        body=bodies[path], path=path, stream=stream)
    per_block = [requests // blocks + (1 if b < requests % blocks else 0) for b in range(blocks)]
    results: dict[str, list[Result]] = {"direct": [], "sluice": []}
    wall = {"direct": 0.0, "sluice": 0.0}
    cpu = 0.0
    for b, n in enumerate(per_block):
        for path in (("direct", "sluice") if b % 2 == 0 else ("sluice", "direct")):
            cpu0 = proc_cpu_s(pid) or 0.0
            got, seconds = await block_run(targets[path], tally, requests=n,
                                           concurrency=concurrency, body=bodies[path], path=path,
                                           stream=stream)
            if path == "sluice":
                cpu += (proc_cpu_s(pid) or 0.0) - cpu0
            results[path] += got
            wall[path] += seconds
    out: dict[str, Any] = {}
    for path, got in results.items():
        ttft = [r.ttft_s for r in got if r.ttft_s is not None]
        total = [r.total_s for r in got]
        out[path] = {
            "requests": len(got), "wall_s": wall[path], "rps": len(got) / wall[path],
            "ttft_p50_ms": percentile(ttft, 50) * 1000, "ttft_p99_ms": percentile(ttft, 99) * 1000,
            "total_p50_ms": percentile(total, 50) * 1000,
            "total_p99_ms": percentile(total, 99) * 1000,
        }
    return out, cpu


class Noise:
    """CPU time stolen from the gateway's core per phase (see `cpu_steal_s`): a tail that
    moves between identical runs is the machine's when its phase shows steal."""

    def __init__(self, cpus: frozenset[int] | None) -> None:
        self.cpus = cpus
        self.phases: list[dict[str, Any]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        steal0, started = cpu_steal_s(self.cpus), time.perf_counter()
        try:
            yield
        finally:
            steal1 = cpu_steal_s(self.cpus)
            self.phases.append({
                "phase": name, "wall_s": time.perf_counter() - started,
                "steal_ms": None if steal0 is None or steal1 is None
                else (steal1 - steal0) * 1000,
            })


def machine_facts() -> dict[str, Any]:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {
        "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model, "kernel": platform.release(),
        "python": platform.python_version(), "aiohttp": version("aiohttp"),
        "uvicorn": version("uvicorn"), "django": version("django"), "commit": commit,
    }


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    targets = {
        "direct": Target("direct", stack.direct_url, SERVED_MODEL, "unused",
                         concurrency=args.concurrency),
        "sluice": Target("sluice", stack.sluice_url, ROUTE, stack.master_key,
                         concurrency=args.concurrency),
    }
    for t in targets.values():
        await t.open()
    tally = Tally()
    pid = stack.gateway_pid
    noise = Noise(stack.pinning.gateway)
    try:
        log("warm-up")
        await one_in_flight(targets, tally, rounds=args.warmup, max_tokens=args.max_tokens,
                            pid=pid)
        rss_start = proc_rss_kib(pid)
        gc.collect()
        gc.freeze()  # the load generator's own GC pauses should not land in the samples
        log(f"one in flight: {args.rounds} rounds")
        sluice_before = tally.sluice_requests
        with noise.phase("one in flight"):
            single, cpu_single = await one_in_flight(targets, tally, rounds=args.rounds,
                                                     max_tokens=args.max_tokens, pid=pid)
        single_requests = tally.sluice_requests - sluice_before
        log(f"{args.concurrency} concurrent: {args.stream_requests} requests per path")
        with noise.phase(f"{args.concurrency} concurrent streams"):
            conc, cpu_conc = await concurrent(
                targets, tally, requests=args.stream_requests, blocks=args.stream_blocks,
                concurrency=args.concurrency, tokens=args.stream_tokens, pid=pid)
        log(f"{args.concurrency} concurrent, non-streamed: {args.stream_requests} per path")
        with noise.phase(f"{args.concurrency} concurrent non-streamed"):
            conc_plain, _ = await concurrent(
                targets, tally, requests=args.stream_requests, blocks=args.stream_blocks,
                concurrency=args.concurrency, tokens=args.stream_tokens, pid=pid,
                stream=False)
        rss_end = proc_rss_kib(pid)
    finally:
        for t in targets.values():
            await t.close()
    return {
        "single": {name: m.summary() for name, m in single.items()},
        "concurrent": conc,
        "concurrent_plain": conc_plain,
        "resources": {
            "rss_start_mib": rss_start / 1024 if rss_start else None,
            "rss_end_mib": rss_end / 1024 if rss_end else None,
            "cpu_s_single": cpu_single, "cpu_s_concurrent": cpu_conc,
            "cpu_ms_per_req_single": cpu_single * 1000 / max(1, single_requests),
            "cpu_ms_per_req_concurrent": cpu_conc * 1000 / max(1, conc["sluice"]["requests"]),
            "steal": noise.phases,
        },
        "_tally": tally,
    }


def checks(tally: Tally, calls_recorded: int | None) -> dict[str, Any]:
    failures = list(tally.failures)
    if tally.ok != tally.total:
        failures.insert(0, f"{tally.total - tally.ok} of {tally.total} responses failed")
    if calls_recorded is None or calls_recorded < tally.sluice_requests:
        failures.append(f"only {calls_recorded} call records for {tally.sluice_requests} "
                        "Sluice requests")
    ev = {p: (sum(v) / len(v) if v else 0.0) for p, v in tally.events.items()}
    if ev["direct"] != ev["sluice"]:
        failures.append(f"content events per stream differ: direct {ev['direct']:.2f}, "
                        f"Sluice {ev['sluice']:.2f}")
    return {
        "total": tally.total, "ok": tally.ok, "sluice_requests": tally.sluice_requests,
        "calls_recorded": calls_recorded, "events_per_stream_direct": ev["direct"],
        "events_per_stream_sluice": ev["sluice"], "failures": failures,
        "passed": not failures,
    }


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    machine = machine_facts()  # before pinning narrows this process's CPU set
    pinning = Pinning.choose(not args.no_pin)
    sim = SimSettings(ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s)
    log("starting the simulator and the gateway")
    with Stack(sim_settings=sim, pinning=pinning) as stack:
        data = asyncio.run(run(args, stack))
        log("stopping the gateway (flushes the call log)")
        stack.gateway_stop()
        calls = stack.calls_recorded()
    tally: Tally = data.pop("_tally")
    data.update({
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "wall_s": time.perf_counter() - t0,
        "machine": machine,
        "settings": {
            "sim": {"ttft_ms": sim.ttft_ms, "tokens_per_s": sim.tokens_per_s,
                    "max_num_seqs": sim.max_num_seqs, "seed": sim.seed},
            "pinning": pinning.describe(), "rounds": args.rounds, "warmup": args.warmup,
            "max_tokens": args.max_tokens, "concurrency": args.concurrency,
            "stream_requests": args.stream_requests, "stream_blocks": args.stream_blocks,
            "stream_tokens": args.stream_tokens,
        },
        "checks": checks(tally, calls),
    })
    text = markdown(data)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = started.strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (args.out / "latest.md").write_text(text)
    print(text)
    log(f"wrote {args.out / stem}.md/.json and latest.md in {data['wall_s']:.0f} s")
    return 0 if data["checks"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
