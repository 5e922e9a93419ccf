"""The buffered call-log writer: the request path appends, a thread writes in batches.

`record()` is a deque append, safe from any thread and never touching the database. A writer
thread inserts batches every SLUICE_LOG_FLUSH_INTERVAL_S (sooner when a batch fills). When
the database is down, records stay queued and are retried; past SLUICE_LOG_MAX_PENDING, or
at shutdown with the database still down, they are spooled to JSON-lines files that are
replayed once it is back. Inserts ignore duplicate request ids, so a replay is idempotent.
They go through analytics/callwrite.py (COPY from tuples, in slices), so that the writer
thread never keeps the event loop from the interpreter for more than a millisecond or two.

Prometheus counters (analytics/prometheus.py) are fed here, off the request path: each flush
first counts the records queued since the last one, before any database work, so a call is
counted once whether its record is written at once, retried, spooled or refused.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, connections

from analytics.callwrite import PAUSE_S, SLICE, calls_insert
from analytics.prometheus import calls_observe, pending_set

logger = logging.getLogger("sluice.recorder")

Record = dict[str, Any]


class CallRecorder:
    def __init__(self) -> None:
        self._pending: deque[Record] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.db_ok = True
        # The first `_counted` records of the queue are counted already (at the start of a
        # flush, or taken, refused by the database and put back); the writer side moves it.
        self._counted = 0
        self._metrics_failed = False

    # --- request path -------------------------------------------------------------------
    def record(self, row: Record) -> None:
        self._pending.append(row)
        if len(self._pending) >= settings.SLUICE_LOG_BATCH_SIZE:
            self._wake.set()

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="call-recorder", daemon=True)
        self._thread.start()

    def stop(self, *, timeout_s: float | None = None) -> None:
        """Flush what is queued; spool whatever the database would not take in time."""
        if timeout_s is None:
            timeout_s = settings.SLUICE_LOG_SHUTDOWN_FLUSH_S
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            if not self.flush():
                time.sleep(0.2)
        if self._pending:
            self._spool_pending()
        self._connection_close()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # --- writing ------------------------------------------------------------------------
    def flush(self) -> bool:
        """Write everything queued plus any spooled files; False if the database refused."""
        with self._flush_lock:
            self._count_new()
            if not self._spool_replay():
                return False
            while self._pending:
                batch = self._take(settings.SLUICE_LOG_BATCH_SIZE)
                if not self._insert(batch):
                    self._pending.extendleft(reversed(batch))
                    self._counted += len(batch)
                    if len(self._pending) > settings.SLUICE_LOG_MAX_PENDING:
                        self._spool_pending()
                    return False
            return True

    def _run(self) -> None:
        backoff = settings.SLUICE_LOG_FLUSH_INTERVAL_S
        while not self._stop.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            if self._stop.is_set():
                break
            ok = self.flush()
            self._metrics_guard(pending_set, len(self._pending))
            interval = settings.SLUICE_LOG_FLUSH_INTERVAL_S
            backoff = interval if ok else min(max(backoff * 2, interval), 10.0)

    def _take(self, n: int) -> list[Record]:
        batch = []
        while self._pending and len(batch) < n:
            batch.append(self._pending.popleft())
        counted = min(self._counted, len(batch))
        self._counted -= counted
        if counted < len(batch):  # queued since the last count
            self._metrics_guard(calls_observe, batch[counted:])
        return batch

    def _count_new(self) -> None:
        """Hand the records queued since the last count to the Prometheus counters. Indexing
        is safe while the request path appends: only this side removes records."""
        pending, total = self._pending, len(self._pending)
        if total > self._counted:
            fresh = list(itertools.islice(pending, self._counted, total))  # one pass
            self._counted = total
            self._metrics_guard(calls_observe, fresh)

    def _metrics_guard(self, update, arg) -> None:
        """Metrics must never cost the call log a record: a failure is logged once. Records
        are counted a slice at a time, pausing between slices so that the event loop is not
        kept from the interpreter (analytics/callwrite.py)."""
        try:
            if update is calls_observe:
                for start in range(0, len(arg), SLICE):
                    if start:
                        time.sleep(PAUSE_S)
                    update(arg[start:start + SLICE])
            else:
                update(arg)
        except Exception:
            if not self._metrics_failed:
                logger.exception("call log: updating the Prometheus metrics failed")
            self._metrics_failed = True

    def _insert(self, batch: list[Record]) -> bool:
        try:
            calls_insert(batch)
        except (DataError, IntegrityError):
            # The database is up but refuses a row (a value it cannot store): write the rest,
            # set the refused ones aside, and never let one bad row block the whole log.
            self._connection_close()
            return self._insert_one_by_one(batch)
        except DatabaseError as exc:
            if self.db_ok:
                logger.warning("call log: database unavailable, keeping %d records: %s",
                               len(self._pending) + len(batch), exc)
            self.db_ok = False
            self._connection_close()
            return False
        if not self.db_ok:
            logger.warning("call log: database is back, writing queued records")
        self.db_ok = True
        return True

    def _insert_one_by_one(self, batch: list[Record]) -> bool:
        refused = []
        for row in batch:
            try:
                calls_insert([row])
            except (DataError, IntegrityError) as exc:
                self._connection_close()
                refused.append(row)
                logger.error("call log: the database refused record %s: %s",
                             row.get("request_id"), exc)
            except DatabaseError:
                self._connection_close()
                return False  # down after all: the whole batch is retried later (idempotent)
        if refused:
            self._spool_write(refused, prefix="refused")
        return True

    @staticmethod
    def _connection_close() -> None:
        try:
            connections["default"].close()
        except DatabaseError:
            pass

    # --- spool ----------------------------------------------------------------------------
    def _spool_pending(self) -> None:
        rows = self._take(len(self._pending))
        if rows:
            self._spool_write(rows, prefix="calls")

    @staticmethod
    def _spool_write(rows: list[Record], *, prefix: str) -> None:
        """`calls-*` files are replayed into the database; `refused-*` ones (rows it would not
        store) are kept for an operator to look at."""
        directory = Path(settings.SLUICE_LOG_SPOOL_DIR)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{prefix}-{time.time_ns()}-{os.getpid()}.jsonl"
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            for row in rows:
                fh.write(orjson.dumps(row, default=_json_default) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.rename(path)
        logger.warning("call log: spooled %d records to %s", len(rows), path)

    def _spool_replay(self) -> bool:
        directory = Path(settings.SLUICE_LOG_SPOOL_DIR)
        if not directory.is_dir():
            return True
        for path in sorted(directory.glob("calls-*.jsonl")):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:  # another replica replayed it first
                continue
            rows = [_row_load(line) for line in raw.splitlines() if line.strip()]
            size = settings.SLUICE_LOG_BATCH_SIZE
            for i in range(0, len(rows), size):
                if not self._insert(rows[i : i + size]):
                    return False
            path.unlink(missing_ok=True)
            logger.info("call log: replayed %d spooled records from %s", len(rows), path.name)
        return True


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value))


def _row_load(line: bytes) -> Record:
    row = orjson.loads(line)
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    for name in [n for n in row if n.endswith("_usd")]:
        row[name] = Decimal(row[name])
    return row


recorder = CallRecorder()
