"""Per-deployment health: a circuit breaker, latency EWMA and a recent error rate.

One ``Health`` per deployment per worker, shared by every group that routes
to the same upstream (same name, provider, base URL, model and key; the
thresholds of the group bound last apply), and kept across config reloads.
Everything here is pure bookkeeping: the caller passes the time (the event
loop's clock), so the state machine is tested with a fake clock and costs
O(1) per attempt, no locks (one event loop per worker).

States::

    closed ──(N consecutive failures, or error rate ≥ R over the window,
              or hung: see ``stalled``)──▶ open
    open ──(cool-down passed; checked when a request looks)──▶ half_open
    half_open ──(`breaker_probes` trial requests all succeed)──▶ closed
    half_open ──(any trial fails)──▶ open (a new cool-down)

A failure is what the router would fail over on: a connection error, a
time-out, a 5xx, a 429/529, a 401/403 for the deployment's key. A client's
4xx says nothing about the deployment and counts as a success. ``cool_until`` is separate from the breaker: a
provider's Retry-After keeps new requests away that long without opening it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from gateway.config import RoutePolicy
from gateway.providers.base import Deployment

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
log = logging.getLogger("gateway.breaker")

_BUCKETS = 10  # the error-rate window is kept as this many time buckets
_RING = 128  # recent latencies kept per deployment (P50/P95 in /v1/providers)
_ALPHA = 0.2  # EWMA weight of the newest latency


def health_key(d: Deployment) -> tuple:
    return (d.name, d.provider, d.base_url, d.model, d.api_key)


class Attempt:
    """One attempt in flight on a deployment (its start, whether it is a half-open probe)."""

    __slots__ = ("t0", "probe", "done")

    def __init__(self, t0: float, probe: int) -> None:
        self.t0 = t0
        self.probe = probe  # the half-open period it probes (0: not a probe)
        self.done = False


class Health:
    __slots__ = (
        "deployment", "policy", "state", "consecutive", "opened_at", "opened_wall", "open_until", "open_reason",
        "probes_out", "probe_successes", "gen", "cool_until", "inflight", "outstanding", "last_answer", "suspect_since", "tasks", "abandoned",
        "ewma", "last_sample", "ring", "ring_n", "ok_total", "fail_total", "transitions",
        "_width", "_bucket_start", "_cur", "_ok", "_fail", "_w_ok", "_w_fail",
    )

    def __init__(self, deployment: Deployment, policy: RoutePolicy) -> None:
        self.deployment = deployment
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0  # loop time
        self.opened_wall = 0.0  # unix time, for people (only set on a transition)
        self.open_until = 0.0
        self.open_reason = ""
        self.probes_out = 0
        self.probe_successes = 0
        self.gen = 0  # half-open period number: a probe is only counted in its own period
        self.cool_until = 0.0  # Retry-After from the provider (loop time)
        self.inflight = 0
        self.outstanding: deque[Attempt] = deque()  # in start order, for stall detection only
        self.last_answer = 0.0
        self.suspect_since: float | None = None
        self.tasks: set = set()  # tasks waiting on this deployment (abandoned when it is found hung)
        self.abandoned: set = set()
        self.ewma = 0.0  # seconds, successful attempts
        self.last_sample = 0.0
        self.ring = [0.0] * _RING
        self.ring_n = 0
        self.ok_total = 0
        self.fail_total = 0
        self.transitions: list[tuple[float, str, str]] = []  # (unix time, state, reason), the last 50
        self._ok = [0] * _BUCKETS
        self._fail = [0] * _BUCKETS
        self._w_ok = 0
        self._w_fail = 0
        self._cur = 0
        self._bucket_start = 0.0
        self.set_policy(policy)

    def set_policy(self, policy: RoutePolicy) -> None:
        """A reload may change thresholds; the state and counters stay."""
        self.policy = policy
        self._width = policy.breaker_window / _BUCKETS

    # --- the window --------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        steps = int((now - self._bucket_start) / self._width)
        if steps <= 0:
            return
        if steps >= _BUCKETS:
            self._ok = [0] * _BUCKETS
            self._fail = [0] * _BUCKETS
            self._w_ok = self._w_fail = 0
            self._cur = 0
            self._bucket_start = now
            return
        ok, fail, cur = self._ok, self._fail, self._cur
        for _ in range(steps):
            cur = (cur + 1) % _BUCKETS
            self._w_ok -= ok[cur]
            self._w_fail -= fail[cur]
            ok[cur] = fail[cur] = 0
        self._cur = cur
        self._bucket_start += steps * self._width

    def error_rate(self, now: float) -> float:
        self._advance(now)
        total = self._w_ok + self._w_fail
        return self._w_fail / total if total else 0.0

    def window_counts(self, now: float) -> tuple[int, int]:
        self._advance(now)
        return self._w_ok, self._w_fail

    # --- routing questions ---------------------------------------------------------------

    def available(self, now: float) -> bool:
        """May a new request go here now? Moves open → half-open when the cool-down is over."""
        state = self.state
        if state == CLOSED:
            return now >= self.cool_until
        if state == OPEN:
            if now < self.open_until:
                return False
            self._to(HALF_OPEN, now, "cool-down over")
            self.gen += 1
            self.probes_out = 0
            self.probe_successes = 0
        return self.probes_out < self.policy.breaker_probes - self.probe_successes and now >= self.cool_until

    def stalled(self, now: float) -> bool:
        """Hung? The oldest attempt is overdue (usual latency + ``breaker_stall``) and nothing answered for that long.

        The second condition keeps a slow tail from counting: a working
        deployment keeps answering other requests meanwhile. Without a latency
        sample yet there is no "usual", so no verdict (the attempt time-out
        still applies). The verdict must hold for a little while (a tenth of
        ``breaker_stall``): right after this worker's own loop was held up,
        answers that did arrive may not have been processed yet.
        """
        q = self.outstanding
        while q and q[0].done:
            q.popleft()
        if not q or not self.ring_n or self.state == OPEN:
            self.suspect_since = None
            return False
        stall = self.policy.breaker_stall
        if now - q[0].t0 > self.ewma + stall and now - self.last_answer > stall:
            if self.suspect_since is None:
                self.suspect_since = now
            return now - self.suspect_since >= stall * 0.1
        self.suspect_since = None
        return False

    def trip_stalled(self, now: float) -> None:
        """Open as hung (the caller then usually ``abandon_waiting()``)."""
        age = now - self.outstanding[0].t0 if self.outstanding else 0.0
        self._open(now, f"hung: no answer for {now - self.last_answer:.3g}s, oldest attempt {age:.3g}s old")

    def abandon_waiting(self) -> int:
        """Cancel the attempts still waiting on this (hung) deployment, so they fail over now
        instead of waiting out their time-out; the router does so when there is somewhere to go."""
        n = len(self.tasks)
        for task in self.tasks:
            self.abandoned.add(task)
            task.cancel()
        self.tasks.clear()
        return n

    def ready_at(self, now: float) -> float:
        """When this deployment may take a request again (now if it may)."""
        if self.state == OPEN:
            return max(self.open_until, self.cool_until)
        return max(now, self.cool_until)

    # --- attempt bookkeeping ---------------------------------------------------------

    def begin(self, now: float) -> Attempt:
        """An attempt goes out."""
        self.inflight += 1
        probe = 0
        if self.state == HALF_OPEN:
            self.probes_out += 1
            probe = self.gen
        a = Attempt(now, probe)
        if self.policy.breaker_stall is not None:
            self.outstanding.append(a)
        return a

    def _end(self, a: Attempt) -> None:
        self.inflight -= 1
        a.done = True

    def success(self, now: float, a: Attempt, latency: float) -> None:
        """An answer that shows the deployment works (``latency`` < 0: do not sample it)."""
        self.inflight -= 1  # _end, inline: this runs on every answer
        a.done = True
        self.last_answer = now
        probe = a.probe
        self.consecutive = 0
        self.ok_total += 1
        self._advance(now)
        self._ok[self._cur] += 1
        self._w_ok += 1
        if latency >= 0:
            self.ewma = latency if self.ewma == 0.0 else self.ewma + _ALPHA * (latency - self.ewma)
            self.last_sample = now
            self.ring[self.ring_n % _RING] = latency
            self.ring_n += 1
        if probe and probe == self.gen and self.state == HALF_OPEN:
            self.probes_out -= 1
            self.probe_successes += 1
            if self.probe_successes >= self.policy.breaker_probes:
                self._to(CLOSED, now, "probes succeeded")

    def failure(self, now: float, a: Attempt, reason: str, answered: bool = True) -> bool:
        """Count a failed attempt; True when it opened the breaker just now.

        ``answered`` is False for time-outs: the deployment did not answer.
        """
        self._end(a)
        if answered:
            self.last_answer = now
        probe = a.probe
        self.consecutive += 1
        self.fail_total += 1
        self._advance(now)
        self._fail[self._cur] += 1
        self._w_fail += 1
        if self.state == HALF_OPEN:
            if probe and probe == self.gen:
                self.probes_out -= 1
                self._open(now, f"probe failed: {reason}")
                return True
            return False
        if self.state == CLOSED:
            p = self.policy
            if self.consecutive >= p.breaker_failures:
                self._open(now, f"{self.consecutive} consecutive failures ({reason})")
                return True
            total = self._w_ok + self._w_fail
            if total >= p.breaker_min_requests and self._w_fail >= p.breaker_error_rate * total:
                self._open(now, f"error rate {self._w_fail / total:.0%} over {total} attempts ({reason})")
                return True
        return False

    def release(self, a: Attempt) -> None:
        """An attempt ended without a verdict (the client left, a hedge lost, the request was not sendable)."""
        self._end(a)
        if a.probe and a.probe == self.gen and self.state == HALF_OPEN:
            self.probes_out -= 1

    def retry_after(self, now: float, seconds: float) -> None:
        """The provider asked for a pause: keep new requests away that long (capped at a minute)."""
        until = now + min(seconds, 60.0)
        if until > self.cool_until:
            self.cool_until = until

    # --- transitions -------------------------------------------------------------------

    def _open(self, now: float, reason: str) -> None:
        self.suspect_since = None
        self.open_until = now + self.policy.breaker_cooldown
        self.opened_at = now
        self.probes_out = 0
        self.probe_successes = 0
        self._to(OPEN, now, reason)

    def _to(self, state: str, now: float, reason: str) -> None:
        self.state = state
        self.open_reason = reason if state != CLOSED else ""
        if state == CLOSED:
            self.consecutive = 0
            self._ok = [0] * _BUCKETS
            self._fail = [0] * _BUCKETS
            self._w_ok = self._w_fail = 0
            self._bucket_start = now
        wall = time.time()  # only on a transition
        if state == OPEN:
            self.opened_wall = wall
        self.transitions.append((wall, state, reason))
        if len(self.transitions) > 50:
            del self.transitions[0]
        if state == OPEN:
            log.warning("breaker open: %s: %s", self.deployment.name, reason)
        else:
            log.info("breaker %s: %s: %s", state, self.deployment.name, reason)

    # --- reporting -----------------------------------------------------------------------

    def percentile(self, q: float) -> float | None:
        n = min(self.ring_n, _RING)
        if not n:
            return None
        values = sorted(self.ring[:n])
        return values[min(n - 1, int(q * n))]

    def snapshot(self, now: float) -> dict[str, Any]:
        self.available(now)  # let a due transition (stall, half-open) show
        ok, fail = self.window_counts(now)
        d = self.deployment
        p50, p95 = self.percentile(0.5), self.percentile(0.95)
        return {
            "name": d.name,
            "provider": d.provider,
            "model": d.model,
            "state": self.state,
            "reason": self.open_reason or None,
            "open_since": self.opened_wall if self.state != CLOSED else None,
            "retry_in_s": round(max(0.0, self.open_until - now), 3) if self.state == OPEN else None,
            "cooling_for_s": round(self.cool_until - now, 3) if self.cool_until > now else None,
            "latency_ewma_ms": round(self.ewma * 1000, 2) if self.ewma else None,
            "latency_p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
            "latency_p95_ms": round(p95 * 1000, 2) if p95 is not None else None,
            "error_rate": round(fail / (ok + fail), 4) if ok + fail else 0.0,
            "window": {"seconds": self.policy.breaker_window, "ok": ok, "failed": fail},
            "consecutive_failures": self.consecutive,
            "in_flight": self.inflight,
            "total": {"ok": self.ok_total, "failed": self.fail_total},
            "transitions": [{"at": t, "state": s, "reason": r} for t, s, r in self.transitions[-10:]],
        }
