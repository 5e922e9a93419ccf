"""The call log's day partitions on PostgreSQL, where the migration 0007 partitioned
`analytics_call` by range of created_at: `analytics_call_pYYYYMMDD` holds one UTC day,
`analytics_call_default` any row of a day without a partition (none is ever refused).

- `partitions_ensure` (beat, hourly, and after every migrate) makes the coming days'
  partitions. A new one is created aside, filled with its day's rows from DEFAULT (there when
  beat was down), then attached: ATTACH takes a lighter lock on the parent than
  CREATE TABLE … PARTITION OF, which would also refuse to run over those rows.
- `partitions_drop` (the calls-retention task) detaches and drops whole days older than the
  retention, a few milliseconds under lock instead of millions of row deletes, and deletes the
  expired rows left in DEFAULT. A day goes once its last instant is past the retention.

Both take an advisory lock (one run at a time across replicas) and a lock timeout: a long
query on the table makes a run give up and leave the work to the next one, rather than queue
the writers behind its lock. Anywhere else (SQLite, or before the migration) they do nothing.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.db import DEFAULT_DB_ALIAS, DatabaseError, OperationalError, connection, transaction
from django.utils import timezone

from analytics.models import Call

logger = logging.getLogger("sluice.partitions")

TABLE = Call._meta.db_table
DEFAULT = f"{TABLE}_default"
_NAME = re.compile(rf"^{TABLE}_p(\d{{8}})$")
LOCK_TIMEOUT = "3s"
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock timeout


@dataclass(frozen=True, slots=True)
class Dropped:
    partitions: list[str] = field(default_factory=list)  # whole days dropped
    rows: int = 0  # expired rows deleted from the DEFAULT partition


def partitioned() -> bool:
    """Whether the call table is a partitioned PostgreSQL table."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def partitions_ensure(*, days_ahead: int = 7) -> list[str]:
    """Create the partitions of today and the next `days_ahead` days that are missing, moving
    their rows out of DEFAULT; return the names created. Idempotent."""
    if not partitioned():
        return []
    today = timezone.now().astimezone(UTC).date()
    existing = _days()
    created = []
    try:
        for n in range(days_ahead + 1):
            day = today + timedelta(days=n)
            if day not in existing and _partition_create(day):
                created.append(partition_name(day))
    except OperationalError as exc:
        _lock_refused(exc)
    return created


def partitions_drop(*, older_than_days: int, batch: int = 10_000) -> Dropped:
    """Detach and drop the day partitions wholly older than `older_than_days`, then delete up
    to `batch` rows that old from DEFAULT. Stops early, keeping the rest for the next run, if
    a lock is not granted within LOCK_TIMEOUT."""
    if not partitioned():
        return Dropped()
    cutoff = timezone.now() - timedelta(days=older_than_days)
    dropped = []
    try:
        for day, name in sorted(_days().items()):
            if day_bounds(day)[1] > cutoff:
                break
            with transaction.atomic(), connection.cursor() as cursor:
                _locks_take(cursor)
                if day not in _days():  # another run dropped it first
                    continue
                cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {name}")
                cursor.execute(f"DROP TABLE {name}")
            dropped.append(name)
        rows = _default_purge(cutoff=cutoff, batch=batch)
    except OperationalError as exc:
        _lock_refused(exc)
        rows = 0
    if dropped:
        logger.info("call partitions: dropped %s", ", ".join(dropped))
    return Dropped(partitions=dropped, rows=rows)


def partitions_after_migrate(*, using: str = DEFAULT_DB_ALIAS, **kwargs) -> None:
    """post_migrate: a fresh install, or one whose beat was down, has today's partitions at
    once. A failure (a lock not granted) must not fail the deploy: beat retries hourly."""
    if using != DEFAULT_DB_ALIAS:
        return
    try:
        partitions_ensure()
    except DatabaseError:
        logger.exception("call partitions: creating the coming days' partitions failed")


def partition_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


def _days() -> dict[date, str]:
    """The day partitions attached to the call table, by day (others, if any, are left
    alone)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                       "WHERE i.inhparent = %s::regclass", [TABLE])
        names = [name for (name,) in cursor.fetchall()]
    return {datetime.strptime(m[1], "%Y%m%d").date(): name
            for name in names if (m := _NAME.match(name))}


def _partition_create(day: date) -> bool:
    """Create, fill from DEFAULT and attach one day's partition, in one transaction; False if
    another run made it first."""
    name = partition_name(day)
    start, end = day_bounds(day)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in Call._meta.concrete_fields)
    with transaction.atomic(), connection.cursor() as cursor:
        _locks_take(cursor)
        if day in _days():
            return False
        # ATTACH takes this lock anyway; taken first, no row of the day lands in DEFAULT
        # between the move and the attach (which would then refuse).
        cursor.execute(f"LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE")
        # The parent's columns and CHECKs, as ATTACH requires; it builds the indexes.
        cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING CONSTRAINTS)")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE created_at >= %s AND created_at < %s "
            f"RETURNING {columns}) INSERT INTO {name} ({columns}) SELECT {columns} FROM moved",
            [start, end])
        moved = cursor.rowcount
        cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} "
                       f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')")
    if moved:
        logger.warning("call partitions: moved %d rows of %s out of the default partition",
                       moved, day)
    return True


def _default_purge(*, cutoff: datetime, batch: int) -> int:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {DEFAULT} WHERE id IN "
                       f"(SELECT id FROM {DEFAULT} WHERE created_at < %s LIMIT %s)",
                       [cutoff, batch])
        return cursor.rowcount


def _locks_take(cursor) -> None:
    cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    cursor.execute("SELECT pg_advisory_xact_lock(hashtext('sluice call partitions'))")


def _lock_refused(exc: OperationalError) -> None:
    """Re-raise anything but a lock timeout, which leaves the work to the next run."""
    if getattr(exc.__cause__, "sqlstate", None) != LOCK_NOT_AVAILABLE:
        raise exc
    logger.warning("call partitions: a lock was not granted in time, the next run goes on: %s",
                   exc)
