"""The semantic cache's vector index: per route, a numpy matrix of normalised float32 vectors
searched by brute-force dot product, bounded (oldest out) and expiring (TTL).

Shared and durable through Redis when REDIS_URL is set: every entry (vector bytes, key hash,
question, answer, expiry) is appended to a Redis stream per route (`sluice:semantic:<route>`,
trimmed to about `semantic_max_entries`, expiring with the route's TTL). Each process loads a
route's stream when it first needs that route and then pulls what other processes appended
every SLUICE_SEMANTIC_SYNC_S, in a background thread. Stream ids tell which entries a process
already holds, so its own appends are not added twice. Without Redis the index lives in the
process only (it starts empty after a restart).

A Redis outage never fails a request: appends are dropped, syncs retried, lookups keep using
what the process holds. Everything here runs in threads (the embedder's executor, the sync
thread), never on the event loop.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from proxy.embedder import DIM

logger = logging.getLogger("sluice.semantic")

PREFIX = "sluice:semantic:"
REDIS_TIMEOUT_S = 0.5
SYNC_BATCH = 2000
WARN_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Candidate:
    similarity: float
    question: str
    answer: bytes


class RouteIndex:
    """One route's entries. Thread-safe; the search holds the lock for one matrix product."""

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
        self.last_id = "0-0"  # how far this process has read the route's Redis stream

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
            self._end += 1
            if self._end - self._start > self.max_entries:
                self._evict(self._end - self.max_entries)
            return True

    def search(self, vector: np.ndarray, *, key: int, threshold: float,
               limit: int) -> list[Candidate]:
        """Live entries under `key` with similarity >= threshold, best first (at most limit)."""
        now = time.time()
        with self._lock:
            lo, hi = self._start, self._end
            if hi == lo:
                return []
            scores = self._vectors[lo:hi] @ vector
            scores[(self._keys[lo:hi] != key) | (self._expires[lo:hi] <= now)] = -2.0
            found = np.flatnonzero(scores >= threshold)
            if found.size > limit:
                found = found[np.argpartition(scores[found], -limit)[-limit:]]
            found = found[np.argsort(-scores[found])]
            return [Candidate(float(scores[i]), self._questions[lo + i], self._answers[lo + i])
                    for i in found]

    def _evict(self, new_start: int) -> None:
        for i in range(self._start, new_start):
            if self._ids[i] is not None:
                self._known_ids.discard(self._ids[i])
            self._questions[i] = self._answers[i] = self._ids[i] = None
        self._start = new_start

    def _make_room(self) -> None:
        """Drop evicted and expired entries; grow (double) when still more than half full."""
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


class IndexSet:
    """Every route's index in this process, and their link to Redis."""

    def __init__(self, *, redis_url: str = "", sync_s: float = 1.0) -> None:
        self._redis = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_S,
                                               socket_connect_timeout=REDIS_TIMEOUT_S)
        self.sync_s = sync_s
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
            self._indexes.pop(route, None)

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
        """Pull the stream entries after index.last_id; how many were added."""
        if self._redis is None:
            return 0
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
        for index in list(self._indexes.values()):
            self.sync_route(index)

    def start_sync(self) -> None:
        if self._redis is None or self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._sync_loop, daemon=True,
                                                name="sluice-semantic-sync")
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.sync_s):
            self.sync_once()

    def _warn(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            logger.warning("semantic cache: Redis %s failed (%r); serving from this process",
                           what, exc)
