"""A model group at run time: its deployments' health, the choice strategy, the budgets.

``Plan.choose`` picks the next deployment (weighted, latency or priority),
skipping open breakers; ``classify`` says what a failed attempt means.
Both are pure bookkeeping on the loop's clock: no I/O, no locks.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

from gateway.config import ModelGroup
from gateway.errors import GatewayError
from gateway.routing.breaker import CLOSED, OPEN, Health
from gateway.routing.budget import LatencyWindow, RatioBudget
from gateway.transport import Transport

_RETRY_BURST = 10.0  # re-tries allowed at once after a quiet spell
_HEDGE_BURST = 10.0


class Verdict(NamedTuple):
    """What a failed attempt means for the request and for the deployment."""

    fail_over: bool  # may another attempt (another deployment, or a re-try) serve the request?
    counts: bool  # does it count against the deployment's breaker?
    answered: bool  # did the deployment answer at all (False: it timed out)?


LOCAL = Verdict(False, False, True)  # the adapter refused the request before sending it (a 400)
CLIENT = Verdict(False, False, True)  # the provider rejected the client's request: returned as is
FAILED = Verdict(True, True, True)
TIMED_OUT = Verdict(True, True, False)


def classify(err: GatewayError) -> Verdict:
    status = err.upstream_status
    if status is None:
        if err.code in ("upstream_timeout", "upstream_stalled"):
            return TIMED_OUT
        if err.status < 500:
            return LOCAL
        return FAILED  # unreachable, malformed answer, broken stream
    if status >= 500 or status in (408, 429):
        return FAILED
    if status in (401, 403):
        return FAILED  # the deployment's own key was rejected: another deployment can serve the client
    return CLIENT


class Plan:
    """A group at run time: its deployments' health, the strategy and budgets."""

    __slots__ = (
        "name", "deployments", "health", "transports", "caps", "weights", "policy", "strategy",
        "n", "retry_budget", "hedge_budget", "latency", "hedging", "stall",
    )

    def __init__(self, group: ModelGroup, health: list[Health], transports: list[Transport]) -> None:
        p = group.policy
        self.name = group.name
        self.deployments = group.deployments
        self.health = health
        self.transports = transports
        # Per-attempt time cap of each deployment (None: the rest of the deadline).
        caps = []
        for d in group.deployments:
            c = [x for x in (p.attempt_timeout, d.timeout) if x]
            caps.append(min(c) if c else None)
        self.caps = caps
        self.weights = [d.weight for d in group.deployments]
        self.policy = p
        self.strategy = group.strategy
        self.n = len(group.deployments)
        self.retry_budget = RatioBudget(p.retry_budget, _RETRY_BURST)
        self.hedging = p.hedge and self.n > 1
        self.hedge_budget = RatioBudget(p.hedge_max_fraction, _HEDGE_BURST)
        self.latency = LatencyWindow()
        self.stall = p.breaker_stall is not None and self.n > 1

    # --- choice --------------------------------------------------------------------------

    def choose(self, now: float, tried: tuple | list | set = ()) -> int | None:
        """An available deployment not in ``tried``, by the group's strategy; None if there is none."""
        health = self.health
        if self.n == 1:
            return 0 if not tried and health[0].available(now) else None
        if self.stall:
            self._check_stalls(now)
        cands = [i for i in range(self.n) if i not in tried and health[i].available(now)]
        if not cands:
            return None
        if len(cands) == 1 or self.strategy == "priority":
            return cands[0]
        weights = self.weights
        positive = [i for i in cands if weights[i] > 0]
        if not positive:
            return cands[0]  # only failover-only deployments are left: in order
        if len(positive) == 1:
            return positive[0]
        if self.strategy == "latency":
            a, b = random.sample(positive, 2)
            return a if self._score(a, now) <= self._score(b, now) else b
        total = 0.0
        for i in positive:
            total += weights[i]
        r = random.random() * total
        for i in positive:
            r -= weights[i]
            if r < 0:
                return i
        return positive[-1]

    def _check_stalls(self, now: float) -> None:
        """Open hung deployments, but never the last one standing: unless
        another deployment is closed and answering, the attempt time-out
        decides (a false alarm must not turn slowness into errors)."""
        for h in self.health:
            if h.stalled(now) and self.has_alternative(h, now):
                h.trip_stalled(now)
                h.abandon_waiting()

    def has_alternative(self, h: Health, now: float) -> bool:
        """Is another deployment closed, free and answering, to take what ``h`` cannot?"""
        return any(o is not h and o.state == CLOSED and o.available(now) and not o.stalled(now) for o in self.health)

    def _score(self, i: int, now: float) -> float:
        """Expected wait: recent latency × (requests queued + 1); an idle sample decays so it gets re-measured."""
        h = self.health[i]
        ewma = h.ewma
        if ewma and now - h.last_sample > 5.0:
            ewma *= 0.5 ** ((now - h.last_sample) / 5.0)
        return ewma * (h.inflight + 1)

    def unavailable(self, now: float) -> GatewayError:
        ready = min(h.ready_at(now) for h in self.health)
        seconds = max(1, math.ceil(ready - now))
        return GatewayError(
            503,
            f"Every deployment of model '{self.name}' is unavailable right now (circuit open); retry in {seconds}s.",
            "api_error",
            None,
            "no_healthy_deployment",
            headers={"Retry-After": str(seconds)},
        )

    def hedge_delay(self) -> float | None:
        fixed = self.policy.hedge_delay
        return fixed if fixed is not None else self.latency.p95


def soonest_cooling(plan: Plan, now: float) -> tuple[int | None, float]:
    """A closed deployment that only waits out a provider's Retry-After, and until when."""
    best, at = None, math.inf
    for k, h in enumerate(plan.health):
        if h.state != OPEN and h.cool_until > now and h.cool_until < at:
            best, at = k, h.cool_until
    return best, at
