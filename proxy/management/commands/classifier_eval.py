"""`python manage.py classifier_eval`: the small-model classifier against labelled prompts.

Prints accuracy, precision and recall for "hard", the confusion matrix at the threshold
asked for (the routes' default, 0.5, unless --threshold), the best threshold on the set, and
what one difficulty() call costs on it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from proxy.classifier import (
    FEATURE_NAMES,
    Evaluation,
    difficulty,
    evaluate,
    features_extract,
    score_of,
    threshold_best,
    weights_fit,
)

DEFAULT_DATA = Path(settings.BASE_DIR) / "tests" / "data" / "routing_prompts.jsonl"


def examples_load(path: Path) -> list[dict]:
    """The labelled prompts: one JSON object a line with `label` ("easy" | "hard"), `body`,
    `endpoint` (default chat/completions) and optionally `split` ("tune": used while choosing
    the weights; "holdout": written after they were frozen, to measure how they generalise)."""
    rows = []
    with path.open(encoding="utf-8") as lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("label") not in ("easy", "hard") or not isinstance(row.get("body"), dict):
                raise ValueError(f"{path}:{n}: needs a label (easy|hard) and a body")
            rows.append(row)
    return rows


def examples_score(rows: list[dict]) -> list[tuple[float, bool]]:
    return [(difficulty(r["body"], endpoint=r.get("endpoint", "chat/completions")),
             r["label"] == "hard") for r in rows]


class Command(BaseCommand):
    help = "Evaluate the small-model routing classifier on labelled easy/hard prompts."

    def add_arguments(self, parser):
        parser.add_argument("--threshold", type=float, default=0.5,
                            help="score at or above which a prompt counts as hard (0.5)")
        parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                            help="JSONL of labelled prompts (tests/data/routing_prompts.jsonl)")
        parser.add_argument("--errors", action="store_true",
                            help="list the prompts scored on the wrong side")
        parser.add_argument("--fit", action="store_true",
                            help="also fit a logistic regression over the same features on the "
                                 "'tune' prompts and compare it on the 'holdout' ones")

    def handle(self, *args, threshold: float, data: Path, errors: bool, fit: bool, **options):
        if not 0.0 <= threshold <= 1.0:
            raise CommandError("--threshold must be between 0 and 1")
        try:
            rows = examples_load(data)
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if not rows:
            raise CommandError(f"{data} holds no examples")
        scored = examples_score(rows)
        hard = sum(1 for _, h in scored if h)
        self.stdout.write(f"{len(rows)} prompts ({hard} hard, {len(rows) - hard} easy) "
                          f"from {data}")
        self._report(evaluate(scored, threshold=threshold))
        splits = sorted({r["split"] for r in rows if "split" in r})
        for split in splits if len(splits) > 1 else ():
            part = [s for r, s in zip(rows, scored, strict=True) if r.get("split") == split]
            ev = evaluate(part, threshold=threshold)
            self.stdout.write(f"  {split} ({ev.total}): accuracy {ev.accuracy:.3f}, hard "
                              f"precision {ev.precision_hard:.3f}, recall {ev.recall_hard:.3f}")
        best = threshold_best(scored)
        self.stdout.write(f"best threshold on this set: {best.threshold:.2f} "
                          f"(accuracy {best.accuracy:.3f})")
        self.stdout.write(f"cost: {self._cost_us(rows):.1f} us per difficulty() call (mean)")
        if fit:
            self._fit_compare(rows, threshold)
        if errors:
            for row, (score, is_hard) in zip(rows, scored, strict=True):
                if (score >= threshold) != is_hard:
                    self.stdout.write(f"  {row['label']:4} scored {score:.2f}  "
                                      f"{json.dumps(row['body'])[:100]}")

    def _report(self, ev: Evaluation) -> None:
        self.stdout.write(f"threshold {ev.threshold:.2f}: accuracy {ev.accuracy:.3f}, "
                          f"hard precision {ev.precision_hard:.3f}, "
                          f"hard recall {ev.recall_hard:.3f}")
        self.stdout.write("                 scored easy  scored hard")
        self.stdout.write(f"  labelled easy  {ev.true_easy:11d}  {ev.false_hard:11d}")
        self.stdout.write(f"  labelled hard  {ev.false_easy:11d}  {ev.true_hard:11d}")

    def _fit_compare(self, rows: list[dict], threshold: float) -> None:
        def features(split: str) -> list:
            return [(features_extract(r["body"], endpoint=r.get("endpoint", "chat/completions")),
                     r["label"] == "hard") for r in rows if r.get("split", "tune") == split]

        tune, holdout = features("tune"), features("holdout")
        if not tune:
            raise CommandError("--fit needs prompts with split 'tune' (or no split)")
        weights, bias = weights_fit(tune)
        self.stdout.write(f"fitted on 'tune': bias {bias:+.2f}, " + ", ".join(
            f"{n} {getattr(weights, n):+.2f}" for n in FEATURE_NAMES))
        for name, part in (("tune", tune), ("holdout", holdout)):
            if not part:
                continue
            fitted = evaluate([(score_of(f, weights, bias), h) for f, h in part],
                              threshold=threshold)
            hand = evaluate([(score_of(f), h) for f, h in part], threshold=threshold)
            self.stdout.write(f"  {name} ({len(part)}): fitted accuracy {fitted.accuracy:.3f} "
                              f"(recall {fitted.recall_hard:.3f}), hand-set "
                              f"{hand.accuracy:.3f} (recall {hand.recall_hard:.3f})")

    def _cost_us(self, rows: list[dict]) -> float:
        bodies = [(r["body"], r.get("endpoint", "chat/completions")) for r in rows]
        rounds = 20
        start = time.perf_counter()
        for _ in range(rounds):
            for body, endpoint in bodies:
                difficulty(body, endpoint=endpoint)
        return (time.perf_counter() - start) / (rounds * len(bodies)) * 1e6
