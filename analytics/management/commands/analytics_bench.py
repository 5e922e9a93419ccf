"""`manage.py analytics_bench`: time the rollups and the summary over a big synthetic call log.

Writes --calls calls (default 10 million) into the configured PostgreSQL database, over 7 days
with the last 15 minutes at 620 calls/s; rolls them up from nothing; runs the beat's 15-second
cycle at 620 calls/s; then times the summary over 15 minutes and over 7 days, with the last 15 s
of calls not yet rolled up. It refuses a database that already has calls or rollups, and
empties those tables again afterwards unless --keep.
"""
from __future__ import annotations

import statistics

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

from analytics.models import Call, HourRollup, MinuteRollup, RollupState
from analytics.synthetic import Timings, benchmark_run

TABLES = (Call, MinuteRollup, HourRollup, RollupState)


class Command(BaseCommand):
    help = "Time the rollups and /api/stats/summary over millions of synthetic calls."

    def add_arguments(self, parser):
        parser.add_argument("--calls", type=int, default=10_000_000)
        parser.add_argument("--steady-runs", type=int, default=8)
        parser.add_argument("--repeats", type=int, default=5)
        parser.add_argument("--keep", action="store_true", help="Leave the calls in place.")

    def handle(self, *args, calls: int, steady_runs: int, repeats: int, keep: bool, **options):
        if connection.vendor != "postgresql":
            raise CommandError("the benchmark writes its calls with PostgreSQL's generate_series")
        if any(model.objects.exists() for model in TABLES):
            raise CommandError("calls or rollups exist: run it on an empty database")
        try:
            timings = benchmark_run(count=calls, now=timezone.now(), steady_runs=steady_runs,
                                    repeats=repeats)
        finally:
            if not keep:
                self._empty()
        self._report(timings)

    @staticmethod
    def _empty() -> None:
        with connection.cursor() as cursor:
            names = ", ".join(model._meta.db_table for model in TABLES)
            cursor.execute(f"TRUNCATE {names}")

    def _report(self, t: Timings) -> None:
        write = self.stdout.write
        write(f"calls: {t.calls:,}  rollup rows: {t.rows['minute']:,} minute, "
              f"{t.rows['hour']:,} hour")
        write(f"generate: {t.generate_s:.1f} s  first rollup run (backfill): {t.backfill_s:.1f} s"
              f"  the run a lag later (checks the backfill's minutes): {t.catch_up_s:.1f} s")
        write(f"rollup run per 15 s at 620 calls/s: {_ms(t.steady_s)}")
        for minutes, samples in t.summary_s.items():
            write(f"summary minutes={minutes}: {_ms(samples)}")


def _ms(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return (f"min {ms[0]:.0f} ms, median {statistics.median(ms):.0f} ms, "
            f"max {ms[-1]:.0f} ms ({len(ms)} runs)")
