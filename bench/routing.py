"""``python -m bench.routing`` (``make bench-routing``): the pool scheduler against round robin.

Four simulated vLLM backends (the last at half the decode and prefill speed) with prefix
caching and shared prefill (a GPU prefills one request at a time, so uncached tokens cost the
whole pool throughput), one Sluice gateway, and one seeded workload replayed once per policy:

- multi-turn conversations: each turn resends the whole history, its previous answers
  included (the real answers, read back from the stream), after a think time;
- single questions under a few long system prompts that many requests share.

Conversations and questions arrive at fixed, seeded times near the pool's prefill capacity.
Each policy gets fresh simulators and a fresh gateway (cold caches, empty prefix table), so
the runs differ only in the policy. Reported per policy: TTFT P50/P99, total latency P99,
throughput, the pool's prefix-cache hit rate (the simulators' own counters), and the spread of
load over backends (running + waiting sampled from each backend's /metrics).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.report import percentile
from bench.stack import ROOT, Stack
from simulator.process import SimulatorProcess

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MODEL = "routing-model"
POLICIES = ("round_robin", "least_load", "prefix_aware")
_WORDS = ("data model cache token server stream batch engine gateway answer question system "
          "value result memory latency request river paper light house world school water "
          "number people place story study picture country father mother night").split()


@dataclass(frozen=True)
class PoolShape:
    """The simulated pool: fast backends and one at half speed."""

    backends: int = 4
    ttft_ms: float = 15.0
    tokens_per_s: float = 80.0
    prefill_tokens_per_s: float = 12_000.0
    max_num_seqs: int = 32
    kv_cache_tokens: int = 48_000

    def speeds(self) -> list[float]:
        """Relative speed of each backend: the last one runs at half speed."""
        return [1.0] * (self.backends - 1) + [0.5]


@dataclass(frozen=True)
class WorkloadShape:
    seconds: float = 45.0  # arrivals happen over this long
    conversations_per_s: float = 3.5
    turns: tuple[int, int] = (6, 10)
    system_tokens: int = 200  # each conversation's own system prompt
    user_tokens: tuple[int, int] = (80, 200)
    answer_tokens: tuple[int, int] = (60, 120)
    think_s: tuple[float, float] = (0.3, 1.5)
    shared_prompts: int = 4
    shared_prompt_tokens: int = 2000
    questions_per_s: float = 3.0
    question_tokens: tuple[int, int] = (40, 120)
    seed: int = 7


def _text(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(tokens)) + "."


@dataclass
class Conversation:
    start_s: float
    system: str
    users: list[str]
    answer_tokens: list[int]
    thinks: list[float]


@dataclass
class Question:
    start_s: float
    system: str
    user: str
    answer_tokens: int


def workload_build(w: WorkloadShape) -> tuple[list[Conversation], list[Question]]:
    """The seeded workload: the same for every policy."""
    rng = random.Random(w.seed)
    conversations, at = [], 0.0
    while True:
        at += rng.expovariate(w.conversations_per_s)
        if at >= w.seconds:
            break
        turns = rng.randint(*w.turns)
        conversations.append(Conversation(
            start_s=at,
            system=f"Conversation {len(conversations)}. " + _text(rng, w.system_tokens),
            users=[_text(rng, rng.randint(*w.user_tokens)) for _ in range(turns)],
            answer_tokens=[rng.randint(*w.answer_tokens) for _ in range(turns)],
            thinks=[rng.uniform(*w.think_s) for _ in range(turns)]))
    prompts = [f"App {i} instructions. " + _text(rng, w.shared_prompt_tokens)
               for i in range(w.shared_prompts)]
    questions, at = [], 0.0
    while True:
        at += rng.expovariate(w.questions_per_s)
        if at >= w.seconds:
            break
        questions.append(Question(start_s=at, system=rng.choice(prompts),
                                  user=_text(rng, rng.randint(*w.question_tokens)),
                                  answer_tokens=rng.randint(*w.answer_tokens)))
    return conversations, questions


@dataclass
class Sample:
    kind: str  # conversation | question
    turn: int
    ttft_s: float | None
    total_s: float
    backend: str
    reason: str
    ok: bool
    error: str = ""


class PoolStack(Stack):
    """A gateway in front of several simulators, one route per policy (bench.stack's gateway)."""

    def __init__(self, pool: PoolShape, policy: str) -> None:
        super().__init__()
        self.pool, self.policy = pool, policy
        self.sims: list[SimulatorProcess] = []

    def start(self) -> None:
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="sluice-bench-routing-")
        p = self.pool
        for speed in p.speeds():
            sim = SimulatorProcess(
                model=MODEL, ttft_ms=p.ttft_ms, tokens_per_s=p.tokens_per_s * speed,
                prefill_tokens_per_s=p.prefill_tokens_per_s * speed,
                max_num_seqs=p.max_num_seqs, kv_cache_tokens=p.kv_cache_tokens,
                shared_prefill=True, seed=1)
            sim.start()
            self.sims.append(sim)
        env = self._gateway_env()
        env["SLUICE_LOG_FLUSH_INTERVAL_S"] = "1"
        backends = "; ".join(
            f"Backend.objects.create(name='sim-{i + 1}', base_url={sim.url!r}, model={MODEL!r}, "
            f"max_concurrency={p.max_num_seqs * 4})" for i, sim in enumerate(self.sims))
        self._manage(env, "migrate", "--noinput", "-v0")
        self._manage(env, "shell", "-c", (
            "from proxy.models import Backend, Route; " + backends + "; "
            f"Route.objects.create(name='bench', model={MODEL!r}, "
            f"balance_policy={self.policy!r})"))
        self._gateway_start(env)

    def stop(self) -> None:
        self.gateway_stop()
        for sim in self.sims:
            sim.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


async def _stream(session: aiohttp.ClientSession, url: str, messages: list[dict],
                  max_tokens: int) -> tuple[Sample, str]:
    body = orjson.dumps({"model": "bench", "messages": messages, "stream": True,
                         "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0})
    started = time.perf_counter()
    ttft, text, backend, reason, error = None, [], "", "", ""
    try:
        async with session.post(url, data=body) as resp:
            backend = resp.headers.get("x-sluice-backend", "")
            reason = resp.headers.get("x-sluice-backend-reason", "")
            if resp.status != 200:
                error = f"{resp.status}: {(await resp.read())[:200]!r}"
            else:
                pending, done = b"", False
                async for chunk in resp.content.iter_any():
                    pending += chunk
                    cut = pending.rfind(b"\n\n")
                    if cut < 0:
                        continue
                    block, pending = pending[:cut], pending[cut + 2:]
                    for event in block.split(b"\n\n"):
                        data = event[5:].strip() if event.startswith(b"data:") else b""
                        if not data:
                            continue
                        if data == b"[DONE]":
                            done = True
                            continue
                        for choice in orjson.loads(data).get("choices") or ():
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                if ttft is None:
                                    ttft = time.perf_counter() - started
                                text.append(piece)
                if not done:
                    error = "no [DONE]"
    except (TimeoutError, aiohttp.ClientError) as exc:
        error = repr(exc)
    sample = Sample("", 0, ttft, time.perf_counter() - started, backend, reason,
                    ok=not error and ttft is not None, error=error)
    return sample, "".join(text)


async def _conversation(session, url: str, c: Conversation, t0: float,
                        out: list[Sample]) -> None:
    await asyncio.sleep(max(0.0, t0 + c.start_s - time.perf_counter()))
    messages = [{"role": "system", "content": c.system}]
    for turn, (user, tokens, think) in enumerate(zip(c.users, c.answer_tokens, c.thinks,
                                                     strict=True)):
        messages.append({"role": "user", "content": user})
        sample, answer = await _stream(session, url, messages, tokens)
        sample.kind, sample.turn = "conversation", turn
        out.append(sample)
        if not sample.ok:
            return
        messages.append({"role": "assistant", "content": answer})
        await asyncio.sleep(think)


async def _question(session, url: str, q: Question, t0: float, out: list[Sample]) -> None:
    await asyncio.sleep(max(0.0, t0 + q.start_s - time.perf_counter()))
    sample, _ = await _stream(session, url, [{"role": "system", "content": q.system},
                                             {"role": "user", "content": q.user}],
                              q.answer_tokens)
    sample.kind = "question"
    out.append(sample)


def _scrape(sim: SimulatorProcess) -> str:
    with urllib.request.urlopen(sim.url + "/metrics", timeout=2) as resp:
        return resp.read().decode()


def _series(text: str) -> dict[str, float]:
    """Each sample name of a /metrics page, summed over its label sets."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def _sample_loads(sims: list[SimulatorProcess], stop: asyncio.Event,
                        loads: list[list[float]]) -> None:
    """Every 0.25 s, each backend's running + waiting as it reports them."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            for i, sim in enumerate(sims):
                try:
                    async with session.get(sim.url + "/metrics") as resp:
                        series = _series(await resp.text())
                    loads[i].append(series.get("vllm:num_requests_running", 0.0)
                                    + series.get("vllm:num_requests_waiting", 0.0))
                except aiohttp.ClientError:
                    pass
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass


async def _replay(stack: PoolStack, conversations: list[Conversation],
                  questions: list[Question]) -> tuple[list[Sample], list[list[float]], float]:
    url = stack.sluice_url + "/v1/chat/completions"
    samples: list[Sample] = []
    loads: list[list[float]] = [[] for _ in stack.sims]
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=300),
            headers={"Authorization": f"Bearer {stack.master_key}",
                     "Content-Type": "application/json"}) as session:
        sampler = asyncio.create_task(_sample_loads(stack.sims, stop, loads))
        t0 = time.perf_counter() + 0.5
        await asyncio.gather(*(_conversation(session, url, c, t0, samples)
                               for c in conversations),
                             *(_question(session, url, q, t0, samples) for q in questions))
        makespan = time.perf_counter() - t0
        stop.set()
        await sampler
    return samples, loads, makespan


def _prefix_hit_rate(sims: list[SimulatorProcess]) -> float | None:
    queries = hits = 0.0
    for sim in sims:
        series = _series(_scrape(sim))
        queries += series.get("vllm:prefix_cache_queries_total", 0.0)
        hits += series.get("vllm:prefix_cache_hits_total", 0.0)
    return hits / queries if queries else None


def policy_run(policy: str, pool: PoolShape, conversations: list[Conversation],
               questions: list[Question]) -> dict[str, Any]:
    with PoolStack(pool, policy) as stack:
        samples, loads, makespan = asyncio.run(_replay(stack, conversations, questions))
        hit_rate = _prefix_hit_rate(stack.sims)
    ok = [s for s in samples if s.ok]
    ttfts = sorted(s.ttft_s for s in ok if s.ttft_s is not None)
    totals = sorted(s.total_s for s in ok)
    names = [f"sim-{i + 1}" for i in range(len(loads))]
    mean_loads = [sum(series) / len(series) if series else 0.0 for series in loads]
    pool_mean = sum(mean_loads) / len(mean_loads) if mean_loads else 0.0
    reasons: dict[str, int] = {}
    for s in ok:
        reasons[s.reason] = reasons.get(s.reason, 0) + 1
    return {
        "policy": policy,
        "requests": len(samples),
        "ok": len(ok),
        "errors": sorted({s.error for s in samples if not s.ok})[:5],
        "ttft_p50_ms": percentile(ttfts, 50) * 1000 if ttfts else None,
        "ttft_p99_ms": percentile(ttfts, 99) * 1000 if ttfts else None,
        "total_p99_ms": percentile(totals, 99) * 1000 if totals else None,
        "conversation_ttft_p99_ms": _p99_ms([s.ttft_s for s in ok if s.kind == "conversation"]),
        "question_ttft_p99_ms": _p99_ms([s.ttft_s for s in ok if s.kind == "question"]),
        "throughput_rps": len(ok) / makespan,
        "makespan_s": makespan,
        "prefix_hit_rate": hit_rate,
        "requests_by_backend": {n: sum(1 for s in ok if s.backend == n) for n in names},
        "mean_load_by_backend": dict(zip(names, mean_loads, strict=True)),
        "max_load_over_mean": max(mean_loads) / pool_mean if pool_mean else None,
        "reasons": reasons,
    }


def _p99_ms(values: list[float | None]) -> float | None:
    ordered = sorted(v for v in values if v is not None)
    return percentile(ordered, 99) * 1000 if ordered else None


def _pairs(values: dict[str, Any], fmt: str) -> str:
    return ", ".join(f"{k} {fmt.format(v)}" for k, v in values.items())


def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    p, w = data["pool"], data["workload"]
    lines = [
        f"# Sluice routing benchmark — {data['started_utc']}",
        "",
        f"- pool: {p['backends']} simulated backends (the last at half speed), "
        f"ttft_ms={p['ttft_ms']}, tokens_per_s={p['tokens_per_s']}, "
        f"prefill_tokens_per_s={p['prefill_tokens_per_s']}, max_num_seqs={p['max_num_seqs']}, "
        f"kv_cache_tokens={p['kv_cache_tokens']}, prefix caching on, shared prefill",
        f"- workload (seed {w['seed']}): {data['conversations']} conversations "
        f"({w['conversations_per_s']}/s, {w['turns'][0]}-{w['turns'][1]} turns, whole history "
        f"resent each turn) and {data['questions']} single questions ({w['questions_per_s']}/s) "
        f"under {w['shared_prompts']} shared {w['shared_prompt_tokens']}-token system prompts, "
        f"arriving over {w['seconds']:.0f} s; streamed, answers of "
        f"{w['answer_tokens'][0]}-{w['answer_tokens'][1]} tokens",
        f"- commit `{data['commit']}`, wall time {data['wall_s']:.0f} s",
        "",
        "| policy | requests ok | TTFT P50 ms | TTFT P99 ms | total P99 ms | req/s "
        "| prefix-cache hit rate | max backend load / mean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["runs"]:
        lines.append(
            f"| {r['policy']} | {r['ok']}/{r['requests']} | {_f(r['ttft_p50_ms'])} "
            f"| {_f(r['ttft_p99_ms'])} | {_f(r['total_p99_ms'])} | {_f(r['throughput_rps'], 2)} "
            f"| {_f(r['prefix_hit_rate'] * 100 if r['prefix_hit_rate'] is not None else None)} % "
            f"| {_f(r['max_load_over_mean'], 2)} |")
    lines += ["", "| policy | requests per backend | mean load per backend (running + waiting) "
              "| reasons |", "|---|---|---|---|"]
    for r in data["runs"]:
        lines.append(
            f"| {r['policy']} | {_pairs(r['requests_by_backend'], '{}')} "
            f"| {_pairs(r['mean_load_by_backend'], '{:.1f}')} "
            f"| {_pairs(dict(sorted(r['reasons'].items())), '{}')} |")
    rr = next((r for r in data["runs"] if r["policy"] == "round_robin"), None)
    px = next((r for r in data["runs"] if r["policy"] == "prefix_aware"), None)
    if rr and px and rr["ttft_p99_ms"] and px["ttft_p99_ms"]:
        lines += ["", "Prefix-aware vs round robin: TTFT P99 "
                  f"{rr['ttft_p99_ms'] / px['ttft_p99_ms']:.1f}× lower, TTFT P50 "
                  f"{rr['ttft_p50_ms'] / px['ttft_p50_ms']:.1f}× lower; "
                  f"busiest backend at {px['max_load_over_mean']:.2f}× the mean load "
                  "(goal: ≥ 2× lower P99, ≤ 1.5× mean load)."]
    errors = [e for r in data["runs"] for e in r["errors"]]
    if errors:
        lines += ["", "Errors seen: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


def _commit() -> str:
    import subprocess

    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=WorkloadShape.seconds)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    pool, workload = PoolShape(), WorkloadShape(seconds=args.seconds)
    conversations, questions = workload_build(workload)
    started, wall = datetime.now(UTC), time.perf_counter()
    runs = []
    for policy in args.policies.split(","):
        print(f"routing bench: {policy} ...", file=sys.stderr, flush=True)
        runs.append(policy_run(policy.strip(), pool, conversations, questions))
    data = {"started_utc": started.strftime("%Y-%m-%d %H:%M:%S UTC"), "commit": _commit(),
            "pool": asdict(pool), "workload": asdict(workload),
            "conversations": len(conversations), "questions": len(questions),
            "wall_s": time.perf_counter() - wall, "runs": runs}
    report = markdown(data)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"routing-{stamp}.md").write_text(report)
    (args.out / f"routing-{stamp}.json").write_text(json.dumps(data, indent=2))
    (args.out / "routing-latest.md").write_text(report)
    print(report)
    return 0 if all(r["ok"] == r["requests"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
