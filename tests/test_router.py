"""The router's pure parts and its failover loop, in process, with scripted fake transports."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import orjson
import pytest

from gateway.routing.breaker import OPEN
from gateway.config import ConfigError, RoutePolicy, load_settings
from gateway.errors import GatewayError
from gateway.routing.budget import LatencyWindow, RatioBudget, backoff
from gateway.request import ChatRequest
from gateway.routing.router import Router, classify
from gateway.routing.resolve import equivalent_model
from gateway.transport import timed_out, unreachable

OK_BODY = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
})


def settings_for(tmp_path, toml: str, **env):
    path = tmp_path / "gw.toml"
    path.write_text(toml)
    return load_settings({"GATEWAY_CONFIG": str(path), "OPENAI_API_KEY": "sk", **env})


def group_toml(name: str, n: int, **options) -> str:
    lines = [f"[models.{name}]"]
    for k, v in options.items():
        lines.append(f"{k} = {orjson.dumps(v).decode()}")
    deps = ", ".join(f'{{ name = "d{i}", provider = "openai", model = "m{i}", base_url = "http://h{i}" }}' for i in range(n))
    lines.append(f"deployments = [{deps}]")
    return "\n".join(lines) + "\n"


class FakeTransport:
    """Answers from a script: (status, body, retry_after), an exception, or ("sleep", seconds)."""

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.calls = 0
        self.cancelled = 0

    async def send(self, req, timeout):
        self.calls += 1
        item = self.script[min(self.calls, len(self.script)) - 1]
        if isinstance(item, tuple) and item[0] == "sleep":
            try:
                if item[1] >= timeout:
                    await asyncio.sleep(timeout)
                    raise timed_out(req.url, timeout)
                await asyncio.sleep(item[1])
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return 200, OK_BODY, None
        if isinstance(item, Exception):
            raise item
        return item

    async def close(self):
        pass


OK = (200, OK_BODY, None)


def request(seconds: float = 5.0) -> ChatRequest:
    loop = asyncio.get_running_loop()
    body = {"model": "g", "messages": [{"role": "user", "content": "hi"}]}
    return ChatRequest(body, "g", False, False, "req_1", None, {}, 0.0, loop.time() + seconds)


def router_with(tmp_path, transports: list, **options) -> tuple[Router, object]:
    router = Router(settings_for(tmp_path, group_toml("g", len(transports), **options)))
    group = router.resolve("g")
    group.plan.transports = list(transports)
    return router, group


# --- pure helpers -------------------------------------------------------------------------------


def test_classify():
    def upstream(status):
        e = GatewayError(502 if status >= 500 else status, "x")
        e.upstream_status = status
        return e

    assert classify(unreachable("http://h", "refused"))[0]
    assert classify(timed_out("http://h", 1)) == (True, True, False)
    for status in (500, 502, 503, 529, 429, 408, 401, 403):
        assert classify(upstream(status))[0], status
    for status in (400, 404, 413, 422):
        assert classify(upstream(status)) == (False, False, True), status
    assert classify(GatewayError(400, "adapter cannot"))[0] is False


def test_backoff_is_full_jitter_and_capped():
    assert backoff(0.1, 1.0, 1, rand=lambda: 1.0) == 0.1
    assert backoff(0.1, 1.0, 3, rand=lambda: 1.0) == 0.4
    assert backoff(0.1, 1.0, 10, rand=lambda: 1.0) == 1.0
    assert backoff(0.1, 1.0, 10, rand=lambda: 0.0) == 0.0


def test_ratio_budget_never_exceeds_its_fraction():
    b = RatioBudget(0.1, burst=5)
    spent = 0
    for _ in range(1000):
        b.earn()
        spent += b.spend() + b.spend()  # greedy: tries twice per request
    assert spent <= 100
    quiet = RatioBudget(0.5, burst=3)
    for _ in range(100):
        quiet.earn()
    assert sum(quiet.spend() for _ in range(10)) == 3  # a burst after a quiet spell is capped


def test_latency_window_p95():
    w = LatencyWindow(size=100, every=10, min_samples=20)
    for i in range(19):
        w.add(i / 100)
    assert w.p95 is None
    for i in range(19, 100):
        w.add(i / 100)
    assert w.p95 == pytest.approx(0.95)


def test_equivalent_models_by_tier():
    assert equivalent_model("gpt-4o-mini", "anthropic") == "claude-3-5-haiku-latest"
    assert equivalent_model("claude-sonnet-4-5", "google") == "gemini-2.5-pro"


# --- config ------------------------------------------------------------------------------------------


def test_group_options_parse_into_a_policy(tmp_path):
    s = settings_for(
        tmp_path,
        "[routing]\nbreaker_cooldown = 7\n" + group_toml("g", 2, retries=4, hedge=True, hedge_delay="p95", breaker_stall=0.3),
        GATEWAY_BREAKER_FAILURES="9",
    )
    p = s.models["g"].policy
    assert (p.retries, p.hedge, p.hedge_delay, p.breaker_stall) == (4, True, None, 0.3)
    assert p.breaker_cooldown == 7 and p.breaker_failures == 9  # [routing], then the environment
    assert s.routing.breaker_failures == 9 and s.routing.retries == RoutePolicy().retries


@pytest.mark.parametrize(
    "options,named",
    [
        ({"retries": -1}, "models.g.retries"),
        ({"retries": "many"}, "models.g.retries"),
        ({"breaker_error_rate": 0}, "models.g.breaker_error_rate"),
        ({"hedge_max_fraction": 2}, "models.g.hedge_max_fraction"),
        ({"hedge_delay": "p99"}, "models.g.hedge_delay"),
        ({"breaker_cooldwn": 1}, "models.g.breaker_cooldwn"),
        ({"backoff_base": 2, "backoff_max": 1}, "models.g.backoff_max"),
    ],
)
def test_bad_group_options_name_the_setting(tmp_path, options, named):
    with pytest.raises(ConfigError) as exc:
        settings_for(tmp_path, group_toml("g", 1, **options))
    assert str(exc.value).startswith(named) and "\n" not in str(exc.value)


def test_bad_routing_env_names_the_variable(tmp_path):
    with pytest.raises(ConfigError) as exc:
        settings_for(tmp_path, "", GATEWAY_BREAKER_COOLDOWN="soon")
    assert str(exc.value).startswith("GATEWAY_BREAKER_COOLDOWN")


# --- choice --------------------------------------------------------------------------------------------


def test_weighted_choice_follows_weights_and_zero_weight_is_failover_only(tmp_path):
    toml = (
        "[models.g]\ndeployments = ["
        '{ name = "a", provider = "openai", model = "m", weight = 3 },'
        '{ name = "b", provider = "openai", model = "m", weight = 1 },'
        '{ name = "c", provider = "openai", model = "m", weight = 0 }]\n'
    )
    plan = Router(settings_for(tmp_path, toml)).resolve("g").plan
    random.seed(1)
    counts = Counter(plan.choose(0.0) for _ in range(4000))
    assert counts[2] == 0 and 2.6 < counts[0] / counts[1] < 3.4
    assert plan.choose(0.0, [0, 1]) == 2  # only as a fallback
    assert plan.choose(0.0, [0, 1, 2]) is None


def test_priority_takes_the_first_healthy(tmp_path):
    plan = Router(settings_for(tmp_path, group_toml("g", 3, strategy="priority"))).resolve("g").plan
    assert plan.choose(0.0) == 0
    plan.health[0].state = OPEN
    plan.health[0].open_until = 100.0
    assert plan.choose(1.0) == 1
    assert plan.choose(1.0, [1]) == 2


def test_latency_strategy_prefers_the_faster_deployment(tmp_path):
    plan = Router(settings_for(tmp_path, group_toml("g", 2, strategy="latency"))).resolve("g").plan
    for h, latency in zip(plan.health, (0.5, 0.1)):
        h.success(1.0, h.begin(1.0 - latency), latency)
    assert all(plan.choose(1.0) == 1 for _ in range(50))
    # Queued requests count too: the fast one with 9 in flight loses to the slow idle one.
    plan.health[1].inflight = 9
    assert plan.choose(1.0) == 0


def test_stall_detection_never_opens_the_last_deployment_standing(tmp_path):
    plan = Router(settings_for(tmp_path, group_toml("g", 2, strategy="priority", breaker_stall=0.1))).resolve("g").plan
    a, b = plan.health
    for h in (a, b):
        h.success(1.0, h.begin(0.9), 0.1)
    a.begin(1.0)
    b.begin(1.0)
    for t in (1.5, 1.6, 1.7):  # both hung: neither is opened
        plan.choose(t)
    assert a.state == b.state == "closed"
    b.success(1.8, b.begin(1.75), 0.05)  # b answers again: now a, still hung, is opened
    plan.choose(1.8)
    plan.choose(1.9)
    assert a.state == OPEN and b.state == "closed"


# --- resolution and reload ----------------------------------------------------------------------------


def test_implicit_groups_fall_back_across_providers_when_simulated(tmp_path):
    env = {"ANTHROPIC_API_KEY": "sk-ant", "GOOGLE_API_KEY": "g"}
    plain = Router(settings_for(tmp_path, "", **env)).resolve("gpt-4o-mini")
    assert [d.name for d in plain.deployments] == ["openai:gpt-4o-mini"]
    sim = Router(settings_for(tmp_path, "", GATEWAY_SIMULATED="true", **env)).resolve("gpt-4o-mini")
    assert [d.name for d in sim.deployments] == [
        "openai:gpt-4o-mini", "anthropic:claude-3-5-haiku-latest", "google:gemini-2.0-flash",
    ]
    assert sim.strategy == "priority"
    with pytest.raises(GatewayError) as exc:
        Router(settings_for(tmp_path, "")).resolve("no-such-model")
    assert exc.value.status == 404


def test_reload_swaps_groups_and_keeps_breaker_state(tmp_path):
    router = Router(settings_for(tmp_path, group_toml("g", 2)))
    old = router.resolve("g")
    h0 = old.plan.health[0]
    h0.failure(1.0, h0.begin(1.0), "x")
    router.reload(settings_for(tmp_path, group_toml("g", 2, strategy="priority") + group_toml("h", 1)))
    new = router.resolve("g")
    assert new is not old and new.strategy == "priority" and old.strategy == "weighted"
    assert new.plan.health[0] is h0 and h0.consecutive == 1  # same deployment: same health
    assert router.resolve("h").deployments[0].name == "d0"
    with pytest.raises(ConfigError):
        router.reload(settings_for(tmp_path, group_toml("g", 1, retries="x")))
    assert router.resolve("g") is new  # a failed reload changes nothing


# --- the failover loop ---------------------------------------------------------------------------------


def upstream_error(status: int, retry_after: float | None = None) -> GatewayError:
    e = GatewayError(502 if status >= 500 else status, f"HTTP {status}", code="upstream_error" if status >= 500 else None)
    e.upstream_status = status
    e.retry_after = retry_after
    return e


async def test_fails_over_on_5xx_and_names_it(tmp_path):
    a, b = FakeTransport(upstream_error(500)), FakeTransport(OK)
    router, group = router_with(tmp_path, [a, b], strategy="priority")
    req = request()
    out = await router.complete(req, group)
    assert out["object"] == "chat.completion"
    assert req.outcome.deployment.name == "d1" and req.outcome.attempts == 2
    assert req.outcome.failover == "d0 (upstream_error)"


async def test_client_4xx_is_returned_without_retry(tmp_path):
    a, b = FakeTransport(upstream_error(400)), FakeTransport(OK)
    router, group = router_with(tmp_path, [a, b], strategy="priority")
    req = request()
    with pytest.raises(GatewayError) as exc:
        await router.complete(req, group)
    assert exc.value.status == 400 and req.outcome.attempts == 1 and b.calls == 0
    assert group.plan.health[0].consecutive == 0  # not the deployment's fault


async def test_429_retry_after_fails_over_and_keeps_the_deployment_away(tmp_path):
    a, b = FakeTransport(upstream_error(429, retry_after=30)), FakeTransport(OK)
    router, group = router_with(tmp_path, [a, b], strategy="priority")
    await router.complete(request(), group)
    req = request()
    await router.complete(req, group)
    assert a.calls == 1 and req.outcome.attempts == 1 and req.outcome.deployment.name == "d1"


async def test_single_deployment_retries_with_backoff_within_the_budget(tmp_path):
    a = FakeTransport(unreachable("http://h0", "refused"), unreachable("http://h0", "refused"), OK)
    router, group = router_with(tmp_path, [a], retries=3, retry_budget=1.0, backoff_base=0.001, backoff_max=0.002)
    group.plan.retry_budget.tokens = 5
    req = request()
    await router.complete(req, group)
    assert a.calls == 3 and req.outcome.attempts == 3
    # With the budget spent, a failure is returned at once.
    b = FakeTransport(unreachable("http://h0", "refused"))
    router, group = router_with(tmp_path, [b], retries=3, retry_budget=0.0)
    with pytest.raises(GatewayError) as exc:
        await router.complete(request(), group)
    assert b.calls == 1 and exc.value.code == "upstream_unreachable"


async def test_every_deployment_open_gives_a_fast_503(tmp_path):
    router, group = router_with(tmp_path, [FakeTransport(OK), FakeTransport(OK)], breaker_cooldown=30)
    for h in group.plan.health:
        h.state, h.open_until = OPEN, asyncio.get_running_loop().time() + 12.2
    with pytest.raises(GatewayError) as exc:
        await router.complete(request(), group)
    assert exc.value.status == 503 and exc.value.code == "no_healthy_deployment"
    assert exc.value.headers == {"Retry-After": "13"}


async def test_the_deadline_bounds_all_attempts(tmp_path):
    hang = ("sleep", 60)
    router, group = router_with(tmp_path, [FakeTransport(hang), FakeTransport(hang)], attempt_timeout=0.1, retry_budget=1.0,
                                retries=10)
    group.plan.retry_budget.tokens = 10
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(GatewayError) as exc:
        await router.complete(request(0.35), group)
    assert exc.value.status == 504 and loop.time() - t0 < 0.45


async def test_hedge_wins_over_a_slow_first_attempt_and_cancels_it(tmp_path):
    slow, fast = FakeTransport(("sleep", 1.0)), FakeTransport(("sleep", 0.01))
    router, group = router_with(tmp_path, [slow, fast], strategy="priority", hedge=True, hedge_delay=0.05,
                                hedge_max_fraction=1.0)
    req = request()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await router.complete(req, group)
    assert loop.time() - t0 < 0.5
    assert req.outcome.deployment.name == "d1" and req.outcome.attempts == 2
    assert req.outcome.failover == "d0 (slow: hedged)"
    await asyncio.sleep(0.01)
    assert slow.cancelled == 1 and group.plan.health[0].inflight == 0


async def test_no_hedge_without_budget(tmp_path):
    slow, fast = FakeTransport(("sleep", 0.2)), FakeTransport(OK)
    router, group = router_with(tmp_path, [slow, fast], strategy="priority", hedge=True, hedge_delay=0.01,
                                hedge_max_fraction=0.0)
    req = request()
    await router.complete(req, group)
    assert req.outcome.deployment.name == "d0" and fast.calls == 0


async def test_a_hung_deployment_is_abandoned_and_its_requests_fail_over(tmp_path):
    hung, good = FakeTransport(OK, ("sleep", 60)), FakeTransport(OK)
    router, group = router_with(tmp_path, [hung, good], strategy="priority", breaker_stall=0.1, attempt_timeout=10)
    await router.complete(request(), group)  # a latency sample for d0
    good.script = [("sleep", 0.01)]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    waiting = asyncio.ensure_future(router.complete(stuck := request(), group))
    await asyncio.sleep(0.05)
    # Other traffic keeps routing; d1 answers, d0 does not: once d0 is overdue it is opened.
    for _ in range(10):
        await asyncio.sleep(0.03)
        try:
            await router.complete(request(), group)
        except GatewayError:
            pass
    await waiting
    assert loop.time() - t0 < 1.0  # not the 10 s attempt time-out
    assert stuck.outcome.deployment.name == "d1" and "d0 (upstream_stalled)" in stuck.outcome.failover
    assert group.plan.health[0].state == OPEN and group.plan.health[0].open_reason.startswith("hung")


class FakeStreamResponse:
    status = 200
    retry_after = None

    def __init__(self, words: list[str]) -> None:
        self.words = words
        self.closed = False

    async def read(self) -> bytes:
        return b""

    async def chunks(self):
        for w in self.words:
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            await asyncio.sleep(0)
        yield b"data: [DONE]\n\n"

    async def close(self) -> None:
        self.closed = True


class FakeStreamTransport:
    def __init__(self, delay: float, words: list[str]) -> None:
        self.delay = delay
        self.words = words
        self.opened: list[FakeStreamResponse] = []
        self.cancelled = 0

    async def open(self, req, timeout):
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        resp = FakeStreamResponse(self.words)
        self.opened.append(resp)
        return resp

    async def close(self):
        pass


async def test_a_stream_is_hedged_on_its_first_byte_and_the_loser_is_cancelled(tmp_path):
    slow, fast = FakeStreamTransport(1.0, ["slow"]), FakeStreamTransport(0.01, ["fast", "one"])
    router, group = router_with(tmp_path, [slow, fast], strategy="priority", hedge=True, hedge_delay=0.05,
                                hedge_max_fraction=1.0)
    req = request()
    req.stream = True
    first, rest, s = await router.stream(req, group)
    texts = [c["choices"][0]["delta"].get("content") for c in first]
    async for batch in rest:
        texts += [c["choices"][0]["delta"].get("content") for c in batch if c["choices"]]
    assert "fast" in texts and "slow" not in texts
    assert req.outcome.deployment.name == "d1" and req.outcome.attempts == 2
    await asyncio.sleep(0.01)
    assert slow.cancelled == 1 and not slow.opened


async def test_a_stream_fails_over_before_its_first_byte(tmp_path):
    class Refusing:
        async def open(self, req, timeout):
            raise unreachable(req.url, "Connection refused")

        async def close(self):
            pass

    good = FakeStreamTransport(0.0, ["hello"])
    router, group = router_with(tmp_path, [Refusing(), good], strategy="priority")
    req = request()
    req.stream = True
    first, rest, s = await router.stream(req, group)
    await rest.aclose()
    assert req.outcome.attempts == 2 and req.outcome.failover == "d0 (upstream_unreachable)"
    assert good.opened[0].closed
