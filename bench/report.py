"""Percentiles and the Markdown report.

Two ways of saying "added latency", both reported because they answer different questions:
the difference of the percentiles (Sluice P99 minus direct P99: what an app's P99 becomes) and
the percentiles of the paired per-round differences (what one request pays, with the
backend's own jitter in that round cancelled out). Percentiles use linear interpolation
between closest ranks (numpy's default), so P99 of 300 samples is not just the 3rd-largest.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Paired:
    """One latency metric measured on both paths, round by round (seconds in, ms out)."""

    name: str
    direct: list[float]
    sluice: list[float]
    paired: bool = True  # False where samples do not pair up one to one (gaps between tokens)

    def summary(self) -> dict[str, Any]:
        d50, d99 = _ms(percentile(self.direct, 50)), _ms(percentile(self.direct, 99))
        s50, s99 = _ms(percentile(self.sluice, 50)), _ms(percentile(self.sluice, 99))
        out: dict[str, Any] = {
            "n_direct": len(self.direct), "n_sluice": len(self.sluice),
            "direct_p50_ms": d50, "direct_p99_ms": d99,
            "sluice_p50_ms": s50, "sluice_p99_ms": s99,
            "added_p50_ms": s50 - d50, "added_p99_ms": s99 - d99,
        }
        if self.paired:
            diffs = [s - d for d, s in zip(self.direct, self.sluice, strict=True)]
            out["paired_diff_p50_ms"] = _ms(percentile(diffs, 50))
            out["paired_diff_p99_ms"] = _ms(percentile(diffs, 99))
        return out


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _f(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    """The whole report from the JSON-able results dict built in :mod:`bench.__main__`."""
    m, s = data["machine"], data["settings"]
    lines = [
        f"# Sluice benchmark — {data['started_utc']}",
        "",
    ]
    if not data["checks"]["passed"]:
        lines += ["**CHECKS FAILED — these numbers are not valid:** "
                  + "; ".join(data["checks"]["failures"]), ""]
    lines += [
        f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, "
        f"Python {m['python']}, aiohttp {m['aiohttp']}, uvicorn {m['uvicorn']}, "
        f"Django {m['django']}, commit `{m['commit']}`",
        f"- simulator: ttft_ms={s['sim']['ttft_ms']}, tokens_per_s={s['sim']['tokens_per_s']}, "
        f"max_num_seqs={s['sim']['max_num_seqs']}, seed={s['sim']['seed']}",
        "- gateway: uvicorn --loop uvloop --http httptools --lifespan on --no-access-log, "
        "1 worker, SQLite in a temp dir, in-process cache, master key",
        f"- pinning: {s['pinning']}",
        f"- one in flight: {s['rounds']} rounds each way after {s['warmup']} warm-up rounds, "
        f"stream max_tokens={s['max_tokens']}, non-stream max_tokens={s['max_tokens']}, "
        "direct and Sluice alternated request by request (order swapped every round)",
        f"- concurrent: {s['concurrency']} streams of {s['stream_tokens']} tokens, "
        f"{s['stream_requests']} requests each way in {s['stream_blocks']} alternating blocks "
        "per path",
        f"- bench wall time: {data['wall_s']:.0f} s",
        "",
        "## One request in flight (ms)",
        "",
        "| metric | direct P50 | direct P99 | Sluice P50 | Sluice P99 | added P50 | added P99 "
        "| paired diff P50 | paired diff P99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in data["single"].items():
        lines.append(
            f"| {name} | {_f(row['direct_p50_ms'])} | {_f(row['direct_p99_ms'])} "
            f"| {_f(row['sluice_p50_ms'])} | {_f(row['sluice_p99_ms'])} "
            f"| **{_f(row['added_p50_ms'])}** | **{_f(row['added_p99_ms'])}** "
            f"| {_f(row.get('paired_diff_p50_ms'))} | {_f(row.get('paired_diff_p99_ms'))} |"
        )
    lines += [
        "",
        f"## {s['concurrency']} concurrent streams",
        "",
        "| path | requests | req/s | TTFT P50 ms | TTFT P99 ms | stream total P50 ms "
        "| stream total P99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for path in ("direct", "sluice"):
        row = data["concurrent"][path]
        lines.append(
            f"| {path} | {row['requests']} | {_f(row['rps'], 1)} | {_f(row['ttft_p50_ms'])} "
            f"| {_f(row['ttft_p99_ms'])} | {_f(row['total_p50_ms'])} | {_f(row['total_p99_ms'])} |"
        )
    c = data["concurrent"]
    lines += [
        "",
        f"Sluice/direct throughput: {_f(c['sluice']['rps'] / c['direct']['rps'] * 100, 1)} %; "
        f"added TTFT P50 / P99: {_f(c['sluice']['ttft_p50_ms'] - c['direct']['ttft_p50_ms'])} / "
        f"{_f(c['sluice']['ttft_p99_ms'] - c['direct']['ttft_p99_ms'])} ms.",
        "",
    ]
    plain = data.get("concurrent_plain")
    if plain:
        lines += [
            f"## {s['concurrency']} concurrent non-streamed requests",
            "",
            "| path | requests | req/s | latency P50 ms | latency P99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for path in ("direct", "sluice"):
            row = plain[path]
            lines.append(f"| {path} | {row['requests']} | {_f(row['rps'], 1)} "
                         f"| {_f(row['total_p50_ms'])} | {_f(row['total_p99_ms'])} |")
        lines += [
            "",
            f"Sluice/direct throughput: "
            f"{_f(plain['sluice']['rps'] / plain['direct']['rps'] * 100, 1)} %; added latency "
            f"P50 / P99: {_f(plain['sluice']['total_p50_ms'] - plain['direct']['total_p50_ms'])}"
            f" / {_f(plain['sluice']['total_p99_ms'] - plain['direct']['total_p99_ms'])} ms.",
            "",
        ]
    lines += [
        "## Gateway process",
        "",
    ]
    r = data["resources"]
    lines += [
        f"- RSS after start-up: {_f(r['rss_start_mib'], 1)} MiB; after the run: "
        f"{_f(r['rss_end_mib'], 1)} MiB",
        f"- CPU per request: {_f(r['cpu_ms_per_req_single'])} ms at one in flight, "
        f"{_f(r['cpu_ms_per_req_concurrent'])} ms at {s['concurrency']} concurrent streams "
        f"(utime+stime of the uvicorn process over the Sluice requests of each phase)",
    ]
    if r.get("steal"):
        stolen = "; ".join(
            f"{p['phase']} {_f(p['steal_ms'], 0)} ms over {_f(p['wall_s'], 0)} s"
            for p in r["steal"])
        lines.append(f"- CPU stolen from the gateway's core by the hypervisor (/proc/stat "
                     f"steal): {stolen}")
    lines += [
        "",
        "## Checks",
        "",
    ]
    k = data["checks"]
    lines += [
        f"- responses: {k['ok']} ok of {k['total']} (status 200, non-empty text, [DONE] "
        f"on streams)",
        f"- content events per stream, direct / Sluice: {_f(k['events_per_stream_direct'], 1)}"
        f" / {_f(k['events_per_stream_sluice'], 1)}",
        f"- call records written by Sluice: {k['calls_recorded']} for "
        f"{k['sluice_requests']} requests",
        f"- result: {'PASSED' if k['passed'] else 'FAILED'}",
        "",
    ]
    return "\n".join(lines)
