"""`manage.py semantic_eval`: the semantic cache's hit and false-hit rates on labelled pairs.

Each pair is (a, b, label): "hit" when b may be answered with a's answer (an honest
paraphrase), "miss" when it must not (a near-miss or an unrelated question). A pair counts as
a hit when the cosine of the two questions reaches the threshold and `proxy.nearmiss` finds no
difference, i.e. exactly what a lookup does. Reports the rates for one threshold, then sweeps
thresholds and picks the one that keeps false hits within the target with the most hits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from proxy.nearmiss import near_miss

DEFAULT_PAIRS = Path(settings.BASE_DIR) / "tests" / "data" / "semantic_pairs.jsonl"
SWEEP = [round(t, 2) for t in np.arange(0.70, 0.981, 0.01)]  # below 0.70: topic-level only
MIN_HIT_RATE = 0.5


@dataclass(frozen=True)
class Result:
    threshold: float
    hit_rate: float
    false_hit_rate: float
    hits: int
    should_hit: int
    false_hits: int
    must_not_hit: int


def pairs_load(path: Path) -> list[dict]:
    rows = [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        if row.get("label") not in ("hit", "miss") or not row.get("a") or not row.get("b"):
            raise CommandError(f"bad pair in {path}: {row}")
    return rows


def pairs_score(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each pair, and whether the near-miss check lets it through."""
    from proxy.embedder import embedder_get

    embedder = embedder_get()  # the process's model: loaded once, shared with lookups
    if not embedder.load_blocking():
        raise CommandError(f"the embedder did not load: {embedder.load_error}")
    a = embedder.encode([r["a"] for r in rows])
    b = embedder.encode([r["b"] for r in rows])
    cosine = (a * b).sum(axis=1)
    passes = np.array([near_miss(r["b"], r["a"]) is None for r in rows])
    return cosine, passes


def evaluate(rows: list[dict], cosine: np.ndarray, passes: np.ndarray,
             threshold: float) -> Result:
    should = np.array([r["label"] == "hit" for r in rows])
    hit = (cosine >= threshold) & passes
    n_should, n_not = int(should.sum()), int((~should).sum())
    hits, false_hits = int((hit & should).sum()), int((hit & ~should).sum())
    return Result(threshold, hits / max(1, n_should), false_hits / max(1, n_not), hits,
                  n_should, false_hits, n_not)


def choose(results: list[Result], target: float) -> Result | None:
    """Most hits within the target (ties: the higher, safer threshold)."""
    ok = [r for r in results if r.false_hit_rate <= target]
    return max(ok, key=lambda r: (r.hits, r.threshold)) if ok else None


class Command(BaseCommand):
    help = "Measure the semantic cache's hit and false-hit rates on labelled question pairs."

    def add_arguments(self, parser):
        parser.add_argument("--pairs", default=str(DEFAULT_PAIRS))
        parser.add_argument("--threshold", type=float, default=None,
                            help="report this threshold (default SLUICE_SEMANTIC_THRESHOLD)")
        parser.add_argument("--target-false-hit", type=float, default=0.005)
        parser.add_argument("--show-errors", action="store_true",
                            help="list the pairs the chosen setting gets wrong")

    def handle(self, *args, **opts):
        rows = pairs_load(Path(opts["pairs"]))
        cosine, passes = pairs_score(rows)
        threshold = opts["threshold"]
        if threshold is None:
            threshold = settings.SLUICE_SEMANTIC_THRESHOLD
        target = opts["target_false_hit"]
        out = self.stdout.write
        out(f"{len(rows)} pairs from {opts['pairs']}")
        self._line("setting", evaluate(rows, cosine, passes, threshold))
        cosine_only = evaluate(rows, cosine, np.ones_like(passes), threshold)
        self._line("cosine alone", cosine_only)
        results = [evaluate(rows, cosine, passes, t) for t in SWEEP]
        out("sweep:")
        for r in results:
            self._line("  ", r)
        best = choose(results, target)
        if best is None:
            low = min(results, key=lambda r: r.false_hit_rate)
            out(f"TARGET NOT MET: no threshold keeps false hits <= {target:.1%}; the best is "
                f"{low.false_hit_rate:.2%} at {low.threshold:.2f} "
                f"({low.false_hit_rate - target:+.2%} over)")
            return
        met = best.hit_rate >= MIN_HIT_RATE
        out(f"chosen: threshold {best.threshold:.2f}: hit rate {best.hit_rate:.1%}, "
            f"false-hit rate {best.false_hit_rate:.2%} (target <= {target:.1%}, "
            f"hits >= {MIN_HIT_RATE:.0%}): {'TARGET MET' if met else 'TOO FEW HITS'}")
        if opts["show_errors"]:
            hit = (cosine >= best.threshold) & passes
            for r, c, h, p in zip(rows, cosine, hit, passes, strict=True):
                if h != (r["label"] == "hit"):
                    why = near_miss(r["b"], r["a"]) if not p else "below threshold"
                    out(f"  {r['label']:>4} {r.get('kind', ''):<11} cos={c:.3f} "
                        f"{why or ''}: {r['a']} | {r['b']}")

    def _line(self, label: str, r: Result) -> None:
        self.stdout.write(f"{label} threshold {r.threshold:.2f}: hit rate {r.hit_rate:.1%} "
                          f"({r.hits}/{r.should_hit}), false-hit rate {r.false_hit_rate:.2%} "
                          f"({r.false_hits}/{r.must_not_hit})")
