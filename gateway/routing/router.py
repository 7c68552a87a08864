"""Model groups, deployment choice, failover, circuit breakers and hedging.

A client names a logical model; the router resolves it (``routing.resolve``: config groups,
aliases, then provider name prefixes) to a group of deployments and runs the
request against them:

- **Choice** per group ``strategy``: ``weighted`` random (default; a weight of
  0 makes a deployment failover-only), ``latency`` (power of two choices on
  the EWMA of recent latency × in-flight), ``priority`` (first healthy in
  order).
- **Failover**: on a connection error, time-out, 5xx, 408, 429/529, or a
  401/403 for the deployment's own key, the next healthy deployment is tried
  at once, up to ``retries`` more attempts, all
  inside the request deadline (``REQUEST_TIMEOUT_SECONDS`` or the
  ``x-gateway-timeout`` header). Re-trying a deployment already tried waits a
  full-jitter backoff and is limited by a retry budget (a fraction of the
  group's requests), so a failing provider never sees a retry storm. A
  provider's 4xx for the client's request is returned as is, never retried;
  Retry-After keeps new requests away from that deployment that long.
  A request a deployment's adapter cannot express (a 400 before sending:
  tools, images, parameters the provider lacks) is refused, never answered
  by another model, unless the group sets ``reroute_unsupported``.
- **Breakers** per deployment (``routing.breaker``); with every deployment of
  a group open the client gets a fast 503 with Retry-After. With
  ``breaker_stall`` set, a deployment that stopped answering is opened before
  the attempt time-outs expire (checked on each choice and by a timer), and
  the requests waiting on it are cancelled and failed over at once — unless
  it is the last one standing.
- **Hedging** (``hedge = true``): if the first attempt has not answered
  within ``hedge_delay`` (or the group's observed P95), one duplicate goes to
  another healthy deployment; the first good answer wins, the other is
  cancelled; hedges stay under ``hedge_max_fraction`` of the group's requests.

A stream counts as answered at its first batch: failover and hedging happen
only before that, so nothing has reached the client yet.

Hot path: a group without hedging runs its attempts in the request's own
task (no task is created, no lock taken); the bookkeeping is a few integer
updates per attempt on the loop's clock.

Reload (``reload(settings)``) builds the whole new routing state, then swaps
one reference; breaker and latency state carry over for deployments that
stay (same name, provider, base URL, model and key).
"""

from __future__ import annotations

import asyncio
import math
from typing import Awaitable, TYPE_CHECKING, Any, AsyncIterator

from gateway import upstream
from gateway.config import ModelGroup, Settings
from gateway.errors import GatewayError, upstream_error
from gateway.providers.base import Deployment
from gateway.request import ChatRequest
from gateway.routing.breaker import Health, health_key
from gateway.routing.budget import backoff
from gateway.routing.plan import Plan, classify, soonest_cooling
from gateway.routing.resolve import Snapshot
from gateway.transport import Transport, make_transport

if TYPE_CHECKING:
    from gateway.pipeline.outcome import Outcome


def _deadline_error() -> GatewayError:
    return upstream_error(504, "The request deadline passed before an answer came.", code="deadline_exceeded")


def _stalled(d: Deployment) -> GatewayError:
    return upstream_error(504, f"Deployment {d.name} stopped answering; the attempt was abandoned.", code="upstream_stalled")


class Router:
    def __init__(self, settings: Settings) -> None:
        self.transports: dict[tuple[str, str], Transport] = {}
        # Pool sizes and trusted CAs are fixed for the process's life (a reload does not rebuild live pools).
        self._pool = (settings.worker_connections, settings.keepalive_timeout, settings.upstream_ca_bundle)
        self._health: dict[tuple, Health] = {}
        self._previous: dict[tuple, Health] = {}  # during a reload: the health to carry over
        # Groups with hang detection, checked by a timer too, so a hang is found without new traffic.
        self._stall_plans: dict[int, Plan] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        # The configuration requests are admitted under; replaced whole by ``reload``.
        self.state = self._build(settings)

    # --- state and reload -----------------------------------------------------------------

    def _build(self, settings: Settings) -> Snapshot:
        for name, p in settings.providers.items():
            if p.api_key:
                self._transport(name, p.transport)
        groups = {}
        for name, g in settings.models.items():
            # A fresh ModelGroup: the one in ``settings`` may be shared with an older state.
            groups[name] = self._bind(ModelGroup(g.name, list(g.deployments), g.strategy, g.policy))
        return Snapshot(settings, groups, self._bind)

    def _bind(self, group: ModelGroup, register: bool = True) -> ModelGroup:
        health = []
        for d in group.deployments:
            key = health_key(d)
            h = self._health.get(key) or self._previous.get(key)
            if h is None:
                h = Health(d, group.policy)
            else:
                h.deployment = d
                h.set_policy(group.policy)
            if register:  # a one-off (implicit table full) is not remembered
                self._health[key] = h
            health.append(h)
        transports = [self._transport(d.provider, d.transport) for d in group.deployments]
        group.plan = plan = Plan(group, health, transports)
        if plan.stall and register:
            self._stall_plans[id(plan)] = plan
        return group

    def reload(self, settings: Settings) -> None:
        """Switch to new settings: everything is built first, then one reference is swapped."""
        old_health, old_stall = self._health, self._stall_plans
        self._health, self._previous, self._stall_plans = {}, old_health, {}
        try:
            state = self._build(settings)
        except BaseException:
            self._health, self._stall_plans = old_health, old_stall
            raise
        finally:
            self._previous = {}
        # Keep what implicit groups may come back to: deployments of still-configured providers.
        providers = {(p.name, p.base_url, p.api_key) for p in settings.providers.values() if p.api_key}
        for key, h in old_health.items():
            if key not in self._health and (key[1], key[2], key[4]) in providers:
                self._health[key] = h
        self.state = state

    def _transport(self, provider: str, kind: str) -> Transport:
        key = (provider, kind)
        t = self.transports.get(key)
        if t is None:
            t = make_transport(kind, *self._pool)
            self.transports[key] = t
        return t

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        plans = list(self._stall_plans.values())
        if not plans:
            self._watchdog = None
            return
        now = loop.time()
        for plan in plans:
            plan._check_stalls(now)
        interval = max(0.02, min(p.policy.breaker_stall for p in plans) / 4)
        self._watchdog = loop.call_later(interval, self._watch, loop)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        await asyncio.gather(*(t.close() for t in self.transports.values()), return_exceptions=True)

    # --- resolution (gateway.routing.resolve) --------------------------------------

    def resolve(self, model: str, st: Snapshot | None = None) -> ModelGroup:
        """The group serving ``model`` under snapshot ``st`` (default: the current one), or a 404."""
        return (st or self.state).resolve(model)

    def model_names(self) -> list[str]:
        return self.state.model_names()

    # --- introspection -----------------------------------------------------------------

    def _plans(self) -> list[Plan]:
        st = self.state
        seen: dict[int, Plan] = {}
        for g in (*st.groups.values(), *st.implicit.values()):
            if g.plan is not None:
                seen.setdefault(id(g.plan), g.plan)
        return list(seen.values())

    def snapshot(self) -> list[dict[str, Any]]:
        """Every deployment this worker routes to: breaker state, latency, error rate, groups."""
        now = asyncio.get_running_loop().time()
        groups: dict[int, list[str]] = {}
        rows: dict[int, Health] = {}
        for plan in self._plans():
            for h in plan.health:
                rows[id(h)] = h
                groups.setdefault(id(h), []).append(plan.name)
        out = []
        for key, h in rows.items():
            row = h.snapshot(now)
            row["groups"] = sorted(set(groups[key]))
            out.append(row)
        out.sort(key=lambda r: r["name"])
        return out

    def breaker_states(self) -> dict[str, str]:
        now = asyncio.get_running_loop().time()
        out = {}
        for plan in self._plans():
            for h in plan.health:
                h.available(now)
                out[h.deployment.name] = h.state
        return out

    # --- attempts ----------------------------------------------------------------

    # complete and stream return _run's coroutine rather than awaiting it: one coroutine frame less
    # for every resume of the request to pass through (each upstream read, each stream batch).

    def complete(self, req: ChatRequest, group: ModelGroup) -> Awaitable[dict]:
        return self._run(req, group.plan or self._bind(group).plan, False)

    def stream(self, req: ChatRequest, group: ModelGroup) -> Awaitable[tuple[list[dict], AsyncIterator[list[dict]], upstream.UpstreamStream]]:
        """Open a stream and wait for its first batch, so failures before any byte can fail over."""
        return self._run(req, group.plan or self._bind(group).plan, True)

    async def _attempt(self, req: ChatRequest, plan: Plan, i: int, timeout: float, stream: bool, judged: bool,
                       timed: bool = True):
        """One attempt, with its breaker bookkeeping. Raises GatewayError on failure."""
        h = plan.health[i]
        d = plan.deployments[i]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        att = h.begin(t0)
        task = asyncio.current_task()
        h.tasks.add(task)
        try:
            if stream:
                result = await upstream.open_first(req, d, plan.transports[i], timeout, timed)
            else:
                result = await upstream.complete(req, d, plan.transports[i], timeout, timed)
        except GatewayError as err:
            h.tasks.discard(task)
            now = loop.time()
            verdict = classify(err)
            counts, answered = verdict.counts, verdict.answered
            if not counts:
                if err.upstream_status is None:
                    h.release(att)  # never sent
                else:
                    h.success(now, att, -1.0)  # the deployment is fine; the request was not
            elif answered:
                h.failure(now, att, err.code or str(err.upstream_status))
                if err.retry_after:
                    h.retry_after(now, err.retry_after)
            elif judged:
                if h.failure(now, att, err.code or "timeout", answered=False) and plan.has_alternative(h, now):
                    h.abandon_waiting()  # opened on time-outs: the others waiting on it would time out too
            else:
                h.release(att)  # the client's own short deadline ran out: says nothing about the deployment
            raise
        except asyncio.CancelledError:
            h.tasks.discard(task)
            if task in h.abandoned:
                h.abandoned.discard(task)
                if task.uncancel() == 0:
                    # The breaker found the deployment hung and cancelled this wait: fail over.
                    h.failure(loop.time(), att, "stall", answered=False)
                    raise _stalled(d) from None
            h.release(att)
            raise
        h.tasks.discard(task)
        now = loop.time()
        h.success(now, att, now - t0)
        if plan.hedging:
            plan.latency.add(now - t0)
        return result

    async def _run(self, req: ChatRequest, plan: Plan, stream: bool):
        loop = asyncio.get_running_loop()
        now = loop.time()
        policy = plan.policy
        plan.retry_budget.earn()
        if plan.hedging:
            plan.hedge_budget.earn()
        if plan.stall and self._watchdog is None:
            self._watch(loop)
        i = plan.choose(now)
        if i is None:
            raise plan.unavailable(now)
        out = req.outcome
        names = plan.deployments
        attempts = 0
        repeats = 0
        tried: list[int] = []
        failures: list[str] = []
        last: GatewayError | None = None
        while True:
            remaining = req.deadline - now
            if remaining <= 0:
                raise self._give_up(out, attempts, last or _deadline_error())
            cap = plan.caps[i]
            timeout = remaining if cap is None or cap > remaining else cap
            # Does a time-out of this attempt say something about the deployment? Only when the attempt
            # had at least half its normal time: a client's own short deadline running out does not.
            default = req.default_timeout
            judged = timeout >= 0.5 * (cap if cap is not None and cap < default else default)
            if plan.hedging and plan.n - len(tried) > 1:
                result, winner, used, errors = await self._hedged(req, plan, i, timeout, stream, judged, tried)
                attempts += len(used)
                for k, e in errors:
                    if classify(e).fail_over:
                        failures.append(f"{names[k].name} ({e.code or e.upstream_status})")
                if winner is not None:
                    if winner != i and not errors:
                        failures.append(f"{names[i].name} (slow: hedged)")
                    return self._done(out, names[winner], attempts, failures, result)
                for k in used:
                    if k not in tried:
                        tried.append(k)
                err = errors[0][1]
                fatal = next((e for _, e in errors if not classify(e).fail_over), None)
                if fatal is not None:
                    raise self._give_up(out, attempts, fatal)
            else:
                attempts += 1
                try:
                    result = await self._attempt(req, plan, i, timeout, stream, judged)
                except GatewayError as exc:
                    err = exc
                else:
                    return self._done(out, names[i], attempts, failures, result)
                now = loop.time()
                if i not in tried:
                    tried.append(i)
                if not classify(err).fail_over:
                    if err.upstream_status is None and err.status < 500 and policy.reroute_unsupported:
                        # This deployment's adapter cannot express the request; the group allows another
                        # model to answer it, and the answer says so (x-gateway-failover, its model field).
                        attempts -= 1
                        nxt = plan.choose(now, tried)
                        if nxt is not None:
                            failures.append(f"{names[i].name} (unsupported: {err.param or err.code})")
                            out.rerouted = True
                            last = last or err
                            i = nxt
                            continue
                        raise self._give_up(out, attempts, last if last is not None and last.status >= 500 else err)
                    raise self._give_up(out, attempts, err)
                failures.append(f"{names[i].name} ({err.code or err.upstream_status})")
            now = loop.time()
            last = err
            if attempts > policy.retries:
                raise self._give_up(out, attempts, err)
            nxt = plan.choose(now, tried)
            if nxt is None:
                # Every available deployment was tried: re-try one after a backoff, within the retry budget.
                nxt = plan.choose(now)
                wait_until = now
                if nxt is None:
                    nxt, wait_until = soonest_cooling(plan, now)
                    if nxt is None:
                        raise self._give_up(out, attempts, err)
                if not plan.retry_budget.spend():
                    raise self._give_up(out, attempts, err)
                repeats += 1
                wait_until = max(wait_until, now + backoff(policy.backoff_base, policy.backoff_max, repeats))
                if wait_until >= req.deadline:
                    raise self._give_up(out, attempts, err)
                if wait_until > now:
                    await asyncio.sleep(wait_until - now)
                    now = loop.time()
            i = nxt

    async def _hedged(self, req: ChatRequest, plan: Plan, i: int, timeout: float, stream: bool, judged: bool, tried: list[int]):
        """The attempt on ``i``, plus one duplicate on another deployment if it is slow.

        Returns ``(result, winner index or None, indices tried, [(index, error)])``.
        """
        loop = asyncio.get_running_loop()
        started = req.outcome.wait_begin()
        first = loop.create_task(self._attempt(req, plan, i, timeout, stream, judged, False))
        tasks = {first: i}
        winner_task = None
        try:
            delay = plan.hedge_delay()
            if delay is not None and delay < timeout:
                done, _ = await asyncio.wait((first,), timeout=delay)
                if not done:
                    now = loop.time()
                    j = plan.choose(now, [*tried, i])
                    if j is not None and plan.hedge_budget.spend():
                        cap = plan.caps[j]
                        left = req.deadline - now
                        t2 = left if cap is None or cap > left else cap
                        tasks[loop.create_task(self._attempt(req, plan, j, t2, stream, judged, False))] = j
                        req.outcome.hedged = True
            pending = set(tasks)
            errors: list[tuple[int, GatewayError]] = []
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    exc = t.exception()
                    if exc is None:
                        winner_task = t
                        return t.result(), tasks[t], list(tasks.values()), errors
                    if not isinstance(exc, GatewayError):
                        raise exc
                    errors.append((tasks[t], exc))
                    if not classify(exc).fail_over:
                        return None, None, list(tasks.values()), errors
            errors.sort(key=lambda e: e[0] != i)  # the first attempt's error first
            return None, None, list(tasks.values()), errors
        finally:
            # The race's span is the upstream wait, counted once: its attempts overlap, and a
            # cancelled loser ends after the answer may already have left.
            req.outcome.wait_end(started)
            for t in tasks:
                if t is winner_task:
                    continue
                if not t.done():
                    t.cancel()
                    t.add_done_callback(_drain)  # losers clean up on their own; nobody waits for them
                elif stream and not t.cancelled() and t.exception() is None:
                    await upstream.close_stream(t.result())  # a stream that opened too, but lost

    @staticmethod
    def _done(out: Outcome, d: Deployment, attempts: int, failures: list[str] | None, result):
        out.deployment = d
        out.attempts = attempts
        if failures:
            out.failover = ", ".join(failures)
        return result

    @staticmethod
    def _give_up(out: Outcome, attempts: int, err: GatewayError) -> GatewayError:
        out.attempts = max(attempts, 1)
        if err.retry_after and not err.headers:
            err.headers = {"Retry-After": str(max(1, math.ceil(err.retry_after)))}
        return err


def _drain(task: asyncio.Task) -> None:
    """Retrieve a cancelled loser's outcome so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
