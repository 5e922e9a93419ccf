"""The gateway's configuration as an immutable in-memory snapshot.

The request path reads only this snapshot, never the database. `snapshot_reload()` builds a
new one from the tables and swaps it in atomically; it runs at start-up, after an admin edit
in this process (signals) and periodically in the background for edits made elsewhere.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from types import MappingProxyType

from proxy.scheduler import POLICY_WEIGHTS, Weights, WeightsError, weights_for

logger = logging.getLogger("sluice.snapshot")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int | None
    name: str
    routes: frozenset[str] | None = None  # None: every route
    rpm_limit: int = 0  # 0: unlimited
    tpm_limit: int = 0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; see the SLUICE_UPSTREAM_*_TIMEOUT_S settings."""

    connect: float
    ttfb: float
    idle: float
    total: float


@functools.cache
def timeouts_default() -> Timeouts:
    """The settings' timeouts (cached: read on every request; cleared when settings change)."""
    from django.conf import settings

    return Timeouts(
        connect=settings.SLUICE_UPSTREAM_CONNECT_TIMEOUT_S,
        ttfb=settings.SLUICE_UPSTREAM_TTFB_TIMEOUT_S,
        idle=settings.SLUICE_UPSTREAM_READ_TIMEOUT_S,
        total=settings.SLUICE_UPSTREAM_TOTAL_TIMEOUT_S,
    )


@dataclass(frozen=True, slots=True)
class RouteInfo:
    name: str
    model: str
    baseline_model: str
    fallbacks: tuple[str, ...] = ()  # routes or models, in order
    max_attempts: int = 0  # 0: SLUICE_RETRY_MAX_ATTEMPTS
    timeouts: Timeouts | None = None  # None: the settings' defaults
    rpm_limit: int = 0  # 0: unlimited
    tpm_limit: int = 0
    # Cost steps (all off by default)
    cache_exact: bool = False
    cache_semantic: bool = False
    cache_ttl_s: int = 3600
    cache_nonzero_temperature: bool = False
    semantic_threshold: float | None = None  # None: SLUICE_SEMANTIC_THRESHOLD
    semantic_max_entries: int = 10000
    small_model: str = ""  # a route or a served model; "": no down-routing
    downroute_threshold: float = 0.5
    prompt_token_budget: int = 0  # 0: no compression
    # Backend choice (proxy/scheduler.py): the policy's weights, None for round robin.
    balance_policy: str = "prefix_aware"
    balance: Weights | None = POLICY_WEIGHTS["prefix_aware"]


@dataclass(frozen=True, slots=True)
class BackendInfo:
    id: int
    name: str
    base_url: str
    model: str
    weight: int
    max_concurrency: int
    # Circuit-breaker overrides; None: the SLUICE_BREAKER_* setting.
    breaker_failures: int | None = None
    breaker_error_rate: float | None = None
    breaker_cooldown_s: float | None = None
    gpu_usd_per_hour: Decimal | None = None  # self-hosted cost; None: the hosted price


@dataclass(frozen=True, slots=True)
class PriceInfo:
    input_usd_per_1m: Decimal
    output_usd_per_1m: Decimal


@dataclass(frozen=True, slots=True)
class Snapshot:
    keys_by_hash: Mapping[str, KeyInfo] = field(default_factory=dict)
    routes: Mapping[str, RouteInfo] = field(default_factory=dict)
    backends_by_model: Mapping[str, tuple[BackendInfo, ...]] = field(default_factory=dict)
    prices: Mapping[str, PriceInfo] = field(default_factory=dict)
    loaded: bool = False

    @property
    def backends(self) -> list[BackendInfo]:
        return [b for group in self.backends_by_model.values() for b in group]


_current = Snapshot()
# Secrets accepted on top of the tables' keys (snapshot_key_accept), by hash.
_extra_keys: dict[str, KeyInfo] = {}


def snapshot_current() -> Snapshot:
    return _current


def snapshot_build() -> Snapshot:
    """Read every configuration table once (five queries)."""
    from proxy.models import ApiKey, Backend, Price, Route

    keys = {k.key_hash: _key_info(k) for k in ApiKey.objects.filter(is_active=True)
            .prefetch_related("routes")}
    defaults = timeouts_default()
    routes = {r.name: _route_info(r, defaults) for r in Route.objects.filter(enabled=True)}
    by_model: dict[str, list[BackendInfo]] = {}
    for b in Backend.objects.filter(enabled=True).order_by("name"):
        by_model.setdefault(b.model, []).append(
            BackendInfo(
                id=b.id,
                name=b.name,
                base_url=b.base_url.rstrip("/"),
                model=b.model,
                weight=b.weight,
                max_concurrency=b.max_concurrency,
                breaker_failures=b.breaker_failures,
                breaker_error_rate=b.breaker_error_rate,
                breaker_cooldown_s=b.breaker_cooldown_s,
                gpu_usd_per_hour=b.gpu_usd_per_hour,
            )
        )
    prices = {
        p.model: PriceInfo(p.input_usd_per_1m, p.output_usd_per_1m) for p in Price.objects.all()
    }
    return Snapshot(
        keys_by_hash=MappingProxyType(keys),
        routes=MappingProxyType(routes),
        backends_by_model=MappingProxyType({m: tuple(bs) for m, bs in by_model.items()}),
        prices=MappingProxyType(prices),
        loaded=True,
    )


def _key_info(key) -> KeyInfo:
    from django.conf import settings

    allowed = frozenset(r.name for r in key.routes.all())
    return KeyInfo(
        id=key.id,
        name=key.name,
        routes=allowed or None,
        rpm_limit=key.rpm_limit if key.rpm_limit is not None else settings.SLUICE_KEY_RPM_LIMIT,
        tpm_limit=key.tpm_limit if key.tpm_limit is not None else settings.SLUICE_KEY_TPM_LIMIT,
    )


def _route_info(route, defaults: Timeouts) -> RouteInfo:
    timeouts = Timeouts(
        connect=route.connect_timeout_s or defaults.connect,
        ttfb=route.ttfb_timeout_s or defaults.ttfb,
        idle=route.idle_timeout_s or defaults.idle,
        total=route.total_timeout_s or defaults.total,
    )
    return RouteInfo(
        name=route.name,
        model=route.model,
        baseline_model=route.baseline_model or route.model,
        fallbacks=tuple(route.fallback_names()),
        max_attempts=route.max_attempts or 0,
        timeouts=None if timeouts == defaults else timeouts,
        rpm_limit=route.rpm_limit or 0,
        tpm_limit=route.tpm_limit or 0,
        cache_exact=route.cache_exact,
        cache_semantic=route.cache_semantic,
        cache_ttl_s=route.cache_ttl_s,
        cache_nonzero_temperature=route.cache_nonzero_temperature,
        semantic_threshold=route.semantic_threshold,
        semantic_max_entries=route.semantic_max_entries,
        small_model=route.small_model.strip(),
        downroute_threshold=route.downroute_threshold,
        prompt_token_budget=route.prompt_token_budget or 0,
        balance_policy=route.balance_policy,
        balance=_balance_weights(route),
    )


def _balance_weights(route) -> Weights | None:
    """A route's weights; a value the admin's check let through but that no longer parses
    (edited in the database by hand) falls back to the policy's defaults, loudly."""
    try:
        return weights_for(route.balance_policy, route.balance_weights.strip())
    except WeightsError as exc:
        logger.warning("route %s: balance weights ignored: %s", route.name, exc)
        return weights_for(route.balance_policy)


def snapshot_reload() -> Snapshot:
    """Rebuild and swap; on a database error keep serving with the last good snapshot."""
    global _current
    from django.db import DatabaseError, close_old_connections

    try:
        _current = _with_extra_keys(snapshot_build())
    except DatabaseError as exc:
        logger.warning("config reload failed, keeping the last snapshot: %s", exc)
        close_old_connections()
    return _current


def snapshot_key_accept(token_hash: str, key: KeyInfo) -> None:
    """Let this process accept one more secret (by its hash) as `key`, reloads included,
    until `snapshot_key_forget`.

    For work done on a key's behalf by a process that never saw its secret: the batch worker
    sends each line through the request path under a random token of its own."""
    global _current
    _extra_keys[token_hash] = key
    _current = _with_extra_keys(_current)


def snapshot_key_forget(token_hash: str) -> None:
    global _current
    if _extra_keys.pop(token_hash, None) is not None:
        keys = dict(_current.keys_by_hash)
        keys.pop(token_hash, None)
        _current = replace(_current, keys_by_hash=MappingProxyType(keys))


def _with_extra_keys(snapshot: Snapshot) -> Snapshot:
    if not _extra_keys:
        return snapshot
    return replace(snapshot, keys_by_hash=MappingProxyType({**snapshot.keys_by_hash,
                                                            **_extra_keys}))
