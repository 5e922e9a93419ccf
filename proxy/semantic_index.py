"""The semantic cache's vector index: per route, a numpy matrix of normalised float32 vectors,
bounded (oldest out) and expiring (TTL).

Search: below TWO_STAGE_MIN entries, one brute-force dot product. From there on, two stages
(the full product reads 150 MB at 100k entries and is memory-bound at 2.5-4 ms): each row is
also kept as its coordinates in a REDUCED_DIM-dimensional orthonormal basis (the main
directions of the route's own vectors, fitted again whenever the matrix is rebuilt) plus the
norm of what that basis leaves out. Stage one scores every row of the key on the reduced
coordinates; stage two scores exactly the RERANK best of those and every other row whose
upper bound (reduced score + residual norm x the query's residual norm) still beats the
threshold or the limit-th exact score (up to RERANK_EXTRA rows, highest bound first). So the
result is the exact one whenever at most RERANK_EXTRA rows are left above that bar.

Shared and durable through Redis when REDIS_URL is set: every entry (vector bytes, key hash,
question, answer, expiry) is appended to a Redis stream per route (`sluice:semantic:<route>`,
trimmed to about `semantic_max_entries`, expiring with the route's TTL). Each process loads a
route's stream when it first needs that route and then pulls what other processes appended
every SLUICE_SEMANTIC_SYNC_S, in a background thread. Stream ids tell which entries a process
already holds, so its own appends are not added twice.

Without Redis (the embedded default) each route's live entries are written to
`VAR_DIR/semantic/<route>.npz` (arrays only, no pickles: vectors, key hashes, expiries, and
the questions and answers as concatenated bytes with end offsets), by the same background
thread at most every PERSIST_S seconds when entries were added, by `stop()` and at exit; a
temporary file then a rename, so a crash leaves the previous file whole. A route's file is
loaded when the route is first used, expired entries dropped. A crash loses at most the last
PERSIST_S seconds of entries; the file is per process, so several processes on one VAR_DIR
without Redis each rewrite it with what they hold (the last writer wins).

A Redis outage never fails a request: appends are dropped, syncs retried, lookups keep using
what the process holds. Everything here runs in threads (the embedder's executor, the sync
thread), never on the event loop.
"""
from __future__ import annotations

import atexit
import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from proxy.embedder import DIM

logger = logging.getLogger("sluice.semantic")

PREFIX = "sluice:semantic:"
REDIS_TIMEOUT_S = 0.5
SYNC_BATCH = 2000
WARN_EVERY_S = 60.0

# The two-stage search (see RouteIndex._search_two_stage); measured in the README.
TWO_STAGE_MIN = 20_000  # below this the exact product is as fast (30 MB or less)
REDUCED_DIM = 64
RERANK = 64
RERANK_EXTRA = 1024
BOUND_SLACK = 1e-4  # float32 rounding in the bound
BASIS_SAMPLE = 4096

PERSIST_S = 5.0  # without Redis: how often a changed route's file is rewritten
FILE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Candidate:
    similarity: float
    question: str
    answer: bytes


class RouteIndex:
    """One route's entries. Thread-safe; a search holds the lock for its matrix products."""

    def __init__(self, route: str, *, max_entries: int, capacity: int = 256) -> None:
        self.route = route
        self.max_entries = max(1, max_entries)
        self._lock = threading.Lock()
        capacity = max(8, min(capacity, self.max_entries + 1))
        self._vectors = np.zeros((capacity, DIM), dtype=np.float32)
        self._keys = np.zeros(capacity, dtype=np.int64)
        self._expires = np.zeros(capacity, dtype=np.float64)
        self._questions: list[str | None] = [None] * capacity
        self._answers: list[bytes | None] = [None] * capacity
        self._ids: list[str | None] = [None] * capacity
        self._known_ids: set[str] = set()
        self._start = 0  # entries before this were evicted (oldest out)
        self._end = 0
        # The two-stage search (from TWO_STAGE_MIN entries): an orthonormal basis of the
        # entries' main directions (DIM x REDUCED_DIM), each row's coordinates in it and the
        # norm of what the basis leaves out of it.
        self._basis: np.ndarray | None = None
        self._reduced: np.ndarray | None = None
        self._residual: np.ndarray | None = None
        self.last_id = "0-0"  # how far this process has read the route's Redis stream
        self.loaded = False  # from the route's file (without Redis)
        self.dirty = False  # entries added since the file was last written

    def __len__(self) -> int:
        now = time.time()
        with self._lock:
            return int(np.count_nonzero(self._expires[self._start:self._end] > now))

    def add(self, vector: np.ndarray, *, key: int, question: str, answer: bytes,
            expires_at: float, entry_id: str | None = None) -> bool:
        """Append an entry; False when this stream entry is already held."""
        with self._lock:
            if entry_id is not None and entry_id in self._known_ids:
                return False
            if self._end == len(self._keys):
                self._make_room()
            i = self._end
            self._vectors[i] = vector
            self._keys[i] = key
            self._expires[i] = expires_at
            self._questions[i], self._answers[i], self._ids[i] = question, answer, entry_id
            if entry_id is not None:
                self._known_ids.add(entry_id)
            if self._basis is not None:
                self._project(i, i + 1)
            self._end += 1
            self.dirty = True
            if self._end - self._start > self.max_entries:
                self._evict(self._end - self.max_entries)
            if self._basis is None and self._end - self._start >= TWO_STAGE_MIN:
                self._fit_basis()
            return True

    def search(self, vector: np.ndarray, *, key: int, threshold: float,
               limit: int) -> list[Candidate]:
        """Live entries under `key` with similarity >= threshold, best first (at most limit)."""
        now = time.time()
        vector = np.asarray(vector, dtype=np.float32)
        with self._lock:
            lo, hi = self._start, self._end
            if hi == lo:
                return []
            if self._basis is None or hi - lo < TWO_STAGE_MIN:
                rows, scores = self._search_exact(vector, key, now)
            else:
                rows, scores = self._search_two_stage(vector, key, now, threshold, limit)
            keep = scores >= threshold
            rows, scores = rows[keep], scores[keep]
            if rows.size > limit:
                best = np.argpartition(scores, -limit)[-limit:]
                rows, scores = rows[best], scores[best]
            order = np.argsort(-scores, kind="stable")
            return [Candidate(float(scores[j]), self._questions[rows[j]], self._answers[rows[j]])
                    for j in order]

    def _search_exact(self, vector: np.ndarray, key: int,
                      now: float) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self._start, self._end
        scores = self._vectors[lo:hi] @ vector
        scores[(self._keys[lo:hi] != key) | (self._expires[lo:hi] <= now)] = -2.0
        return np.arange(lo, hi), scores

    def _search_two_stage(self, vector: np.ndarray, key: int, now: float, threshold: float,
                          limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Stage one scores every row on its REDUCED_DIM coordinates (a quarter of the bytes
        of the full product); stage two scores exactly the RERANK rows that score best there,
        then every other row whose upper bound (reduced score + the product of the two
        residual norms, Cauchy-Schwarz) still beats the bar those set: up to RERANK_EXTRA of
        them, highest bound first. Exact whenever fewer than RERANK_EXTRA rows are left
        above the bar (the usual case on sentence embeddings); otherwise approximate, with
        the best reduced scores always reranked."""
        lo, hi = self._start, self._end
        projected = vector @ self._basis
        q_residual = float(np.sqrt(max(0.0, float(vector @ vector)
                                       - float(projected @ projected))))
        approx = self._reduced[lo:hi] @ projected
        approx[(self._keys[lo:hi] != key) | (self._expires[lo:hi] <= now)] = -np.inf
        k = min(RERANK, hi - lo)
        first = np.argpartition(approx, -k)[-k:]
        first = first[np.isfinite(approx[first])]
        if first.size == 0:
            return first, np.zeros(0, dtype=np.float32)
        exact = self._vectors[lo + first] @ vector
        bar = threshold
        if exact.size >= limit:
            bar = max(bar, float(np.partition(exact, -limit)[-limit]))
        bound = approx + self._residual[lo:hi] * q_residual  # -inf stays -inf
        bound[first] = -np.inf
        more = np.flatnonzero(bound >= bar - BOUND_SLACK)
        if more.size > RERANK_EXTRA:
            more = more[np.argpartition(bound[more], -RERANK_EXTRA)[-RERANK_EXTRA:]]
        if more.size:
            first = np.concatenate([first, more])
            exact = np.concatenate([exact, self._vectors[lo + more] @ vector])
        return first + lo, exact

    def _fit_basis(self) -> None:
        """The REDUCED_DIM main directions of (a sample of) the live rows, then every row's
        coordinates in them. Any orthonormal basis keeps the bound exact; a fitted one makes
        it tight."""
        lo, hi = self._start, self._end
        step = max(1, (hi - lo) // BASIS_SAMPLE)
        sample = self._vectors[lo:hi:step].astype(np.float64)
        _, eigvecs = np.linalg.eigh(sample.T @ sample)
        self._basis = np.ascontiguousarray(eigvecs[:, ::-1][:, :REDUCED_DIM], dtype=np.float32)
        capacity = len(self._keys)
        self._reduced = np.zeros((capacity, REDUCED_DIM), dtype=np.float32)
        self._residual = np.zeros(capacity, dtype=np.float32)
        self._project(lo, hi)

    def _project(self, lo: int, hi: int) -> None:
        rows = self._vectors[lo:hi]
        reduced = rows @ self._basis
        self._reduced[lo:hi] = reduced
        self._residual[lo:hi] = np.sqrt(np.maximum(
            0.0, np.einsum("ij,ij->i", rows, rows) - np.einsum("ij,ij->i", reduced, reduced)))

    def _evict(self, new_start: int) -> None:
        for i in range(self._start, new_start):
            if self._ids[i] is not None:
                self._known_ids.discard(self._ids[i])
            self._questions[i] = self._answers[i] = self._ids[i] = None
        self._start = new_start

    def _make_room(self) -> None:
        """Drop evicted and expired entries; grow (double) when still more than half full.
        The two-stage basis is fitted again on what is kept (amortised like the copy)."""
        now = time.time()
        lo, hi = self._start, self._end
        live = np.flatnonzero(self._expires[lo:hi] > now) + lo
        for i in range(lo, hi):
            if self._expires[i] <= now and self._ids[i] is not None:
                self._known_ids.discard(self._ids[i])
        capacity = len(self._keys)
        if live.size * 2 > capacity:
            capacity = min(capacity * 2, self.max_entries + capacity // 8 + 8)
            capacity = max(capacity, live.size + 8)
        vectors = np.zeros((capacity, DIM), dtype=np.float32)
        keys = np.zeros(capacity, dtype=np.int64)
        expires = np.zeros(capacity, dtype=np.float64)
        n = live.size
        vectors[:n], keys[:n], expires[:n] = self._vectors[live], self._keys[live], \
            self._expires[live]
        questions: list[str | None] = [None] * capacity
        answers: list[bytes | None] = [None] * capacity
        ids: list[str | None] = [None] * capacity
        for j, i in enumerate(live):
            questions[j], answers[j], ids[j] = self._questions[i], self._answers[i], self._ids[i]
        self._vectors, self._keys, self._expires = vectors, keys, expires
        self._questions, self._answers, self._ids = questions, answers, ids
        self._start, self._end = 0, n
        self._basis = self._reduced = self._residual = None
        if n >= TWO_STAGE_MIN:
            self._fit_basis()

    # --- the route's file (without Redis) --------------------------------------------------
    def snapshot(self) -> dict[str, np.ndarray] | None:
        """The live entries as arrays for np.savez (no pickles); None when nothing changed."""
        now = time.time()
        with self._lock:
            if not self.dirty:
                return None
            self.dirty = False
            lo, hi = self._start, self._end
            live = np.flatnonzero(self._expires[lo:hi] > now) + lo
            questions = [self._questions[i].encode() for i in live]
            answers = [self._answers[i] for i in live]
            arrays = {"vectors": self._vectors[live], "keys": self._keys[live],
                      "expires": self._expires[live]}
        arrays["questions"] = np.frombuffer(b"".join(questions), dtype=np.uint8)
        arrays["question_ends"] = np.cumsum([len(q) for q in questions], dtype=np.int64)
        arrays["answers"] = np.frombuffer(b"".join(answers), dtype=np.uint8)
        arrays["answer_ends"] = np.cumsum([len(a) for a in answers], dtype=np.int64)
        arrays["version"] = np.array([FILE_VERSION], dtype=np.int64)
        return arrays

    def load(self, arrays: Any) -> int:
        """Add a snapshot's live entries (the newest max_entries); how many were added."""
        if int(arrays["version"][0]) != FILE_VERSION:
            return 0
        vectors, keys, expires = arrays["vectors"], arrays["keys"], arrays["expires"]
        questions, answers = arrays["questions"].tobytes(), arrays["answers"].tobytes()
        q_ends, a_ends = arrays["question_ends"], arrays["answer_ends"]
        if vectors.ndim != 2 or vectors.shape[1] != DIM:
            return 0
        now = time.time()
        live = np.flatnonzero(expires > now)[-self.max_entries:]
        for i in live:
            q_start = int(q_ends[i - 1]) if i else 0
            a_start = int(a_ends[i - 1]) if i else 0
            self.add(vectors[i], key=int(keys[i]),
                     question=questions[q_start:int(q_ends[i])].decode(),
                     answer=answers[a_start:int(a_ends[i])], expires_at=float(expires[i]))
        return int(live.size)


class IndexSet:
    """Every route's index in this process, and their link to Redis."""

    def __init__(self, *, redis_url: str = "", sync_s: float = 1.0,
                 directory: Path | None = None) -> None:
        """Without redis_url, each route's entries are kept in `directory` (by default
        settings.VAR_DIR / "semantic")."""
        self._redis = None
        self.directory: Path | None = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_S,
                                               socket_connect_timeout=REDIS_TIMEOUT_S)
        else:
            if directory is None:
                from django.conf import settings

                directory = Path(settings.VAR_DIR) / "semantic"
            self.directory = Path(directory)
            atexit.register(self.persist_once)
        self.sync_s = sync_s
        self._persisted_at = 0.0
        self._indexes: dict[str, RouteIndex] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._warned_at = 0.0

    def get(self, route: str, *, max_entries: int) -> RouteIndex:
        """The route's index; created on first use and loaded from Redis then."""
        index = self._indexes.get(route)
        if index is not None:
            index.max_entries = max(1, max_entries)
            return index
        with self._lock:
            index = self._indexes.get(route)
            if index is None:
                index = RouteIndex(route, max_entries=max_entries)
                self.sync_route(index)
                self._indexes[route] = index
        self.start_sync()
        return index

    def forget(self, route: str) -> None:
        """Drop this process's copy of a route's index (the Redis stream stays)."""
        with self._lock:
            index = self._indexes.pop(route, None)
        if index is not None:
            self.persist_route(index)

    def add(self, route: str, vector: np.ndarray, *, key: int, question: str, answer: bytes,
            ttl_s: float, max_entries: int) -> None:
        index = self.get(route, max_entries=max_entries)
        expires_at = time.time() + ttl_s
        entry_id = None
        if self._redis is not None:
            entry_id = self._append(route, vector, key=key, question=question, answer=answer,
                                    expires_at=expires_at, ttl_s=ttl_s, max_entries=max_entries)
        index.add(vector, key=key, question=question, answer=answer, expires_at=expires_at,
                  entry_id=entry_id)

    def _append(self, route: str, vector: np.ndarray, *, key: int, question: str,
                answer: bytes, expires_at: float, ttl_s: float, max_entries: int) -> str | None:
        fields = {"v": np.asarray(vector, dtype=np.float32).tobytes(), "k": str(key),
                  "q": question.encode(), "a": answer, "e": repr(expires_at)}
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xadd(PREFIX + route, fields, maxlen=max_entries, approximate=True)
            pipe.expire(PREFIX + route, int(ttl_s) + 60)
            entry_id, _ = pipe.execute()
            return entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        except Exception as exc:
            self._warn("store", exc)
            return None

    def sync_route(self, index: RouteIndex) -> int:
        """Pull the stream entries after index.last_id; how many were added. Without Redis:
        load the route's file, once."""
        if self._redis is None:
            return self.load_route(index)
        added = 0
        now = time.time()
        try:
            while True:
                rows = self._redis.xrange(PREFIX + index.route, min=f"({index.last_id}",
                                          count=SYNC_BATCH)
                for raw_id, fields in rows:
                    entry_id = raw_id.decode()
                    index.last_id = entry_id
                    expires_at = float(fields[b"e"])
                    if expires_at <= now:
                        continue
                    vector = np.frombuffer(fields[b"v"], dtype=np.float32)
                    if vector.shape != (DIM,):
                        continue
                    added += index.add(vector, key=int(fields[b"k"]),
                                       question=fields[b"q"].decode(), answer=fields[b"a"],
                                       expires_at=expires_at, entry_id=entry_id)
                if len(rows) < SYNC_BATCH:
                    return added
        except Exception as exc:
            self._warn("sync", exc)
            return added

    def sync_once(self) -> None:
        if self._redis is None:
            if time.monotonic() - self._persisted_at >= PERSIST_S:
                self.persist_once()
            return
        for index in list(self._indexes.values()):
            self.sync_route(index)

    # --- without Redis: one file per route ------------------------------------------------
    def path_of(self, route: str) -> Path:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", route)
        if name != route or name.startswith("."):
            name = f"{name}-{hashlib.blake2b(route.encode(), digest_size=6).hexdigest()}"
        return self.directory / f"{name}.npz"

    def load_route(self, index: RouteIndex) -> int:
        """Add what the route's file holds (expired entries dropped); never raises."""
        if self.directory is None or index.loaded:
            return 0
        index.loaded = True
        path = self.path_of(index.route)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                added = index.load(arrays)
        except FileNotFoundError:
            return 0
        except Exception as exc:
            logger.warning("semantic cache: could not load %s (%r); starting empty", path, exc)
            return 0
        index.dirty = False
        return added

    def persist_route(self, index: RouteIndex) -> bool:
        """Rewrite the route's file when entries were added since; never raises."""
        if self.directory is None:
            return False
        arrays = index.snapshot()
        if arrays is None:
            return False
        path = self.path_of(index.route)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as f:
                np.savez(f, **arrays)
            os.replace(temporary, path)
            return True
        except Exception as exc:
            index.dirty = True
            logger.warning("semantic cache: could not write %s (%r)", path, exc)
            temporary.unlink(missing_ok=True)
            return False

    def persist_once(self) -> None:
        self._persisted_at = time.monotonic()
        for index in list(self._indexes.values()):
            self.persist_route(index)

    def start_sync(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._sync_loop, daemon=True,
                                                name="sluice-semantic-sync")
                self._thread.start()

    def stop(self) -> None:
        """End the background thread; without Redis, write what changed first."""
        self._stop.set()
        if self._redis is None:
            self.persist_once()

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.sync_s):
            try:
                self.sync_once()
            except Exception:
                logger.exception("semantic cache: background sync failed")

    def _warn(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            logger.warning("semantic cache: Redis %s failed (%r); serving from this process",
                           what, exc)
