"""The call log's journal: every finished call's record is on local disk before the app has its
answer, so a process that dies (kill -9, the OOM killer, a crash in a C extension) loses none.

Layout, under SLUICE_JOURNAL_DIR (var/journal by default), per process ("owner" is
"<pid>-<start time ns>", unique even when pids are reused):

    <owner>.lock         held with flock() by its live owner; the kernel releases it on death
    <owner>-<n>.jsonl    the owner's segments: one JSON record per line, in the order recorded

`append()` is one write(2) of one encoded record to the page cache (a few µs): it survives the
process, not the machine. With SLUICE_JOURNAL_FSYNC=interval the writer thread fsyncs the
segment being written every SLUICE_JOURNAL_FSYNC_S, off the event loop, so that power loss
costs at most that window. A segment is sealed once it passes SLUICE_JOURNAL_SEGMENT_BYTES and
deleted once every record in it is in the database (the recorder says how far it got, by
sequence number). A file whose owner's lock can be taken belongs to a dead process: `orphans()`
hands it over to be replayed; duplicate request ids make a replay idempotent.

When a write fails (a full disk), the error is logged loudly, the segment is sealed (its torn
last line is skipped at replay) and appends are refused for a few seconds before the next try:
the recorder then keeps those records in memory only, as it always did.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("sluice.journal")

RETRY_AFTER_FAILURE_S = 5.0
_SUFFIX = ".jsonl"
REFUSED_PREFIX = "refused-"  # rows the database would not store, kept for an operator


@dataclass
class Segment:
    path: Path
    number: int
    fd: int = -1
    size: int = 0
    last_seq: int = 0  # the recorder's sequence number of the last record in it


@dataclass
class Orphan:
    """A dead owner's segments, adopted by this process (it holds the owner's lock)."""

    owner: str
    lock_fd: int
    segments: list[Path] = field(default_factory=list)


class Journal:
    def __init__(self, directory: Path, *, segment_bytes: int, fsync_interval: bool) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.lock = threading.Lock()
        self.owner = ""
        self._lock_fd = -1
        self._active: Segment | None = None
        self._sealed: list[Segment] = []
        self._number = 0
        self._to_close: list[Segment] = []
        self._down_until = 0.0
        self._dirty = False  # written since the last fsync
        self._dir_dirty = False  # a file was created since the last fsync of the directory
        self._orphans: dict[str, Orphan] = {}

    # --- the request path -------------------------------------------------------------------
    def append(self, data: bytes, seq: int) -> bool:
        """Append one encoded record (ending in a newline). False: not on disk (the caller
        keeps it in memory). Called with `lock` held: the recorder holds it to keep the
        journal and its in-memory queue in one order."""
        if self._down_until and time.monotonic() < self._down_until:
            return False
        active = self._active
        try:
            if active is None:
                active = self._segment_open()
            written = os.write(active.fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
        except OSError as exc:
            self._failed(exc)
            return False
        if self._down_until:
            self._down_until = 0.0
            logger.warning("call log journal: writing again to %s", self.directory)
        active.size += written
        active.last_seq = seq
        self._dirty = True
        if active.size >= self.segment_bytes:
            self._seal()
        return True

    def _segment_open(self) -> Segment:
        if not self.owner:
            self._owner_claim()
        self._number += 1
        path = self.directory / f"{self.owner}-{self._number}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._active = Segment(path=path, number=self._number, fd=fd)
        self._dir_dirty = True
        return self._active

    def _owner_claim(self) -> None:
        """Create this process's lock file already locked: written under a hidden name, locked,
        then renamed, so that no other process ever sees it unlocked while we live."""
        self.directory.mkdir(parents=True, exist_ok=True)
        owner = f"{os.getpid()}-{time.time_ns()}"
        hidden = self.directory / f".{owner}.lock"
        fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        hidden.rename(self.directory / f"{owner}.lock")
        self.owner, self._lock_fd = owner, fd

    def _seal(self) -> None:
        active, self._active = self._active, None
        if active is not None:
            self._sealed.append(active)
            self._to_close.append(active)

    def _failed(self, exc: OSError) -> None:
        if not self._down_until:
            logger.error("call log journal: cannot write to %s (%s); records are kept in memory "
                         "only, and lost if this process dies, until it can write again",
                         self.directory, exc)
        self._seal()  # a torn last line stays at the end of its own segment
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_S

    # --- the writer thread ------------------------------------------------------------------
    def written(self, seq: int) -> None:
        """Every record up to `seq` is in the database: delete the sealed segments it covers."""
        with self.lock:
            done = [s for s in self._sealed if s.last_seq <= seq]
            self._sealed = [s for s in self._sealed if s.last_seq > seq]
        for segment in done:
            self._close(segment)
            segment.path.unlink(missing_ok=True)

    def seal_all(self) -> list[Path]:
        """Seal the segment being written and give up this process's sealed segments, to be
        replayed from disk (the records they hold are dropped from memory). Called with `lock`
        held, so that no record is appended meanwhile."""
        self._seal()
        sealed, self._sealed = self._sealed, []
        return [s.path for s in sealed]

    def sync(self) -> None:
        """Close the segments sealed since the last call; with the `interval` policy, fsync
        what was written (and the directory, for new files) first. fsync releases the GIL."""
        with self.lock:
            to_close, self._to_close = self._to_close, []
            dup = -1
            if self.fsync_interval and self._dirty and self._active is not None:
                dup = os.dup(self._active.fd)  # the event loop may seal it meanwhile
            dirty_dir, self._dir_dirty = self._dir_dirty, False
            self._dirty = False
        try:
            if self.fsync_interval:
                for fd in [s.fd for s in to_close if s.fd >= 0] + ([dup] if dup >= 0 else []):
                    os.fsync(fd)
                if dirty_dir:
                    dir_fd = os.open(self.directory, os.O_RDONLY)
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
        except OSError as exc:
            logger.error("call log journal: fsync failed: %s", exc)
        finally:
            if dup >= 0:
                os.close(dup)
            for segment in to_close:
                self._close(segment)

    @staticmethod
    def _close(segment: Segment) -> None:
        if segment.fd >= 0:
            fd, segment.fd = segment.fd, -1
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self, *, remove: bool) -> None:
        """At shutdown. `remove`: everything was written, the files go; otherwise they stay
        (fsynced) for the next process to replay, and the lock is released for it."""
        with self.lock:
            self._seal()
            sealed, self._sealed = self._sealed, []
            to_close, self._to_close = self._to_close, []
            owner, lock_fd = self.owner, self._lock_fd
            self.owner, self._lock_fd, self._number = "", -1, 0
        for segment in to_close:
            if not remove and segment.fd >= 0:
                try:
                    os.fsync(segment.fd)
                except OSError:
                    pass
            self._close(segment)
        if remove:
            for segment in sealed:
                segment.path.unlink(missing_ok=True)
        if owner:
            if remove:
                (self.directory / f"{owner}.lock").unlink(missing_ok=True)
            os.close(lock_fd)
        for orphan in list(self._orphans.values()):
            self.orphan_release(orphan)

    def forget_after_fork(self) -> None:
        """A forked child shares the parent's files and lock: it starts a journal of its own."""
        self.lock = threading.Lock()
        self.owner, self._lock_fd, self._number = "", -1, 0
        self._active, self._sealed, self._to_close, self._orphans = None, [], [], {}

    # --- what dead processes left -----------------------------------------------------------
    def orphans(self) -> list[Orphan]:
        """Owners whose lock can be taken (dead), adopted with their segments, oldest first."""
        if not self.directory.is_dir():
            return []
        owners: set[str] = set()
        for path in self.directory.iterdir():
            name = path.name
            if name.startswith((".", REFUSED_PREFIX)):
                continue
            if name.endswith(".lock"):
                owners.add(name[: -len(".lock")])
            elif name.endswith(_SUFFIX):
                owners.add(name[: -len(_SUFFIX)].rsplit("-", 1)[0])
        owners.discard(self.owner)
        for owner in sorted(owners - self._orphans.keys()):
            lock_path = self.directory / f"{owner}.lock"
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # alive, or another process is replaying it
                os.close(fd)
                continue
            segments = sorted(self.directory.glob(f"{owner}-*{_SUFFIX}"), key=_segment_number)
            self._orphans[owner] = Orphan(owner=owner, lock_fd=fd, segments=segments)
        return list(self._orphans.values())

    def orphan_done(self, orphan: Orphan) -> None:
        """All its segments are written: remove them, then its lock file (still holding it)."""
        for path in orphan.segments:
            path.unlink(missing_ok=True)
        (self.directory / f"{orphan.owner}.lock").unlink(missing_ok=True)
        self.orphan_release(orphan)

    def orphan_release(self, orphan: Orphan) -> None:
        self._orphans.pop(orphan.owner, None)
        try:
            os.close(orphan.lock_fd)
        except OSError:
            pass


def _segment_number(path: Path) -> int:
    try:
        return int(path.name[: -len(_SUFFIX)].rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def lines_read(path: Path) -> list[bytes]:
    """The lines of a segment; a missing file (replayed by another process) has none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    return [line for line in raw.split(b"\n") if line.strip()]
