"""Counts over a sliding window of whole seconds, in O(1) per event.

The circuit breaker (outcomes, failures) and the retry budget (requests, retries) both ask
"how many of these, and how many of those, in the last N seconds?" on every proxied request.
A ring of one-second slots answers that with two adds per event and no allocation.
"""
from __future__ import annotations

import time
from collections.abc import Callable


class WindowCounter:
    __slots__ = ("size", "clock", "_seconds", "_a", "_b")

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = max(1, round(window_s))
        self.clock = clock
        self._seconds = [-1] * self.size
        self._a = [0] * self.size
        self._b = [0] * self.size

    def add(self, a: int = 0, b: int = 0) -> None:
        now = int(self.clock())
        i = now % self.size
        if self._seconds[i] != now:
            self._seconds[i], self._a[i], self._b[i] = now, 0, 0
        self._a[i] += a
        self._b[i] += b

    def sums(self) -> tuple[int, int]:
        """Both counts over the last `size` seconds, this one included."""
        oldest = int(self.clock()) - self.size + 1
        a = b = 0
        for i, second in enumerate(self._seconds):
            if second >= oldest:
                a += self._a[i]
                b += self._b[i]
        return a, b
