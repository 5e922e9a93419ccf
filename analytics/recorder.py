"""The buffered call-log writer: the request path appends, a thread writes in batches.

`record()` appends the record to this process's journal on local disk (analytics/journal.py:
one write(2) of its JSON line, so a process killed at any moment loses no answered call) and to
an in-memory queue, safe from any thread and never touching the database. A writer thread
inserts the queue in batches every SLUICE_LOG_FLUSH_INTERVAL_S (sooner when a batch fills) and
tells the journal how far it got, which deletes the segments that are fully written.

When the database is down, records stay queued and are retried; past SLUICE_LOG_MAX_PENDING
they are dropped from memory, since the journal holds them, and replayed from its segments once
the database is back. At start-up, and every SLUICE_JOURNAL_SCAN_S, the writer also replays
what dead processes (any pid, on this host's journal directory) left behind. Inserts ignore
duplicate request ids, so every replay is idempotent: each call is in the log exactly once.
Inserts go through analytics/callwrite.py (COPY from tuples, in slices), so that the writer
thread never keeps the event loop from the interpreter for more than a millisecond or two.

Prometheus counters (analytics/prometheus.py) are fed here, off the request path: each flush
first counts the records queued since the last one, before any database work, so a call is
counted once whether its record is written at once, retried or refused. Replayed records of a
dead process are not counted again (their process counted them, unless it was killed within a
flush interval of recording them).
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
from analytics.journal import REFUSED_PREFIX, Journal, lines_read
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
        self._journal: Journal | None = None
        # Sequence numbers: `_seq` of the last record queued, `_written` of the last one in
        # the database (the queue is first in, first out); `_unjournaled` of the last record
        # the journal could not take (the queue is then its only copy).
        self._seq = self._written = self._unjournaled = 0
        self._replay_paths: list[Path] = []  # own segments dropped from memory in an outage
        self._next_scan = 0.0
        self._next_sync = 0.0

    # --- request path -------------------------------------------------------------------
    def record(self, row: Record) -> None:
        data = orjson.dumps(row, default=_json_default, option=orjson.OPT_APPEND_NEWLINE)
        journal = self._journal or self._journal_open()
        with journal.lock:
            self._seq += 1
            if not journal.append(data, self._seq):
                self._unjournaled = self._seq
            self._pending.append(row)
        if len(self._pending) >= settings.SLUICE_LOG_BATCH_SIZE:
            self._wake.set()

    def _journal_open(self) -> Journal:
        journal = Journal(settings.SLUICE_JOURNAL_DIR,
                          segment_bytes=settings.SLUICE_JOURNAL_SEGMENT_BYTES,
                          fsync_interval=settings.SLUICE_JOURNAL_FSYNC == "interval")
        self._journal = journal
        return journal

    def _after_fork(self) -> None:
        """A forked child (a Celery worker) must not append to its parent's journal."""
        if self._journal is not None:
            self._journal.forget_after_fork()
        self._journal = None
        self._pending.clear()
        self._seq = self._written = self._unjournaled = self._counted = 0
        self._replay_paths = []
        self._flush_lock = threading.Lock()
        self._thread = None

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._next_scan = 0.0  # replay what dead processes left, at once
        self._thread = threading.Thread(target=self._run, name="call-recorder", daemon=True)
        self._thread.start()

    def stop(self, *, timeout_s: float | None = None) -> None:
        """Flush what is queued; what the database would not take in time stays in the
        journal, for the next process to replay."""
        if timeout_s is None:
            timeout_s = settings.SLUICE_LOG_SHUTDOWN_FLUSH_S
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        deadline = time.monotonic() + timeout_s
        done = self.flush()
        while not done and time.monotonic() < deadline:
            time.sleep(0.2)
            done = self.flush()
        self._journal_close(written=done)
        self._connection_close()

    def _journal_close(self, *, written: bool) -> None:
        journal = self._journal
        if journal is None:
            return
        with self._flush_lock:
            if not written and self._unjournaled > self._written:
                self._unjournaled_save(journal)
            journal.close(remove=written and not self._pending)
            self._journal = None
            if not self._pending:
                self._seq = self._written = self._unjournaled = self._counted = 0
            self._replay_paths = []

    def _unjournaled_save(self, journal: Journal) -> None:
        """Shutting down with the database down and records the journal refused: one last
        try to put the queue on disk (it may have room again), else say what is lost."""
        rows = list(self._pending)
        with journal.lock:
            journal.seal_all()
            saved = all(journal.append(orjson.dumps(row, default=_json_default,
                                                    option=orjson.OPT_APPEND_NEWLINE), i)
                        for i, row in enumerate(rows, 1))
        if saved:
            logger.warning("call log: %d records that were in memory only are now in the "
                           "journal, to be replayed by the next process", len(rows))
        else:
            logger.error("call log: %d records are lost (database down, journal unwritable)",
                         len(rows))

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # --- writing ------------------------------------------------------------------------
    def flush(self) -> bool:
        """Write everything queued plus what is to be replayed; False if the database refused."""
        with self._flush_lock:
            self._count_new()
            if not self._replay():
                return False
            while self._pending:
                batch = self._take(settings.SLUICE_LOG_BATCH_SIZE)
                if not self._insert(batch):
                    self._pending.extendleft(reversed(batch))
                    self._counted += len(batch)
                    if len(self._pending) > settings.SLUICE_LOG_MAX_PENDING:
                        self._pending_drop()
                    return False
                self._written += len(batch)
                if self._journal is not None:
                    self._journal.written(self._written)
            return True

    def _run(self) -> None:
        """Flush every interval (backing off while the database is down) or when a batch
        fills; close and, under the `interval` policy, fsync journal segments in between."""
        interval = settings.SLUICE_LOG_FLUSH_INTERVAL_S
        backoff, due = interval, time.monotonic() + interval
        while not self._stop.is_set():
            woken = self._wake.wait(min(backoff, settings.SLUICE_JOURNAL_FSYNC_S))
            self._wake.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            if self._journal is not None and now >= self._next_sync:
                self._journal.sync()
                self._next_sync = now + settings.SLUICE_JOURNAL_FSYNC_S
            if not woken and now < due:
                continue
            ok = self.flush()
            self._metrics_guard(pending_set, len(self._pending))
            backoff = interval if ok else min(max(backoff * 2, interval), 10.0)
            due = time.monotonic() + backoff - 0.005

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

    def _pending_drop(self) -> None:
        """A long outage: free the memory of records the journal holds. Its segments are
        sealed and handed to the replay; records it could not take stay queued."""
        journal = self._journal
        if journal is None or self._unjournaled > self._written:
            return
        self._count_new()
        with journal.lock:
            paths = journal.seal_all()
            dropped = len(self._pending)
            self._pending.clear()
        self._replay_paths.extend(paths)
        self._written += dropped
        self._counted = 0
        logger.warning("call log: database still down; %d records left memory, kept in the "
                       "journal to be replayed", dropped)

    # --- replay -------------------------------------------------------------------------
    def _replay(self) -> bool:
        """Own segments dropped from memory, then dead processes' segments (looked for every
        SLUICE_JOURNAL_SCAN_S); each is deleted once its records are in the database."""
        while self._replay_paths:
            if not self._segment_replay(self._replay_paths[0]):
                return False
            self._replay_paths.pop(0).unlink(missing_ok=True)
        now = time.monotonic()
        if now < self._next_scan:
            return True
        journal = self._journal or self._journal_open()
        for orphan in journal.orphans():
            while orphan.segments:
                if not self._segment_replay(orphan.segments[0]):
                    return False
                orphan.segments.pop(0).unlink(missing_ok=True)
            journal.orphan_done(orphan)
        self._next_scan = now + settings.SLUICE_JOURNAL_SCAN_S
        return True

    def _segment_replay(self, path: Path) -> bool:
        lines = lines_read(path)
        rows: list[Record] = []
        for number, line in enumerate(lines, 1):
            if number % SLICE == 0:
                time.sleep(PAUSE_S)  # decoding holds the interpreter: let the event loop in
            try:
                rows.append(_row_load(line))
            except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
                # A crash mid-write leaves a torn last line; anything else is damage.
                logger.warning("call log: skipped an unreadable line %d of %s (%d bytes): %s",
                               number, path.name, len(line), exc)
        size_batch = settings.SLUICE_LOG_BATCH_SIZE
        for i in range(0, len(rows), size_batch):
            if not self._insert(rows[i : i + size_batch]):
                return False
        if rows:
            logger.info("call log: replayed %d records from %s", len(rows), path.name)
        return True

    # --- inserting ----------------------------------------------------------------------
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
            self._refused_keep(refused)
        return True

    @staticmethod
    def _connection_close() -> None:
        try:
            connections["default"].close()
        except DatabaseError:
            pass

    def _refused_keep(self, rows: list[Record]) -> None:
        """Rows the database would not store (a value it cannot hold) are kept for an operator
        to look at, next to the journal, and never replayed."""
        directory = Path(settings.SLUICE_JOURNAL_DIR)
        path = directory / f"{REFUSED_PREFIX}{time.time_ns()}-{os.getpid()}.jsonl"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as fh:
                for row in rows:
                    fh.write(orjson.dumps(row, default=_json_default,
                                          option=orjson.OPT_APPEND_NEWLINE))
        except OSError as exc:
            logger.error("call log: could not keep %d refused records: %s", len(rows), exc)
            return
        logger.warning("call log: kept %d refused records in %s", len(rows), path)


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
os.register_at_fork(after_in_child=recorder._after_fork)
