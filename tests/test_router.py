"""The router: its pure parts in process, its failover loop end to end.

Choice, budgets, policies and reload are pure state driven with explicit
times. Everything that sends a request (failover, Retry-After, breakers,
attempt time-outs, deadlines, hedging, hang detection, streams) goes through
a real ``gateway serve`` over loopback to two simulator processes ``a`` and
``b`` (each deployment on its own process, so the simulator's counters say
which one was asked, and whether a loser was cancelled), or to a closed port
for a connection refused. Each test has its own model group, so breaker and
latency state never leak from one test into the next.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

import orjson
import pytest

from gateway.routing.breaker import OPEN
from gateway.config import ConfigError, RoutePolicy, load_settings
from gateway.errors import GatewayError
from gateway.routing.budget import LatencyWindow, RatioBudget, backoff
from gateway.routing.resolve import equivalent_model
from gateway.routing.router import Router, classify
from gateway.simulator import SimulatorProcess
from gateway.transport import timed_out, unreachable
from tests.harness import API_KEY, gateway_with_config
from tests.redis_server import free_port


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


# --- pure helpers -------------------------------------------------------------------------------


def test_classify():
    def upstream(status):
        e = GatewayError(502 if status >= 500 else status, "x")
        e.upstream_status = status
        return e

    assert classify(unreachable("http://h", "refused")).fail_over
    assert classify(timed_out("http://h", 1)) == (True, True, False)
    for status in (500, 502, 503, 529, 429, 408, 401, 403):
        assert classify(upstream(status)).fail_over, status
    for status in (400, 404, 413, 422):
        assert classify(upstream(status)) == (False, False, True), status
    assert classify(GatewayError(400, "adapter cannot")).fail_over is False


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
    # "gemini" holds "mini": a large Gemini model must not fall back to a small one.
    assert equivalent_model("gemini-2.5-pro", "openai") == "gpt-4o"
    assert equivalent_model("gemini-2.5-flash", "openai") == "gpt-4o-mini"
    assert equivalent_model("gpt-4.1-nano", "google") == "gemini-2.0-flash"


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


# --- the failover loop, end to end -------------------------------------------------------------------

AUTH = {"Authorization": f"Bearer {API_KEY}"}
HEDGE = {"hedge": True, "hedge_delay": 0.05, "hedge_max_fraction": 1.0}
NEVER_OPEN = {"breaker_failures": 100_000, "breaker_min_requests": 100_000}


def _dep(name: str, url: str) -> str:
    return f'{{ name = "{name}", provider = "openai", model = "gpt-4o-mini", base_url = "{url}", api_key = "sk-{name}" }}'


def _groups(a: SimulatorProcess, b: SimulatorProcess, closed: str, closed2: str) -> str:
    """One group per test: ``name: (deployment base URLs, options)``; deployments are ``<group>-a``, ``<group>-b``."""
    A, B = a.openai_base_url, b.openai_base_url
    groups = {
        "fo5xx": ([A, B], {}),
        "fo400": ([A, B], {}),
        "fo429": ([A, B], {}),
        "refused": ([closed, B], {}),
        "srefused": ([closed, B], {}),
        "retry": ([A], {"retries": 10, "retry_budget": 1.0, "backoff_base": 0.05, "backoff_max": 0.1, **NEVER_OPEN}),
        "nobudget": ([closed], {"retries": 3, "retry_budget": 0.0}),
        "breaker": ([A, B], {"breaker_failures": 2, "breaker_cooldown": 0.6, "breaker_probes": 1}),
        "alldown": ([closed, closed2], {"breaker_failures": 1, "breaker_cooldown": 12}),
        "attempt": ([A, B], {"attempt_timeout": 0.3, **NEVER_OPEN}),
        "deadline": ([A, B], {"attempt_timeout": 0.5, "retries": 10, "retry_budget": 1.0, "backoff_base": 0.01,
                              "backoff_max": 0.02, **NEVER_OPEN}),
        "hedge": ([A, B], HEDGE),
        "shedge": ([A, B], HEDGE),
        "hedgeoh": ([A, B], {**HEDGE, "hedge_delay": 0.3}),
        "nohedge": ([A, B], {**HEDGE, "hedge_delay": 0.01, "hedge_max_fraction": 0.0}),
        "stall": ([A, B], {"breaker_stall": 0.1, "attempt_timeout": 10}),
    }
    out = []
    for name, (urls, options) in groups.items():
        lines = [f"[models.{name}]", 'strategy = "priority"']
        lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
        deps = ", ".join(_dep(f"{name}-{'ab'[i]}", url) for i, url in enumerate(urls))
        lines.append(f"deployments = [{deps}]")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


@pytest.fixture(scope="module")
def sims():
    with SimulatorProcess() as a, SimulatorProcess() as b:
        yield a, b


@pytest.fixture(scope="module")
def gateway(sims):
    closed = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]  # nothing listens there: ECONNREFUSED
    with gateway_with_config(_groups(*sims, *closed), {"GATEWAY_CACHE": "off", "REQUEST_TIMEOUT_SECONDS": "10"}) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _reset_sims(request):
    if "sims" not in request.fixturenames:
        yield
        return
    sims = request.getfixturevalue("sims")
    for s in sims:
        s.reset()
    yield
    for s in sims:
        s.reset()


class Answer:
    def __init__(self, status: int, headers, raw: bytes, seconds: float) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.raw = raw
        self.seconds = seconds

    @property
    def deployment(self) -> str | None:
        return self.headers.get("x-gateway-deployment")

    @property
    def attempts(self) -> int:
        return int(self.headers["x-gateway-attempts"])

    @property
    def failover(self) -> str | None:
        return self.headers.get("x-gateway-failover")

    def error(self) -> dict:
        return orjson.loads(self.raw)["error"]

    def stream_text(self) -> str:
        """The streamed content; asserts the stream is whole (chunks, a finish_reason, ``[DONE]`` last)."""
        assert self.headers["content-type"].startswith("text/event-stream"), self.raw
        payloads = [e[len(b"data: "):] for e in self.raw.split(b"\n\n") if e.startswith(b"data: ")]
        assert payloads and payloads[-1] == b"[DONE]", self.raw[-200:]
        chunks = [orjson.loads(p) for p in payloads[:-1]]
        assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0].get("finish_reason")] == ["stop"]
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


async def ask(http, gw, model: str, *, stream: bool = False, headers: dict | None = None) -> Answer:
    body = {"model": model, "messages": [{"role": "user", "content": "What is machine learning?"}]}
    if stream:
        body["stream"] = True
    t0 = time.perf_counter()
    async with http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH | (headers or {})) as r:
        raw = await r.read()
        return Answer(r.status, r.headers, raw, time.perf_counter() - t0)


async def deployment(http, gw, name: str) -> dict:
    """The gateway's view of one deployment (/v1/providers): breaker state, consecutive failures, in flight..."""
    async with http.get(gw.url + "/v1/providers", headers=AUTH) as r:
        assert r.status == 200
        rows = {row["name"]: row for row in orjson.loads(await r.read())["data"]}
    return rows[name]


def served(sim: SimulatorProcess) -> dict:
    """What one simulator process saw for the OpenAI wire format: requests, in_flight, status, streams."""
    return sim.stats()["providers"]["openai"]


async def eventually(check, timeout: float = 2.0):
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return value


async def test_fails_over_on_5xx_and_names_it(gateway, sims, http):
    a, b = sims
    a.configure("openai", mode="error", error_status=500)
    ans = await ask(http, gateway, "fo5xx")
    assert ans.status == 200 and orjson.loads(ans.raw)["object"] == "chat.completion"
    assert ans.deployment == "fo5xx-b" and ans.attempts == 2
    assert ans.failover == "fo5xx-a (upstream_error)"
    assert served(a)["status"] == {"500": 1} and served(b)["status"] == {"200": 1}


async def test_client_4xx_is_returned_without_retry(gateway, sims, http):
    a, b = sims
    a.configure("openai", mode="error", error_status=400)
    ans = await ask(http, gateway, "fo400")
    assert ans.status == 400 and ans.attempts == 1, ans.raw
    assert set(ans.error()) == {"message", "type", "param", "code"}
    assert served(a)["requests"] == 1 and served(b)["requests"] == 0
    row = await deployment(http, gateway, "fo400-a")
    assert row["consecutive_failures"] == 0 and row["state"] == "closed"  # not the deployment's fault


async def test_429_retry_after_fails_over_and_keeps_the_deployment_away(gateway, sims, http):
    a, b = sims
    a.configure("openai", mode="overloaded", retry_after=30)  # OpenAI sheds load with 429 + Retry-After
    first = await ask(http, gateway, "fo429")
    assert first.status == 200 and first.deployment == "fo429-b" and first.attempts == 2
    assert first.failover.startswith("fo429-a (")
    a.configure("openai", mode="ok")  # it would answer now, but asked for 30 s
    second = await ask(http, gateway, "fo429")
    assert second.deployment == "fo429-b" and second.attempts == 1 and second.failover is None
    assert served(a)["requests"] == 1
    row = await deployment(http, gateway, "fo429-a")
    assert row["state"] == "closed" and 25 < row["cooling_for_s"] <= 30  # kept away, not opened


async def test_connection_refused_fails_over(gateway, sims, http):
    ans = await ask(http, gateway, "refused")
    assert ans.status == 200 and ans.deployment == "refused-b" and ans.attempts == 2
    assert ans.failover == "refused-a (upstream_unreachable)"


async def test_single_deployment_retries_with_backoff_within_the_budget(gateway, sims, http):
    a, _ = sims
    for _ in range(10):  # each request earns the retry budget (ratio 1.0) a token
        assert (await ask(http, gateway, "retry")).attempts == 1
    a.configure("*", mode="refuse", for_seconds=0.15)  # every provider refuses: the port closes, then reopens
    ans = await ask(http, gateway, "retry")
    assert ans.status == 200 and ans.deployment == "retry-a", ans.raw
    assert 2 <= ans.attempts <= 11 and "retry-a (upstream_unreachable)" in ans.failover
    assert ans.seconds >= 0.1  # it waited (backoff) for the port to reopen rather than giving up


async def test_without_retry_budget_a_failure_is_returned_at_once(gateway, http):
    ans = await ask(http, gateway, "nobudget")
    assert ans.status == 502 and ans.attempts == 1
    assert ans.error()["code"] == "upstream_unreachable"


async def test_breaker_opens_then_half_open_probes_and_closes(gateway, sims, http):
    a, b = sims
    a.configure("openai", mode="error", error_status=503, retry_after=0)
    for _ in range(2):
        ans = await ask(http, gateway, "breaker")
        assert ans.deployment == "breaker-b" and ans.attempts == 2
    row = await deployment(http, gateway, "breaker-a")
    assert row["state"] == "open" and row["reason"].startswith("2 consecutive failures")
    # Open: a is not even tried.
    ans = await ask(http, gateway, "breaker")
    assert ans.deployment == "breaker-b" and ans.attempts == 1 and served(a)["requests"] == 2
    # After the cool-down one probe goes to a; it fails, so a opens again.
    await asyncio.sleep(0.7)
    ans = await ask(http, gateway, "breaker")
    assert ans.deployment == "breaker-b" and ans.attempts == 2 and served(a)["requests"] == 3
    row = await deployment(http, gateway, "breaker-a")
    assert row["state"] == "open" and row["reason"].startswith("probe failed")
    # After the next cool-down the probe succeeds: a is closed and serves again.
    a.configure("openai", mode="ok")
    await asyncio.sleep(0.7)
    assert (await deployment(http, gateway, "breaker-a"))["state"] == "half_open"
    ans = await ask(http, gateway, "breaker")
    assert ans.deployment == "breaker-a" and ans.attempts == 1
    assert (await deployment(http, gateway, "breaker-a"))["state"] == "closed"
    states = [t["state"] for t in (await deployment(http, gateway, "breaker-a"))["transitions"]]
    assert states == ["open", "half_open", "open", "half_open", "closed"]


async def test_every_deployment_open_gives_a_fast_503(gateway, http):
    ans = await ask(http, gateway, "alldown")
    assert ans.status == 502 and ans.attempts == 2  # both refused: both open (breaker_failures = 1)
    ans = await ask(http, gateway, "alldown")
    assert ans.status == 503 and ans.error()["code"] == "no_healthy_deployment"
    assert 10 <= int(ans.headers["retry-after"]) <= 12  # the 12 s cool-down, rounded up
    assert ans.seconds < 1.0


async def test_an_attempt_that_times_out_fails_over(gateway, sims, http):
    a, b = sims
    a.configure("openai", mode="timeout")  # accepts, never answers
    ans = await ask(http, gateway, "attempt")
    assert ans.status == 200 and ans.deployment == "attempt-b" and ans.attempts == 2
    assert ans.failover == "attempt-a (upstream_timeout)"
    assert 0.3 <= ans.seconds < 1.5  # the 0.3 s attempt time-out, not the 10 s request time-out


async def test_the_deadline_bounds_all_attempts(gateway, sims, http):
    for _ in range(10):  # each request earns the retry budget a token: enough for every repeat below
        assert (await ask(http, gateway, "deadline")).status == 200
    for s in sims:
        s.configure("openai", mode="timeout")
    ans = await ask(http, gateway, "deadline", headers={"x-gateway-timeout": "1.2"})
    # a and b for 0.5 s each, then a repeat cut to the 0.2 s left: the deadline, not the attempt count or
    # the budget, ended it (11 attempts would take 5.5 s; an uncut third attempt would end at 1.5 s).
    assert ans.status == 504 and ans.attempts == 3, ans.raw
    assert 1.15 <= ans.seconds < 1.4


async def test_hedge_wins_over_a_slow_first_attempt_and_cancels_it(gateway, sims, http):
    a, b = sims
    a.configure("openai", latency_ms=1000)
    b.configure("openai", latency_ms=10)
    ans = await ask(http, gateway, "hedge")
    assert ans.status == 200 and ans.seconds < 0.95  # a answers after 1 s
    assert ans.deployment == "hedge-b" and ans.attempts == 2
    assert ans.failover == "hedge-a (slow: hedged)"
    # The loser's request was cancelled: its connection closed before the simulator answered it.
    assert await eventually(lambda: served(a)["in_flight"] == 0)
    assert served(a)["requests"] == 1 and served(a)["status"] == {}
    assert (await deployment(http, gateway, "hedge-a"))["in_flight"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["rest", "sse"])
async def test_a_hedged_request_does_not_count_the_wait_on_its_providers_as_overhead(gateway, sims, http, stream):
    a, b = sims
    a.configure("openai", latency_ms=1000)
    b.configure("openai", latency_ms=100)
    ans = await ask(http, gateway, "hedgeoh", stream=stream)
    assert ans.status == 200 and ans.deployment == "hedgeoh-b"
    wall_ms = ans.seconds * 1000.0
    # a was awaited from 0 to ~0.4 s (hedged at 0.3 s), b from 0.3 s to ~0.4 s: at least 400 ms of it was upstream.
    assert 0 <= float(ans.headers["x-gateway-overhead-ms"]) < wall_ms - 350


async def test_no_hedge_without_budget(gateway, sims, http):
    a, b = sims
    a.configure("openai", latency_ms=200)
    ans = await ask(http, gateway, "nohedge")
    assert ans.status == 200 and ans.deployment == "nohedge-a" and ans.attempts == 1
    assert served(b)["requests"] == 0


async def test_a_hung_deployment_is_abandoned_and_its_requests_fail_over(gateway, sims, http):
    a, b = sims
    assert (await ask(http, gateway, "stall")).deployment == "stall-a"  # a latency sample for a
    a.configure("openai", mode="timeout")
    ans = await ask(http, gateway, "stall")
    assert ans.status == 200 and ans.seconds < 1.5  # not the 10 s attempt time-out
    assert ans.deployment == "stall-b" and "stall-a (upstream_stalled)" in ans.failover
    row = await deployment(http, gateway, "stall-a")
    assert row["state"] == "open" and row["reason"].startswith("hung")


async def test_a_stream_is_hedged_on_its_first_byte_and_the_loser_is_cancelled(gateway, sims, http):
    a, b = sims
    a.configure("openai", latency_ms=1000)
    b.configure("openai", latency_ms=10, tokens_per_second=200, response_tokens=12)
    ans = await ask(http, gateway, "shedge", stream=True)
    assert ans.status == 200 and ans.seconds < 0.95  # a answers after 1 s
    assert "What is machine learning" in ans.stream_text()
    assert ans.deployment == "shedge-b" and ans.attempts == 2
    assert ans.failover == "shedge-a (slow: hedged)"
    assert await eventually(lambda: served(a)["in_flight"] == 0)
    assert served(a)["requests"] == 1 and served(a)["status"] == {} and served(b)["streams"] == 1


async def test_a_stream_fails_over_before_its_first_byte(gateway, sims, http):
    _, b = sims
    ans = await ask(http, gateway, "srefused", stream=True)
    assert ans.status == 200 and "What is machine learning" in ans.stream_text()
    assert ans.deployment == "srefused-b" and ans.attempts == 2
    assert ans.failover == "srefused-a (upstream_unreachable)"
    assert served(b)["streams"] == 1
    assert await eventually(lambda: served(b)["in_flight"] == 0)  # its stream was closed
