"""What a call cost, what it would have cost at the route's baseline, and why it was cheaper.

Notation for one call: `p` prompt and `c` completion tokens as served, `k` prompt tokens that
compression removed (`prompt_tokens_saved`), `B(x, y)` the route's baseline model's hosted
price for x prompt and y completion tokens, `H(x, y)` the served model's hosted price (the
baseline's when the served model has no price of its own: no price, no claimed saving).

- **baseline** = `B(p + k, c)`: the call's tokens before any saving, at the price the team
  would otherwise pay. For a cache hit `p` and `c` are the stored answer's usage.
- **cost** = what was spent: zero for a cache hit (`cache` exact or semantic); on a
  self-hosted backend (`gpu_usd_per_hour` set) its share of the GPU's hour (below); else
  `H(p, c)`.
- **savings** = baseline − cost, split so that the parts add up to it exactly, in this order:
  - cache (a hit) = the whole baseline; the `cache` field says exact or semantic;
  - compression = `k` at the baseline's input price;
  - routing = `B(p, c) − H(p, c)`: the saving (or the loss) from the model that served the
    call not being the baseline model. Small-model down-routing (`decision == "small"`) is
    the usual reason; a route whose own model differs from its baseline, or a fallback to
    another model, lands here too ("model choice" in the README), so the four causes of the
    issue stay four;
  - self-hosting = `H(p, c) − cost`: zero on a hosted backend, negative when the GPU's hour
    costs more than the hosted price of the tokens it served.

Every amount is rounded to the call log's 10 decimal places here, once, and the rounding
residue (at most 1e-10 $) is left in routing, so the stored parts add up to the stored
baseline − cost to the last digit.

Self-hosted $ per token: `SelfHostMeter` keeps, per process and per backend, the tokens
(prompt + completion, weighed alike) served over the trailing hour in one-minute buckets. A
call costs `gpu_usd_per_hour × span / 1 h × call tokens / tokens in the window`, this call
included, where `span` is the hour, or the time since this process first saw the backend when
that is shorter (at least a minute). At a steady load that charges exactly the GPU's hourly
price per hour; idle time is paid by the traffic around it, as the GPU bill is.
Per process: with several web replicas sharing one backend each sees its share of the tokens
and charges the whole hour to it (documented in the README as a limitation).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from proxy.snapshot import PriceInfo, Snapshot

if TYPE_CHECKING:
    from proxy.accounting import CallLog

_MILLION = Decimal(1_000_000)
_HOUR_S = 3600
_PLACES = Decimal("1e-10")  # the call log's decimal places
ZERO = Decimal(0)
CACHE_HITS = frozenset({"exact", "semantic"})


@dataclass(frozen=True, slots=True)
class Costs:
    cost_usd: Decimal
    baseline_cost_usd: Decimal
    saved_cache_usd: Decimal = ZERO
    saved_routing_usd: Decimal = ZERO
    saved_compression_usd: Decimal = ZERO
    saved_selfhost_usd: Decimal = ZERO
    saved_batch_usd: Decimal = ZERO

    def as_record(self) -> dict[str, Decimal]:
        """The Call fields (dataclasses.asdict deep-copies: too slow for every request)."""
        return {
            "cost_usd": self.cost_usd,
            "baseline_cost_usd": self.baseline_cost_usd,
            "saved_cache_usd": self.saved_cache_usd,
            "saved_routing_usd": self.saved_routing_usd,
            "saved_compression_usd": self.saved_compression_usd,
            "saved_selfhost_usd": self.saved_selfhost_usd,
            "saved_batch_usd": self.saved_batch_usd,
        }


def price_tokens(price: PriceInfo | None, prompt_tokens: int, completion_tokens: int) -> Decimal:
    if price is None:
        return ZERO
    return (prompt_tokens * price.input_usd_per_1m
            + completion_tokens * price.output_usd_per_1m) / _MILLION


def _q(amount: Decimal) -> Decimal:
    return amount.quantize(_PLACES)


class _Window:
    __slots__ = ("first", "buckets", "total")

    def __init__(self, now: float) -> None:
        self.first = now
        self.buckets: deque[list[int]] = deque()  # [minute index, tokens], oldest first
        self.total = 0


class SelfHostMeter:
    """Tokens each self-hosted backend served in this process over the trailing hour, and
    each call's share of the GPU's cost. O(1) per call, at most 60 buckets per backend."""

    def __init__(self, *, window_s: int = _HOUR_S, bucket_s: int = 60,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.bucket_s, self.clock = window_s, bucket_s, clock
        self._windows: dict[str, _Window] = {}

    def charge(self, backend: str, usd_per_hour: Decimal, tokens: int) -> Decimal:
        """Count `tokens` as served by `backend` now and return their cost (unrounded)."""
        if tokens <= 0:
            return ZERO
        now = self.clock()
        window = self._windows.get(backend)
        if window is None:
            window = self._windows[backend] = _Window(now)
        minute = int(now // self.bucket_s)
        buckets = window.buckets
        oldest = minute - self.window_s // self.bucket_s
        while buckets and buckets[0][0] <= oldest:
            window.total -= buckets.popleft()[1]
        if buckets and buckets[-1][0] == minute:
            buckets[-1][1] += tokens
        else:
            buckets.append([minute, tokens])
        window.total += tokens
        span = min(self.window_s, max(self.bucket_s, int(now - window.first)))
        return usd_per_hour * span * tokens / (_HOUR_S * window.total)

    def tokens(self, backend: str) -> int:
        window = self._windows.get(backend)
        return window.total if window else 0

    def reset(self) -> None:
        self._windows.clear()


selfhost_meter = SelfHostMeter()

# Per-snapshot precomputation: backend name → GPU $ per hour, self-hosted backends only.
_gpu_for: tuple[Snapshot | None, dict[str, Decimal]] = (None, {})


def _gpu_rates(snapshot: Snapshot) -> dict[str, Decimal]:
    global _gpu_for
    cached_snapshot, rates = _gpu_for
    if cached_snapshot is not snapshot:
        rates = {b.name: b.gpu_usd_per_hour for b in snapshot.backends
                 if b.gpu_usd_per_hour is not None}
        _gpu_for = (snapshot, rates)
    return rates


def call_costs(log: CallLog, snapshot: Snapshot, *,
               meter: SelfHostMeter | None = None) -> Costs:
    """The call's cost, baseline and savings split (module docstring). No I/O; a self-hosted
    call is counted by `meter` (the process's own by default)."""
    route = log.route
    served = log.served_model
    prices = snapshot.prices
    baseline_price = prices.get(route.baseline_model if route else served)
    p, c, k = log.prompt_tokens, log.completion_tokens, log.prompt_tokens_saved
    baseline = _q(price_tokens(baseline_price, p + k, c))
    if log.cache in CACHE_HITS:
        return Costs(cost_usd=ZERO, baseline_cost_usd=baseline, saved_cache_usd=baseline)
    hosted = _q(price_tokens(prices.get(served, baseline_price), p, c))
    gpu_per_hour = _gpu_rates(snapshot).get(log.backend) if log.backend else None
    if gpu_per_hour is None:
        cost = hosted
    else:
        cost = _q((meter or selfhost_meter).charge(log.backend, gpu_per_hour, p + c))
    compression = _q(baseline_price.input_usd_per_1m * k / _MILLION) if baseline_price else ZERO
    discount = _batch_discount(log, cost)
    return Costs(
        cost_usd=cost - discount,
        baseline_cost_usd=baseline,
        saved_routing_usd=baseline - compression - hosted,
        saved_compression_usd=compression,
        saved_selfhost_usd=hosted - cost,
        saved_batch_usd=discount,
    )


def _batch_discount(log: CallLog, cost: Decimal) -> Decimal:
    """What the operator waives of a batch call's cost (SLUICE_BATCH_DISCOUNT)."""
    if not log.endpoint.startswith("batch:"):
        return ZERO
    from django.conf import settings

    share = settings.SLUICE_BATCH_DISCOUNT
    return _q(cost * Decimal(str(share))) if share > 0 else ZERO
