"""The circuit breaker's state machine, on a fake clock (times are plain numbers)."""

from __future__ import annotations

from dataclasses import replace

from gateway.routing.breaker import CLOSED, HALF_OPEN, OPEN, Health
from gateway.config import RoutePolicy
from gateway.providers.base import Deployment

D = Deployment(name="d", provider="openai", model="m", base_url="http://x", api_key="k")
POLICY = RoutePolicy(
    breaker_failures=3, breaker_error_rate=0.5, breaker_window=10.0, breaker_min_requests=10,
    breaker_cooldown=5.0, breaker_probes=2,
)


def health(**changes) -> Health:
    return Health(D, replace(POLICY, **changes))


def ok(h: Health, now: float, latency: float = 0.1) -> None:
    h.success(now, h.begin(now - latency), latency)


def fail(h: Health, now: float, reason: str = "upstream_error") -> bool:
    return h.failure(now, h.begin(now), reason)


class FakeTask:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_opens_after_consecutive_failures_and_a_success_resets_the_count():
    h = health()
    assert not fail(h, 1.0) and not fail(h, 1.1)
    ok(h, 1.2)
    assert h.consecutive == 0
    assert not fail(h, 1.3) and not fail(h, 1.4)
    assert fail(h, 1.5)  # the third in a row
    assert h.state == OPEN and "3 consecutive failures" in h.open_reason
    assert not h.available(1.6)
    assert h.ready_at(1.6) == 6.5


def test_opens_on_the_error_rate_of_the_window_only_with_enough_requests():
    h = health(breaker_failures=1000)
    for i in range(4):
        fail(h, 1.0 + i * 0.01)
        ok(h, 1.0 + i * 0.01)
    assert h.state == CLOSED  # 50 % but only 8 attempts
    fail(h, 1.1)
    ok(h, 1.1)
    assert h.state == CLOSED and h.error_rate(1.1) == 0.5
    assert fail(h, 1.2)  # 6 of 11 failed
    assert h.state == OPEN and "error rate" in h.open_reason


def test_old_failures_leave_the_window():
    h = health(breaker_failures=1000)
    for i in range(9):
        fail(h, 1.0)
    assert h.window_counts(1.0) == (0, 9)
    assert h.window_counts(12.0) == (0, 0)  # a whole window later
    for i in range(10):
        ok(h, 12.0)
    assert not fail(h, 12.0)
    assert h.state == CLOSED


def test_half_open_lets_a_limited_number_of_probes_and_closes_when_they_succeed():
    h = health()
    for t in (1.0, 1.1, 1.2):
        fail(h, t)
    assert not h.available(6.1)
    assert h.available(6.3) and h.state == HALF_OPEN
    p1, p2 = h.begin(6.3), h.begin(6.3)
    assert p1.probe and p2.probe
    assert not h.available(6.4)  # both probes out
    h.success(6.5, p1, 0.2)
    assert h.state == HALF_OPEN and not h.available(6.5)
    h.success(6.6, p2, 0.3)
    assert h.state == CLOSED and h.available(6.7)
    assert [s for _, s, _ in h.transitions] == [OPEN, HALF_OPEN, CLOSED]


def test_a_failed_probe_reopens_for_a_new_cool_down():
    h = health()
    for t in (1.0, 1.1, 1.2):
        fail(h, t)
    assert h.available(7.0)
    probe = h.begin(7.0)
    assert h.failure(7.1, probe, "upstream_unreachable")
    assert h.state == OPEN and h.open_reason.startswith("probe failed")
    assert not h.available(12.0) and h.available(12.2)


def test_a_probe_of_an_earlier_half_open_period_does_not_count():
    h = health(breaker_probes=1)
    for t in (1.0, 1.1, 1.2):
        fail(h, t)
    assert h.available(6.3)
    stale = h.begin(6.3)  # the probe of the first half-open period ...
    h.trip_stalled(6.4)  # ... which ends another way
    assert h.available(11.5) and h.state == HALF_OPEN
    h.success(11.6, stale, 0.1)  # its answer now says nothing about the second period
    assert h.state == HALF_OPEN
    h.success(11.7, h.begin(11.6), 0.1)
    assert h.state == CLOSED


def test_client_cancellation_releases_a_probe_slot():
    h = health(breaker_probes=1)
    for t in (1.0, 1.1, 1.2):
        fail(h, t)
    assert h.available(6.3)
    probe = h.begin(6.3)
    assert not h.available(6.3)
    h.release(probe)
    assert h.available(6.3) and h.inflight == 0


def test_retry_after_keeps_requests_away_without_opening():
    h = health()
    h.retry_after(1.0, 2.0)
    assert h.state == CLOSED and not h.available(2.5) and h.available(3.0)
    assert h.ready_at(2.0) == 3.0
    h.retry_after(1.0, 3600)
    assert h.cool_until == 61.0  # capped at a minute


def test_latency_ewma_and_percentiles():
    h = health()
    for latency in (0.1, 0.1, 0.5):
        ok(h, 1.0, latency)
    assert 0.1 < h.ewma < 0.5
    assert h.percentile(0.5) == 0.1 and h.percentile(0.95) == 0.5
    snap = h.snapshot(1.0)
    assert snap["state"] == CLOSED and snap["latency_p95_ms"] == 500.0 and snap["error_rate"] == 0.0
    assert snap["total"] == {"ok": 3, "failed": 0}


def test_stall_needs_an_overdue_attempt_silence_and_confirmation():
    h = health(breaker_stall=0.5)
    ok(h, 1.0, 0.2)  # usual latency 0.2 s
    a = h.begin(1.0)
    assert not h.stalled(1.6)  # 0.6 s old: not overdue yet (0.2 + 0.5)
    assert not h.stalled(1.75)  # overdue and silent: suspected ...
    assert h.stalled(1.81)  # ... and confirmed a little later
    # Another answer in the meantime means it is alive (a slow tail, not a hang).
    h2 = health(breaker_stall=0.5)
    ok(h2, 1.0, 0.2)
    h2.begin(1.0)
    ok(h2, 1.6, 0.2)
    assert not h2.stalled(1.8) and not h2.stalled(1.9)
    # A done attempt is no longer outstanding.
    h.success(1.9, a, 0.9)
    assert not h.stalled(2.0)


def test_no_stall_verdict_without_a_latency_sample():
    h = health(breaker_stall=0.1)
    h.begin(0.0)
    assert not h.stalled(5.0) and not h.stalled(6.0)


def test_tripping_a_hung_deployment_cancels_the_attempts_waiting_on_it():
    h = health(breaker_stall=0.5)
    ok(h, 1.0, 0.2)
    tasks = [FakeTask(), FakeTask()]
    h.tasks.update(tasks)
    h.trip_stalled(3.0)
    assert h.state == OPEN and h.open_reason.startswith("hung")
    assert not any(t.cancelled for t in tasks)  # the router decides whether there is somewhere to go
    assert h.abandon_waiting() == 2
    assert all(t.cancelled for t in tasks) and h.abandoned == set(tasks) and not h.tasks


def test_time_outs_open_the_breaker():
    h = health()
    for t in (1.0, 1.1):
        h.failure(t, h.begin(t - 1), "upstream_timeout", answered=False)
    assert h.failure(1.2, h.begin(0.2), "upstream_timeout", answered=False)
    assert h.state == OPEN and "upstream_timeout" in h.open_reason


def test_policy_change_keeps_the_state():
    h = health()
    for t in (1.0, 1.1, 1.2):
        fail(h, t)
    h.set_policy(replace(POLICY, breaker_cooldown=1.0))
    assert h.state == OPEN
