"""Continuous-batching timing model and FIFO scheduler.

vLLM runs up to ``max_num_seqs`` sequences in one batch and queues the rest; a request's TTFT is
its queue wait plus prefill, and each running sequence then emits tokens at a rate that drops a
little as the batch grows. This module models exactly that, with no HTTP in sight, so the
timing rules can be unit-tested with a plain event loop.

Prefill costs only the prompt tokens the prefix cache (:mod:`simulator.prefix_cache`) does not
hold: the first token comes ``ttft_s + uncached / prefill_tokens_per_s`` after admission. With
``shared_prefill`` the prefills of concurrent requests take turns on one lane, in admission
order, as they share one GPU: a prefill starts when the one before it ends, so uncached prompts
cost throughput and queueing near capacity, not just their own latency.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from simulator.metrics import Stats
from simulator.prefix_cache import DEFAULT_BLOCK_SIZE, PrefixCache, PromptBlocks


@dataclass(frozen=True)
class TimingModel:
    """How long things take on the simulated GPU."""

    ttft_s: float = 0.020
    token_interval_s: float = 1 / 200
    prefill_s_per_token: float = 1 / 50_000
    batch_slowdown: float = 0.002
    shared_prefill: bool = False

    def first_token_delay(self, prompt_tokens: int) -> float:
        """Time from admission to the first token on an idle engine: fixed overhead plus the
        prefill of ``prompt_tokens`` (the uncached ones)."""
        return self.ttft_s + self.prefill_s_per_token * prompt_tokens

    def token_interval(self, running: int) -> float:
        """Time between two tokens of one sequence when ``running`` sequences share the batch."""
        return self.token_interval_s * (1.0 + self.batch_slowdown * max(0, running - 1))


class _Waiter:
    __slots__ = ("seqs", "tokens", "future")

    def __init__(self, seqs: int, tokens: int, future: asyncio.Future[None]) -> None:
        self.seqs, self.tokens, self.future = seqs, tokens, future


class Scheduler:
    """FIFO admission bounded by ``max_num_seqs`` running sequences and a KV-cache budget.

    A request that asks for ``n`` choices holds ``n`` sequences, as vLLM fans ``n`` out into
    child requests. Admission is strictly FIFO (no overtaking), like vLLM's waiting queue; an
    empty engine always admits the head so an oversized request cannot wedge the queue.
    """

    def __init__(self, max_num_seqs: int, kv_capacity_tokens: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.kv_capacity_tokens = max(1, kv_capacity_tokens)
        self.running = 0
        self.waiting = 0
        self.kv_tokens = 0
        self._queue: deque[_Waiter] = deque()

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_tokens / self.kv_capacity_tokens)

    def _fits(self, seqs: int, tokens: int) -> bool:
        if self.running == 0:
            return True
        return (self.running + seqs <= self.max_num_seqs
                and self.kv_tokens + tokens <= self.kv_capacity_tokens)

    def _take(self, seqs: int, tokens: int) -> None:
        self.running += seqs
        self.kv_tokens += tokens

    async def acquire(self, seqs: int, tokens: int) -> None:
        """Wait (FIFO) until ``seqs`` sequences holding ``tokens`` KV tokens may run."""
        seqs = min(seqs, self.max_num_seqs)
        if not self._queue and self._fits(seqs, tokens):
            self._take(seqs, tokens)
            return
        waiter = _Waiter(seqs, tokens, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self.waiting += seqs
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                # Admitted in the same tick the client went away: hand the slot back.
                self.release(seqs, tokens)
            else:
                self._queue.remove(waiter)
                self.waiting -= seqs
                self._admit()
            raise

    def release(self, seqs: int, tokens: int) -> None:
        """Give back what :meth:`acquire` (plus :meth:`grow`) took, and admit waiters."""
        self.running -= min(seqs, self.max_num_seqs)
        self.kv_tokens -= tokens
        self._admit()

    def grow(self, tokens: int) -> None:
        """Generated tokens occupy KV cache too."""
        self.kv_tokens += tokens

    def _admit(self) -> None:
        queue = self._queue
        while queue and self._fits(queue[0].seqs, queue[0].tokens):
            waiter = queue.popleft()
            self.waiting -= waiter.seqs
            self._take(waiter.seqs, waiter.tokens)
            waiter.future.set_result(None)


class Sequence:
    """One admitted request (all of its ``n`` choices advance in lockstep).

    Use as ``async with engine.sequence(...) as seq``: entering waits for a slot, leaving
    releases it, whatever happened in between (client gone, error). Token times are kept on an
    absolute schedule, so event-loop lag makes tokens arrive in bursts rather than late.
    """

    def __init__(self, engine: Engine, prompt_tokens: int, n: int,
                 prompts: list[PromptBlocks], outputs: list[tuple[str, ...]]) -> None:
        self.engine = engine
        self.prompt_tokens = prompt_tokens
        self.n = n
        self.arrival = engine.clock()
        self.admitted_at = 0.0
        self.cached_tokens = 0
        self.prefill_start = 0.0
        self.prefill_done = 0.0
        self.first_token_at = 0.0
        self.emitted = 0
        self.finish_reason = "abort"
        self._due = 0.0
        self._held = prompt_tokens * n
        self._prompts = prompts
        self._outputs = outputs
        self._pinned: list[int] = []
        self._private = 0

    async def __aenter__(self) -> Sequence:
        eng = self.engine
        await eng.scheduler.acquire(self.n, self._held)
        self.admitted_at = eng.clock()
        eng.stats.prompt_tokens += self.prompt_tokens
        if eng.cache is not None:
            self._look_up(eng.cache)
        self.prefill_start, self.prefill_done = eng.schedule_prefill(
            self.admitted_at, self.prompt_tokens - self.cached_tokens)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        eng = self.engine
        eng.scheduler.release(self.n, self._held)
        if eng.cache is not None:
            self._cache_done(eng.cache)
        eng.cancel_prefill(self.prefill_start, self.prefill_done)
        if exc_type is not None:
            self.finish_reason = "abort"
        eng.record_finished(self)

    def _look_up(self, cache: PrefixCache) -> None:
        """Reuse the cached leading blocks of each prompt and pin all its full blocks.

        The prompt's blocks are cached from admission on, as vLLM caches a block once it is
        scheduled: a later request can hit them, and with ``shared_prefill`` its own prefill
        runs after this one's anyway.
        """
        for prompt in self._prompts:
            self.cached_tokens += cache.lookup(prompt.hashes, prompt.tokens)
            cache.acquire(prompt.hashes)
            self._pinned += prompt.hashes
        self._reserve(cache)

    def _reserve(self, cache: PrefixCache) -> None:
        """Blocks this sequence holds beyond its cached ones leave less room for the cache."""
        private = max(0, -(-self._held // cache.block_size) - len(self._pinned))
        cache.reserve(private - self._private)
        self._private = private

    def _cache_done(self, cache: PrefixCache) -> None:
        """Cache the full blocks of what was generated, then unpin: the prompt and answer stay
        cached (least recently used first out) for the conversation's next turn."""
        cache.reserve(-self._private)
        self._private = 0
        grown: list[int] = []
        if self.emitted and self._prompts and self._outputs:
            per_prompt = max(1, len(self._outputs) // len(self._prompts))
            for i, pieces in enumerate(self._outputs):
                prompt = self._prompts[min(i // per_prompt, len(self._prompts) - 1)]
                grown += prompt.continued("".join(pieces[:self.emitted]))
        cache.insert(grown)
        cache.release(self._pinned)
        self._pinned = []

    async def advance(self, limit: int) -> int:
        """Wait for the next token time; return how many tokens (1..limit) are now due."""
        eng = self.engine
        if self.emitted == 0:
            self._due = self.prefill_done + eng.timing.ttft_s
        else:
            self._due += eng.timing.token_interval(eng.scheduler.running)
        await _sleep_until(self._due, eng.clock)
        if self.emitted == 0:
            self.first_token_at = eng.clock()
        count = 1
        now = eng.clock()
        interval = eng.timing.token_interval(eng.scheduler.running)
        while count < limit and self._due + interval <= now:
            self._due += interval
            count += 1
        self._emit(count)
        return count

    async def prefill(self) -> None:
        """Pooling requests (embeddings, scores): wait out the prefill and generate nothing."""
        await _sleep_until(self.prefill_done + self.engine.timing.ttft_s, self.engine.clock)

    async def run_to_end(self, total: int) -> None:
        """Non-streaming: take the same time as streaming ``total`` tokens, in two sleeps."""
        if total <= 0:
            return
        await self.advance(1)
        if total > 1:
            interval = self.engine.timing.token_interval(self.engine.scheduler.running)
            self._due += interval * (total - 1)
            await _sleep_until(self._due, self.engine.clock)
            self._emit(total - 1)

    def _emit(self, count: int) -> None:
        self.emitted += count
        grown = count * self.n
        self._held += grown
        self.engine.scheduler.grow(grown)
        self.engine.stats.generation_tokens += grown
        if self.engine.cache is not None:
            self._reserve(self.engine.cache)


async def _sleep_until(deadline: float, clock: Callable[[], float]) -> None:
    """Sleep until about ``deadline``.

    uvloop (libuv) timers have millisecond resolution and round the delay, so this wakes up to
    0.5 ms early or late; measured end to end that is closer to the target on average than
    rounding up, and the absolute schedule keeps the error from accumulating.
    """
    delay = deadline - clock()
    if delay > 0:
        await asyncio.sleep(delay)


class Engine:
    """The simulated GPU: a scheduler, a timing model, a prefix cache and the stats they feed.

    The prefix cache (``prefix_caching``, on by default as in vLLM v1) gets the KV-cache
    capacity in blocks of ``block_size`` tokens, shared with the running sequences.
    """

    def __init__(self, *, timing: TimingModel, max_num_seqs: int, kv_capacity_tokens: int,
                 clock: Callable[[], float] | None = None, prefix_caching: bool = True,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self.timing = timing
        self.scheduler = Scheduler(max_num_seqs, kv_capacity_tokens)
        self.cache = (PrefixCache(kv_capacity_tokens // block_size, block_size)
                      if prefix_caching else None)
        self.stats = Stats()
        # time.monotonic rather than loop.time(): uvloop caches the latter per loop iteration.
        self.clock = clock or time.monotonic
        self._lane_free_at = 0.0

    def sequence(self, prompt_tokens: int, n: int = 1, *,
                 prompts: list[PromptBlocks] | None = None,
                 outputs: list[tuple[str, ...]] | None = None) -> Sequence:
        """A context manager that queues, runs and then releases one request.

        ``prompts`` are the request's prompts as the prefix cache sees them (none: the request
        skips the cache, as pooling requests do); ``outputs`` the token pieces of each choice,
        prompt by prompt, whose generated blocks are cached when the sequence ends.
        """
        return Sequence(self, prompt_tokens, n, prompts or [], outputs or [])

    def schedule_prefill(self, now: float, tokens: int) -> tuple[float, float]:
        """(start, end) of a prefill of ``tokens`` tokens admitted at ``now``.

        Alone on the GPU it starts at once; with ``shared_prefill`` it waits for the lane,
        keeping an absolute schedule like :meth:`Sequence.advance`.
        """
        cost = tokens * self.timing.prefill_s_per_token
        if not self.timing.shared_prefill:
            return now, now + cost
        start = max(now, self._lane_free_at)
        self._lane_free_at = start + cost
        return start, self._lane_free_at

    def cancel_prefill(self, start: float, end: float) -> None:
        """A request gone before its prefill ended gives back the lane time it had left, if
        no prefill was queued behind it (those keep their schedule)."""
        if self.timing.shared_prefill and self._lane_free_at == end:
            now = self.clock()
            if now < end:
                self._lane_free_at = max(now, start)

    def record_finished(self, seq: Sequence) -> None:
        stats = self.stats
        stats.success[seq.finish_reason] = stats.success.get(seq.finish_reason, 0) + 1
        now = self.clock()
        if seq.admitted_at:
            stats.queue.observe(seq.admitted_at - seq.arrival)
        if seq.first_token_at:
            stats.ttft.observe(seq.first_token_at - seq.arrival)
            if seq.emitted > 1:
                stats.tpot.observe((now - seq.first_token_at) / (seq.emitted - 1))
        stats.e2e.observe(now - seq.arrival)
