"""On PostgreSQL the call table is partitioned by day (migration 0007, analytics/partitions.py):
the writer's rows land in their day's partition, beat makes the coming days' partitions and
the retention drops whole old days."""
from __future__ import annotations

import uuid
from datetime import date, timedelta

from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from analytics.callwrite import calls_insert
from analytics.models import Call
from analytics.partitions import (
    DEFAULT,
    TABLE,
    day_bounds,
    partition_name,
    partitions_drop,
    partitions_ensure,
)
from analytics.tasks import calls_retention

TODAY = timezone.now().date()  # UTC: TIME_ZONE is UTC


def record(*, day: date | None = None, **fields) -> dict:
    """A writer record created at noon of `day` (default: now)."""
    created_at = timezone.now() if day is None else day_bounds(day)[0] + timedelta(hours=12)
    row = {"created_at": created_at, "request_id": uuid.uuid4().hex, "endpoint": "chat",
           "route": "chat", "status_code": 200, "latency_ms": 10.0}
    row.update(fields)
    return row


def sql(query: str, params=()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def partition_of(request_id: str) -> str:
    (name,), = sql(f"SELECT tableoid::regclass::text FROM {TABLE} WHERE request_id = %s",
                   [request_id])
    return name


def partitions() -> set[str]:
    return {name for (name,) in sql("SELECT inhrelid::regclass::text FROM pg_inherits "
                                    "WHERE inhparent = %s::regclass", [TABLE])}


def partition_add(day: date) -> str:
    """A day partition made by hand, as an older install's beat would have made it."""
    start, end = day_bounds(day)
    name = partition_name(day)
    sql(f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)", [start, end])
    return name


def partition_remove(day: date) -> None:
    sql(f"ALTER TABLE {TABLE} DETACH PARTITION {partition_name(day)}")
    sql(f"DROP TABLE {partition_name(day)}")


def test_the_call_table_is_partitioned_by_day_after_migrate(db):
    (strategy, key), = sql("SELECT p.partstrat, a.attname FROM pg_partitioned_table p "
                           "JOIN pg_attribute a ON a.attrelid = p.partrelid "
                           "AND a.attnum = p.partattrs[0] WHERE p.partrelid = %s::regclass",
                           [TABLE])
    assert (strategy, key) == ("r", "created_at")
    days = {partition_name(TODAY + timedelta(days=n)) for n in range(8)}
    assert {DEFAULT, *days} <= partitions()


def test_a_call_lands_in_its_days_partition(db):
    row = record()

    calls_insert([row])

    assert partition_of(row["request_id"]) == partition_name(TODAY)


def test_a_call_of_a_day_without_partition_lands_in_the_default_partition(db):
    row = record(day=TODAY + timedelta(days=60))

    calls_insert([row])

    assert partition_of(row["request_id"]) == DEFAULT


def test_a_replayed_record_is_not_duplicated(db):
    row = record()
    calls_insert([row])

    calls_insert([row, record()])  # a journal replayed after its first batch was written

    assert Call.objects.filter(request_id=row["request_id"]).count() == 1
    assert Call.objects.count() == 2


def test_ids_stay_unique_across_partitions(db):
    rows = [record(day=TODAY + timedelta(days=n)) for n in (0, 1, 60)]

    calls_insert(rows)

    ids = list(Call.objects.values_list("id", flat=True))
    assert len(set(ids)) == 3


def test_partitions_ensure_creates_the_coming_days_missing(db):
    partition_remove(TODAY + timedelta(days=3))

    created = partitions_ensure(days_ahead=7)

    assert created == [partition_name(TODAY + timedelta(days=3))]
    assert partition_name(TODAY + timedelta(days=3)) in partitions()


def test_partitions_ensure_is_idempotent(db):
    partitions_ensure(days_ahead=10)
    before = partitions()

    assert partitions_ensure(days_ahead=10) == []
    assert partitions() == before


def test_rows_in_the_default_partition_move_into_their_new_days_partition(db):
    day = TODAY + timedelta(days=12)  # beyond the partitions made ahead: DEFAULT takes it
    row = record(day=day)
    calls_insert([row])
    call_id = Call.objects.get(request_id=row["request_id"]).id

    partitions_ensure(days_ahead=12)

    assert partition_of(row["request_id"]) == partition_name(day)
    assert Call.objects.get(request_id=row["request_id"]).id == call_id
    assert sql(f"SELECT count(*) FROM {DEFAULT}") == [(0,)]


def test_partitions_drop_drops_old_days_and_keeps_recent_ones(db):
    old, older, recent = (TODAY - timedelta(days=n) for n in (31, 40, 29))
    for day in (old, older, recent):
        partition_add(day)
    calls_insert([record(day=day, request_id=str(day)) for day in (old, older, recent)])

    dropped = partitions_drop(older_than_days=30)

    assert dropped.partitions == [partition_name(older), partition_name(old)]
    assert partition_name(recent) in partitions()
    assert list(Call.objects.values_list("request_id", flat=True)) == [str(recent)]


def test_partitions_drop_deletes_expired_rows_of_the_default_partition(db):
    expired, kept = record(day=TODAY - timedelta(days=45)), record(day=TODAY + timedelta(days=60))
    calls_insert([expired, kept])

    assert partitions_drop(older_than_days=30).rows == 1

    assert list(Call.objects.values_list("request_id", flat=True)) == [kept["request_id"]]


def test_the_calls_retention_task_drops_whole_old_days(db, settings):
    settings.SLUICE_CALL_RETENTION_DAYS = 30
    day = TODAY - timedelta(days=35)
    partition_add(day)
    calls_insert([record(day=day)])

    calls_retention()

    assert partition_name(day) not in partitions()
    assert not Call.objects.exists()


def test_the_migration_moves_existing_rows_and_keeps_the_ids_growing(transactional_db):
    call_command("migrate", "analytics", "0006_rollups", verbosity=0)
    try:
        assert sql("SELECT relkind FROM pg_class WHERE oid = %s::regclass", [TABLE]) == [("r",)]
        rows = [record(), record(day=TODAY - timedelta(days=3)),
                record(day=TODAY - timedelta(days=400))]
        calls_insert(rows)
        before = dict(sql(f"SELECT request_id, id FROM {TABLE}"))
    finally:
        call_command("migrate", "analytics", verbosity=0)

    assert dict(sql(f"SELECT request_id, id FROM {TABLE}")) == before
    assert [partition_of(row["request_id"]) for row in rows] == [
        partition_name(TODAY), partition_name(TODAY - timedelta(days=3)), DEFAULT]
    new = record()
    calls_insert([new])
    assert Call.objects.get(request_id=new["request_id"]).id > max(before.values())
