"""The call log's journal: segments on disk, deleted once written, replayed when left behind.

Each test drives its own CallRecorder on a journal directory of its own, against the real
PostgreSQL test database."""
import logging
import os
import subprocess
import sys
import uuid

import orjson
import pytest

from analytics.journal import Journal
from analytics.models import Call
from analytics.recorder import CallRecorder
from tests.analytics.test_recorder import row


@pytest.fixture
def journal_dir(settings, tmp_path):
    settings.SLUICE_JOURNAL_DIR = tmp_path
    settings.SLUICE_JOURNAL_SCAN_S = 0.0
    return tmp_path


def segments(directory) -> list:
    return sorted(p for p in directory.glob("*.jsonl") if not p.name.startswith("refused-"))


def dead_owner_segment(directory, rows, *, tail: bytes = b"") -> None:
    """What a process killed with SIGKILL leaves: a segment and an unlocked lock file."""
    owner = f"999999-{uuid.uuid4().int % 10**18}"
    (directory / f"{owner}.lock").touch()
    lines = b"".join(orjson.dumps(r, default=str) + b"\n" for r in rows)
    (directory / f"{owner}-1.jsonl").write_bytes(lines + tail)


def test_every_record_is_on_disk_as_soon_as_it_is_recorded(transactional_db, journal_dir):
    recorder = CallRecorder()
    rows = [row(), row()]

    for r in rows:
        recorder.record(r)

    [segment] = segments(journal_dir)
    ids = [orjson.loads(line)["request_id"] for line in segment.read_bytes().splitlines()]
    assert ids == [r["request_id"] for r in rows]


def test_a_segment_is_deleted_once_its_records_are_in_the_database(
        transactional_db, journal_dir, settings):
    settings.SLUICE_JOURNAL_SEGMENT_BYTES = 2000  # a few records each
    recorder = CallRecorder()
    for _ in range(20):
        recorder.record(row())
    assert len(segments(journal_dir)) > 3

    assert recorder.flush()

    assert Call.objects.count() == 20
    assert len(segments(journal_dir)) <= 1  # at most the one being written
    recorder.stop(timeout_s=1)
    assert segments(journal_dir) == []


def test_what_a_dead_process_left_is_replayed_once(transactional_db, journal_dir):
    left = [row(), row(), row()]
    Call.objects.create(**{**left[0], "api_key_id": None})  # written just before it died
    dead_owner_segment(journal_dir, left)

    assert CallRecorder().flush()

    assert sorted(Call.objects.values_list("request_id", flat=True)) == sorted(
        r["request_id"] for r in left)
    assert list(journal_dir.iterdir()) == []


def test_a_torn_last_line_is_skipped_with_a_warning(transactional_db, journal_dir, caplog):
    good = [row(), row()]
    dead_owner_segment(journal_dir, good, tail=b'{"created_at":"2026-12-02T10:00:00+00:00","req')

    with caplog.at_level(logging.WARNING, logger="sluice.recorder"):
        assert CallRecorder().flush()

    assert Call.objects.count() == 2
    assert "skipped an unreadable line 3" in caplog.text
    assert segments(journal_dir) == []


def test_a_live_process_journal_is_left_alone(transactional_db, journal_dir):
    code = ("import os, sys, time; sys.path.insert(0, os.getcwd());"
            "from analytics.journal import Journal;"
            f"j = Journal({str(journal_dir)!r}, segment_bytes=1 << 20, fsync_interval=False);"
            "j.append(b'{}\\n', 1); print('ready', flush=True); time.sleep(30)")
    live = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "ready"

        assert CallRecorder().flush()

        assert len(segments(journal_dir)) == 1  # still there: its owner holds the lock
    finally:
        live.kill()
        live.wait()
    assert CallRecorder().flush()  # now dead: adopted (its one line is not a record)
    assert segments(journal_dir) == []


def test_a_journal_that_cannot_write_keeps_records_in_memory(transactional_db, settings,
                                                            tmp_path, caplog):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the journal's directory should be")
    settings.SLUICE_JOURNAL_DIR = blocked
    recorder = CallRecorder()

    with caplog.at_level(logging.ERROR, logger="sluice.journal"):
        recorder.record(row())
        recorder.record(row())

    assert caplog.text.count("cannot write") == 1  # loudly, once per outage
    assert recorder.flush()
    assert Call.objects.count() == 2


def test_the_interval_policy_fsyncs_off_the_request_path(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    journal = Journal(tmp_path, segment_bytes=1 << 20, fsync_interval=True)
    with journal.lock:
        journal.append(b"{}\n", 1)
    assert synced == []

    journal.sync()

    assert len(synced) == 2  # the segment, and the directory that got a new file
