"""What a call cost, what it would have cost at the route's baseline, and why it was cheaper.

Today: cost at the served model's hosted price, baseline at the route's baseline model's
price. The split of the savings by cause (cache, small-model routing, compression,
self-hosting) is filled in by the cost work.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from proxy.snapshot import PriceInfo, Snapshot

if TYPE_CHECKING:
    from proxy.accounting import CallLog

_MILLION = Decimal(1_000_000)
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Costs:
    cost_usd: Decimal
    baseline_cost_usd: Decimal
    saved_cache_usd: Decimal = ZERO
    saved_routing_usd: Decimal = ZERO
    saved_compression_usd: Decimal = ZERO
    saved_selfhost_usd: Decimal = ZERO

    def as_record(self) -> dict[str, Decimal]:
        """The Call fields (dataclasses.asdict deep-copies: too slow for every request)."""
        return {
            "cost_usd": self.cost_usd,
            "baseline_cost_usd": self.baseline_cost_usd,
            "saved_cache_usd": self.saved_cache_usd,
            "saved_routing_usd": self.saved_routing_usd,
            "saved_compression_usd": self.saved_compression_usd,
            "saved_selfhost_usd": self.saved_selfhost_usd,
        }


def price_tokens(price: PriceInfo | None, prompt_tokens: int, completion_tokens: int) -> Decimal:
    if price is None:
        return ZERO
    return (prompt_tokens * price.input_usd_per_1m
            + completion_tokens * price.output_usd_per_1m) / _MILLION


def call_costs(log: CallLog, snapshot: Snapshot) -> Costs:
    route = log.route
    served = log.served_model
    baseline_model = route.baseline_model if route else served
    return Costs(
        cost_usd=price_tokens(snapshot.prices.get(served), log.prompt_tokens,
                              log.completion_tokens),
        baseline_cost_usd=price_tokens(snapshot.prices.get(baseline_model), log.prompt_tokens,
                                       log.completion_tokens),
    )
