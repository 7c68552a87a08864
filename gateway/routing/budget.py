"""Small pure helpers for the router: ratio budgets, a latency window, backoff.

No I/O and no clock reads, so each is unit-tested directly.
"""

from __future__ import annotations

import random


class RatioBudget:
    """Extra work (re-tries, hedges) bounded to a fraction of requests.

    Every request earns ``ratio`` tokens, up to ``burst``; each extra attempt
    spends one. Over any stretch of time the extra attempts never exceed
    ``ratio`` × requests (plus nothing: the bucket starts empty), and a burst
    after a quiet spell is capped at ``burst``.
    """

    __slots__ = ("ratio", "burst", "tokens", "spent", "denied")

    def __init__(self, ratio: float, burst: float = 10.0) -> None:
        self.ratio = ratio
        self.burst = max(1.0, burst)
        self.tokens = 0.0
        self.spent = 0
        self.denied = 0

    def earn(self) -> None:
        t = self.tokens + self.ratio
        self.tokens = t if t < self.burst else self.burst

    def spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.spent += 1
            return True
        self.denied += 1
        return False


class LatencyWindow:
    """The last ``size`` latencies; the P95 is recomputed every ``every`` samples (amortised O(1))."""

    __slots__ = ("values", "n", "size", "every", "_p95", "min_samples")

    def __init__(self, size: int = 256, every: int = 32, min_samples: int = 20) -> None:
        self.values = [0.0] * size
        self.n = 0
        self.size = size
        self.every = every
        self.min_samples = min_samples
        self._p95: float | None = None

    def add(self, seconds: float) -> None:
        n = self.n
        self.values[n % self.size] = seconds
        self.n = n = n + 1
        if n % self.every == 0 or n == self.min_samples:
            self._p95 = self.quantile(0.95)

    def quantile(self, q: float) -> float | None:
        k = min(self.n, self.size)
        if k < self.min_samples:
            return None
        ordered = sorted(self.values[:k])
        return ordered[min(k - 1, int(q * k))]

    @property
    def p95(self) -> float | None:
        return self._p95


def backoff(base: float, cap: float, retry: int, rand=random.random) -> float:
    """Full-jitter exponential backoff before the ``retry``-th re-try (1, 2, ...) of a deployment."""
    ceiling = base * (2 ** (retry - 1))
    return rand() * (ceiling if ceiling < cap else cap)
