"""Model groups, deployment choice, failover, circuit breakers and hedging.

A client names a logical model; the router resolves it (config groups,
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
- **Breakers** per deployment (``gateway.breaker``); with every deployment of
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
import random
import re
from typing import TYPE_CHECKING, Any, AsyncIterator

from gateway import upstream
from gateway.breaker import CLOSED, OPEN, Health, health_key
from gateway.config import PROVIDERS, ModelGroup, Settings
from gateway.errors import GatewayError
from gateway.hedge import LatencyWindow, RatioBudget, backoff
from gateway.providers.base import Deployment
from gateway.request import ChatRequest
from gateway.snapshot import Snapshot
from gateway.transport import Transport, make_transport

if TYPE_CHECKING:
    from gateway.pipeline.outcome import Outcome

# Model name → provider when no group or alias names it (OpenAI's o-series: o1, o3, o4-mini...).
_PREFIX = re.compile(r"^(?:(gpt-|chatgpt-|o\d)|(claude-)|(gemini-))")
_PROVIDER_BY_GROUP = ("openai", "anthropic", "google")
_MAX_IMPLICIT = 4096  # client-chosen names must not grow memory without bound
_RETRY_BURST = 10.0  # re-tries allowed at once after a quiet spell
_HEDGE_BURST = 10.0

# What /v1/models lists for each configured provider, besides groups and aliases.
CATALOGUE = {
    "openai": ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini"),
    "anthropic": ("claude-3-5-haiku-latest", "claude-sonnet-4-5", "claude-opus-4-1"),
    "google": ("gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro"),
}
# Implicit fallbacks: the like-for-like model of each other provider, by tier.
_SMALL = re.compile(r"mini|nano|haiku|flash|lite")
EQUIVALENT = {
    "small": {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "google": "gemini-2.0-flash"},
    "large": {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-5", "google": "gemini-2.5-pro"},
}


# Beyond configured groups and aliases, implicit groups serve only catalogued models and their dated
# snapshots (gpt-4o-mini-2024-07-18, claude-3-5-haiku-20241022, gemini-2.0-flash-001): any other name
# is a 404 before routing state exists for it, so client-chosen names cannot grow memory.
_SNAPSHOT = re.compile(r"-(?:latest|\d{4}-\d{2}-\d{2}|\d{8}|\d{3})$")
_CATALOGUED = frozenset(_SNAPSHOT.sub("", m) for names in CATALOGUE.values() for m in names)


def catalogued(model: str) -> bool:
    return _SNAPSHOT.sub("", model) in _CATALOGUED


def provider_for(model: str) -> str | None:
    m = _PREFIX.match(model)
    if m is None:
        return None
    return _PROVIDER_BY_GROUP[m.lastindex - 1]


def equivalent_model(model: str, provider: str) -> str:
    return EQUIVALENT["small" if _SMALL.search(model) else "large"][provider]


def _deadline_error() -> GatewayError:
    return GatewayError(504, "The request deadline passed before an answer came.", "api_error", None, "deadline_exceeded")


def _stalled(d: Deployment) -> GatewayError:
    return GatewayError(
        504, f"Deployment {d.name} stopped answering; the attempt was abandoned.", "api_error", None, "upstream_stalled"
    )


# What a failed attempt means: (fail over?, counts against the deployment?, did it answer?)
_LOCAL = (False, False, True)  # the adapter refused the request before sending it (a 400)
_CLIENT = (False, False, True)  # the provider rejected the client's request: returned as is
_FAILED = (True, True, True)
_TIMED_OUT = (True, True, False)


def classify(err: GatewayError) -> tuple[bool, bool, bool]:
    status = err.upstream_status
    if status is None:
        if err.code in ("upstream_timeout", "upstream_stalled"):
            return _TIMED_OUT
        if err.status < 500:
            return _LOCAL
        return _FAILED  # unreachable, malformed answer, broken stream
    if status >= 500 or status in (408, 429):
        return _FAILED
    if status in (401, 403):
        return _FAILED  # the deployment's own key was rejected: another deployment can serve the client
    return _CLIENT


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


class Router:
    def __init__(self, settings: Settings) -> None:
        self.transports: dict[tuple[str, str], Transport] = {}
        # Pool sizes are fixed for the process's life (a reload does not resize live pools).
        self._pool = (settings.worker_connections, settings.keepalive_timeout)
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
            groups[name] = self._bind(ModelGroup(g.name, list(g.deployments), g.strategy, dict(g.options), g.policy))
        return Snapshot(settings, groups)

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

    # --- resolution --------------------------------------------------------------

    def resolve(self, model: str, st: Snapshot | None = None) -> ModelGroup:
        """The group serving ``model`` under snapshot ``st`` (default: the current one), or a 404."""
        st = st or self.state
        group = st.groups.get(model) or st.implicit.get(model)
        if group is not None:
            return group
        target = st.aliases.get(model, model)
        group = st.groups.get(target) or st.implicit.get(target)
        if group is None:
            group = self._implicit_group(st, target)
        if len(st.implicit) < _MAX_IMPLICIT:
            st.implicit[model] = group
        return group

    def _implicit_group(self, st: Snapshot, model: str) -> ModelGroup:
        """A model no group names: its provider's deployment; with fallback on, the other providers' like-for-like model after it."""
        provider = provider_for(model)
        if provider is None or not catalogued(model):
            raise GatewayError(
                404,
                f"The model '{model}' does not exist or you do not have access to it.",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        providers = st.settings.providers
        p = providers[provider]
        if not p.api_key:
            raise GatewayError(
                404,
                f"The model '{model}' is not available: provider '{provider}' is not configured on this gateway.",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        deployments = [_implicit_deployment(p, model)]
        if st.fallback:
            for other in PROVIDERS:
                q = providers.get(other)
                if other != provider and q is not None and q.api_key:
                    deployments.append(_implicit_deployment(q, equivalent_model(model, other)))
        strategy = "priority" if len(deployments) > 1 else "weighted"
        group = ModelGroup(name=model, deployments=deployments, strategy=strategy, policy=st.settings.routing)
        return self._bind(group, register=len(st.implicit) < _MAX_IMPLICIT)  # uncached ones are one-offs

    def model_names(self) -> list[str]:
        st = self.state
        names = dict.fromkeys(st.groups)
        names.update(dict.fromkeys(st.aliases))
        for provider in st.settings.configured_providers:
            names.update(dict.fromkeys(CATALOGUE[provider]))
        return list(names)

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

    async def complete(self, req: ChatRequest, group: ModelGroup) -> dict:
        return await self._run(req, group.plan or self._bind(group).plan, False)

    async def stream(self, req: ChatRequest, group: ModelGroup) -> tuple[list[dict], AsyncIterator[list[dict]], upstream.UpstreamStream]:
        """Open a stream and wait for its first batch, so failures before any byte can fail over."""
        return await self._run(req, group.plan or self._bind(group).plan, True)

    async def _attempt(self, req: ChatRequest, plan: Plan, i: int, timeout: float, stream: bool, judged: bool):
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
                result = await _open_first(req, d, plan.transports[i], timeout)
            else:
                result = await upstream.complete(req, d, plan.transports[i], timeout)
        except GatewayError as err:
            h.tasks.discard(task)
            now = loop.time()
            _, counts, answered = classify(err)
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
            default = req.default_timeout
            judged = timeout >= 0.5 * (cap if cap is not None and cap < default else default)
            if plan.hedging and plan.n - len(tried) > 1:
                result, winner, used, errors = await self._hedged(req, plan, i, timeout, stream, judged, tried)
                attempts += len(used)
                for k, e in errors:
                    if classify(e)[0]:
                        failures.append(f"{names[k].name} ({e.code or e.upstream_status})")
                if winner is not None:
                    if winner != i and not errors:
                        failures.append(f"{names[i].name} (slow: hedged)")
                    return self._done(out, names[winner], attempts, failures, result)
                for k in used:
                    if k not in tried:
                        tried.append(k)
                err = errors[0][1]
                fatal = next((e for _, e in errors if not classify(e)[0]), None)
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
                if not classify(err)[0]:
                    if err.upstream_status is None and err.status < 500:
                        # This deployment's adapter cannot express the request; another provider's may.
                        attempts -= 1
                        nxt = plan.choose(now, tried)
                        if nxt is not None:
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
                    nxt, wait_until = _soonest_cooling(plan, now)
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
        first = loop.create_task(self._attempt(req, plan, i, timeout, stream, judged))
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
                        tasks[loop.create_task(self._attempt(req, plan, j, t2, stream, judged))] = j
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
                    if not classify(exc)[0]:
                        return None, None, list(tasks.values()), errors
            errors.sort(key=lambda e: e[0] != i)  # the first attempt's error first
            return None, None, list(tasks.values()), errors
        finally:
            for t in tasks:
                if t is winner_task:
                    continue
                if not t.done():
                    t.cancel()
                    t.add_done_callback(_drain)  # losers clean up on their own; nobody waits for them
                elif stream and not t.cancelled() and t.exception() is None:
                    await _close_stream(t.result())  # a stream that opened too, but lost

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


def _soonest_cooling(plan: Plan, now: float) -> tuple[int | None, float]:
    """A closed deployment that only waits out a provider's Retry-After, and until when."""
    best, at = None, math.inf
    for k, h in enumerate(plan.health):
        if h.state != OPEN and h.cool_until > now and h.cool_until < at:
            best, at = k, h.cool_until
    return best, at


def _implicit_deployment(p, model: str) -> Deployment:
    return Deployment(
        name=f"{p.name}:{model}",
        provider=p.name,
        model=model,
        base_url=p.base_url,
        api_key=p.api_key,
        transport=p.transport,
        timeout=p.timeout,
    )


async def _open_first(req: ChatRequest, d: Deployment, transport: Transport, timeout: float):
    s = await upstream.open_stream(req, d, transport, timeout)
    it = s.batches().__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        first = []
    except BaseException:
        await s.close()
        raise
    return first, it, s


async def _close_stream(result) -> None:
    _, it, s = result
    try:
        await it.aclose()
    finally:
        await s.close()


def _drain(task: asyncio.Task) -> None:
    """Retrieve a cancelled loser's outcome so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
