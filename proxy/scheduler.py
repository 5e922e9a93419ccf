"""Step 6's choice: which backend of a model serves this request, in microseconds.

A route's policy (admin) sets the weights of four scorers, each read from memory only:

- **load**: (Sluice's own in-flight + the backend's scraped `vllm:num_requests_waiting`) over
  its `max_concurrency`. The own count is exact and instant; the scraped one (proxy/loadscrape)
  adds what other replicas and other clients put on the server, up to a second late.
- **kv**: the scraped `vllm:kv_cache_usage_perc` (a full KV cache means preemptions).
- **prefix**: the share of the request's leading blocks (proxy/prefix.py) that this process
  last sent to the backend: it likely still holds them in its prefix cache, so their prefill
  is skipped.
- **session**: 1 for the backend the request's session (`x-session-id`, else `user`) is pinned
  to.

score = prefix·w_prefix + session·w_session − load·w_load − kv·w_kv; the highest wins, ties go
round the candidates in turn. Affinity (prefix and session) is bounded-load: a backend whose
load would pass SLUICE_BALANCE_LOAD_FACTOR × its fair share of the pool's load gets none, so a
hot prefix or session spills over instead of piling up (consistent hashing with bounded loads,
Mirrokni et al.). At low traffic that bound alone would move a conversation off its backend
as soon as that backend served anything while another sat idle, and re-prefilling thousands of
tokens costs far more than sharing a batch; so a backend also keeps affinity while it is
within SLUICE_BALANCE_LOAD_SLACK requests of its fair share. Candidates reach this module
already filtered: breaker closed, a free slot.
"""
from __future__ import annotations

import functools
import itertools
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings

from proxy.prefix import prefix_hashes

if TYPE_CHECKING:  # snapshot imports this module for the policies' weights
    from proxy.snapshot import BackendInfo, RouteInfo

SESSION_HEADER = "x-session-id"

ROUND_ROBIN, LEAST_LOAD, PREFIX_AWARE, SESSION = (
    "round_robin", "least_load", "prefix_aware", "session")

# Why a backend was picked (Call.backend_reason, x-sluice-backend-reason).
REASON_ONLY = "only_choice"
REASON_RR = "round_robin"
REASON_LOAD = "least_load"
REASON_PREFIX = "prefix_hit"
REASON_SESSION = "session"
REASON_BOUNDED = "bounded_load"  # the prefix or session backend was overloaded: spilled over


@dataclass(frozen=True, slots=True)
class Weights:
    load: float = 1.0
    kv: float = 0.5
    prefix: float = 0.0
    session: float = 0.0


POLICY_WEIGHTS: dict[str, Weights | None] = {
    ROUND_ROBIN: None,
    LEAST_LOAD: Weights(),
    PREFIX_AWARE: Weights(prefix=1.0),
    SESSION: Weights(prefix=1.0, session=2.0),
}


class WeightsError(ValueError):
    """A route's weights text does not parse."""


def weights_parse(text: str) -> dict[str, float]:
    """'prefix=1, load=0.5' -> {'prefix': 1.0, 'load': 0.5}; blank -> {}."""
    out: dict[str, float] = {}
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in Weights.__slots__:
            raise WeightsError(f"'{part}' is not name=number with a name among "
                               f"{', '.join(Weights.__slots__)}.")
        try:
            number = float(value)
        except ValueError:
            raise WeightsError(f"'{value.strip()}' is not a number.") from None
        if not math.isfinite(number) or number < 0:
            raise WeightsError(f"The weight of {name} must be a number >= 0.")
        out[name] = number
    return out


@functools.lru_cache(maxsize=256)
def weights_for(policy: str, text: str = "") -> Weights | None:
    """A policy's weights with a route's overrides; None: plain round robin."""
    base = POLICY_WEIGHTS.get(policy, POLICY_WEIGHTS[PREFIX_AWARE])
    if base is None:
        return None
    overrides = weights_parse(text) if text else {}
    return Weights(**{name: overrides.get(name, getattr(base, name))
                      for name in Weights.__slots__})


class LoadView(Protocol):
    """What the scorers read of a backend (pool.BackendState has these)."""

    in_flight: int
    waiting: int
    kv_usage: float


class Hint:
    """What one request brings to the choice: its weights, prefix blocks and session."""

    __slots__ = ("weights", "prefix", "session")

    def __init__(self, weights: Weights, prefix: tuple[int, ...] = (),
                 session: str | None = None) -> None:
        self.weights, self.prefix, self.session = weights, prefix, session


def hint_build(route: RouteInfo, body: dict[str, Any], *, endpoint: str,
               headers: Mapping[str, str]) -> Hint | None:
    """What the route's policy needs of this request (None: round robin). Only the scorers
    with a weight cost anything: least-load hashes nothing."""
    weights = route.balance
    if weights is None:
        return None
    prefix = prefix_hashes(body, endpoint) if weights.prefix else ()
    session = None
    if weights.session:
        session = headers.get(SESSION_HEADER) or None
        if session is None and isinstance(body.get("user"), str):
            session = body["user"] or None
    return Hint(weights, prefix, session)


class PrefixTable:
    """Which backends this process last sent each prefix block to: a bounded LRU of block
    hash -> up to `per_block` backend names, most recent last. A backend's own cache evicts on
    its own schedule, so an entry is a likelihood, not a promise; the LRU bound keeps the
    table to about the working set of recent conversations."""

    def __init__(self, max_blocks: int, per_block: int = 4) -> None:
        self.max_blocks = max_blocks
        self.per_block = per_block
        self._table: OrderedDict[int, list[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """For each backend, how many leading blocks of `hashes` it was sent."""
        matched: dict[str, int] = {}
        table = self._table
        for depth, block in enumerate(hashes, 1):
            names = table.get(block)
            if names is None:
                break  # blocks chain: a later one cannot be there without this one
            for name in names:
                matched[name] = depth
        return matched

    def remember(self, hashes: Sequence[int], name: str) -> None:
        """`name` was sent these blocks. Walked from the last: the leading blocks end up the
        most recently used, so the LRU drops a chain's tail first and what remains of a chain
        is always a leading run (as a backend's own cache evicts)."""
        table, per_block = self._table, self.per_block
        for block in reversed(hashes):
            names = table.get(block)
            if names is None:
                table[block] = [name]
                continue
            table.move_to_end(block)
            if names[-1] != name:
                if name in names:
                    names.remove(name)
                names.append(name)
                if len(names) > per_block:
                    del names[0]
        while len(table) > self.max_blocks:
            table.popitem(last=False)


class SessionTable:
    """Session id -> the backend it is pinned to, a bounded LRU."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._pins: OrderedDict[str, str] = OrderedDict()

    def get(self, session: str) -> str | None:
        return self._pins.get(session)

    def pin(self, session: str, name: str) -> None:
        pins = self._pins
        pins[session] = name
        pins.move_to_end(session)
        if len(pins) > self.max_sessions:
            pins.popitem(last=False)


class Scheduler:
    """The per-process choice state: the prefix and session tables and the tie-break turn."""

    def __init__(self, *, prefix_blocks: int, sessions: int, load_factor: float,
                 load_slack: float) -> None:
        self.prefixes = PrefixTable(prefix_blocks)
        self.sessions = SessionTable(sessions)
        self.load_factor = load_factor
        self.load_slack = load_slack
        self._turn = itertools.count()

    def choose(self, free: Sequence[BackendInfo], loads: Sequence[LoadView],
               hint: Hint) -> tuple[int, str]:
        """The index into `free` of the backend to use, and why. `loads[i]` is `free[i]`'s."""
        n = len(free)
        start = next(self._turn) % n
        if n == 1:
            return self._chosen(free, hint, 0, REASON_ONLY)
        w = hint.weights
        matched = self.prefixes.match(hint.prefix) if w.prefix and hint.prefix else None
        pinned = self.sessions.get(hint.session) if w.session and hint.session else None
        queued = [load.in_flight + load.waiting for load in loads]
        # The pool's load with this request, per slot: a backend's fair share is that times
        # its max_concurrency.
        fair = (sum(queued) + 1) / sum(b.max_concurrency for b in free)
        w_load, w_kv, w_prefix = w.load, w.kv, (w.prefix / len(hint.prefix) if matched else 0.0)
        best, best_score, best_affine, spilled = 0, -math.inf, False, False
        for i in itertools.chain(range(start, n), range(start)):
            backend = free[i]
            slots = backend.max_concurrency
            score = -w_load * queued[i] / slots - w_kv * loads[i].kv_usage
            affinity = w_prefix * matched.get(backend.name, 0) if matched else 0.0
            if pinned is not None and pinned == backend.name:
                affinity += w.session
            if affinity:
                share = fair * slots
                if queued[i] + 1 > max(math.ceil(self.load_factor * share),
                                       share + self.load_slack):
                    spilled, affinity = True, 0.0
                score += affinity
            if score > best_score:
                best, best_score, best_affine = i, score, affinity > 0
        if best_affine:
            reason = REASON_SESSION if pinned == free[best].name else REASON_PREFIX
        else:
            reason = REASON_BOUNDED if spilled else REASON_LOAD
        return self._chosen(free, hint, best, reason)

    def _chosen(self, free: Sequence[BackendInfo], hint: Hint, index: int,
                reason: str) -> tuple[int, str]:
        name = free[index].name
        if hint.prefix and hint.weights.prefix:
            self.prefixes.remember(hint.prefix, name)
        if hint.session and hint.weights.session:
            self.sessions.pin(hint.session, name)
        return index, reason


_scheduler: Scheduler | None = None


def scheduler_get() -> Scheduler:
    """This process's scheduler, sized by the SLUICE_BALANCE_* settings on first use."""
    global _scheduler
    if _scheduler is None:
        _scheduler = Scheduler(prefix_blocks=settings.SLUICE_BALANCE_PREFIX_BLOCKS,
                               sessions=settings.SLUICE_BALANCE_SESSIONS,
                               load_factor=settings.SLUICE_BALANCE_LOAD_FACTOR,
                               load_slack=settings.SLUICE_BALANCE_LOAD_SLACK)
    return _scheduler
