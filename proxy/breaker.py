"""A circuit breaker for one backend: closed → open → half-open → closed.

Passive: every outcome of live traffic is counted. The breaker opens after `failures`
consecutive failures, or when the error rate over the last `window_s` seconds reaches
`error_rate` with at least `min_requests` outcomes in the window. Active: a failed `/health`
probe or a refused connection opens it at once (`trip`); a passing probe ends an open
breaker's cooldown early (`health_ok`), so the next request probes it.

Open, it takes no traffic. After `cooldown_s` it lets exactly one request through (half-open);
that probe's success closes the breaker, its failure opens it for another cooldown.

The window is a ring of one-second slots (`WindowCounter`), so recording an outcome is O(1):
this runs for every proxied request. Time comes from `clock`, which tests replace.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.window import WindowCounter

logger = logging.getLogger("sluice.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5
    error_rate: float = 0.5
    window_s: float = 10.0
    min_requests: int = 20
    cooldown_s: float = 10.0


class Breaker:
    __slots__ = ("name", "policy", "clock", "state", "consecutive_failures", "opened_at",
                 "probing", "_window", "_reason")

    def __init__(self, name: str, policy: BreakerPolicy,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.policy = policy
        self.clock = clock
        self.state = CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.probing = False  # half-open: the one probe request is in flight
        self._window = WindowCounter(policy.window_s, clock)  # (outcomes, failures)
        self._reason = ""

    # --- may this backend take a request? ----------------------------------------------
    def available(self) -> bool:
        """True when a request may go now: closed, or open past its cooldown with no probe
        in flight. Has no side effect; `admit` claims the probe."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return self.clock() - self.opened_at >= self.policy.cooldown_s
        return not self.probing

    def admit(self) -> None:
        """The caller sends a request now: past the cooldown, that request is the probe."""
        if self.state == CLOSED:
            return
        if self.state == OPEN:
            self._move(HALF_OPEN, "cooldown over, letting one probe request through")
        self.probing = True

    def retry_after_s(self) -> float:
        """Seconds until this backend may take a request again (0 when it may now)."""
        if self.state == OPEN:
            return max(0.0, self.policy.cooldown_s - (self.clock() - self.opened_at))
        return 0.0

    # --- outcomes ---------------------------------------------------------------------------
    def success(self) -> None:
        self._window.add(1, 0)
        self.consecutive_failures = 0
        if self.state == HALF_OPEN:
            self.probing = False
            self._move(CLOSED, "probe request succeeded")

    def failure(self, why: str = "request failed") -> None:
        self._window.add(1, 1)
        self.consecutive_failures += 1
        if self.state == HALF_OPEN:
            self.probing = False
            self._open(f"probe request failed: {why}")
        elif self.state == CLOSED:
            if self.consecutive_failures >= self.policy.failures:
                self._open(f"{self.consecutive_failures} consecutive failures ({why})")
            else:
                outcomes, failures = self._window.sums()
                if (outcomes >= self.policy.min_requests
                        and failures >= self.policy.error_rate * outcomes):
                    self._open(f"error rate {failures}/{outcomes} over "
                               f"{self.policy.window_s:.0f} s ({why})")

    def neutral(self) -> None:
        """A call that says nothing of the backend's health (the client hung up): a probe
        that ends so frees the probe slot without deciding."""
        if self.state == HALF_OPEN:
            self.probing = False

    def health_ok(self) -> None:
        """The backend answers its health probe again: an open breaker need not wait out its
        cooldown, the next request may probe it (a restarted server rejoins in one probe
        interval, not one cooldown)."""
        if self.state == OPEN and self.retry_after_s() > 0:
            self.opened_at = self.clock() - self.policy.cooldown_s
            logger.info("backend %s: health probe answered, breaker ready for a probe request",
                        self.name)

    def trip(self, why: str) -> None:
        """Open now (a failed health probe, a refused connection)."""
        if self.state != OPEN:
            self.probing = False
            self._open(why)

    # --- what the ops API shows ---------------------------------------------------------
    def error_rate(self) -> float | None:
        outcomes, failures = self._window.sums()
        return failures / outcomes if outcomes else None

    def requests_in_window(self) -> int:
        return self._window.sums()[0]

    @property
    def reason(self) -> str:
        return self._reason

    # --- internals ------------------------------------------------------------------------
    def _open(self, why: str) -> None:
        self.opened_at = self.clock()
        self._move(OPEN, why)

    def _move(self, state: str, why: str) -> None:
        if state != self.state:
            log = logger.info if state == CLOSED or state == HALF_OPEN else logger.warning
            log("backend %s: breaker %s -> %s (%s)", self.name, self.state, state, why)
        self.state = state
        self._reason = why
