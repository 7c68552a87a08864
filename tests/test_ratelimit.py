"""Per-key limits in one worker: bucket arithmetic on an injected clock, reservation and settlement,
and the 429 and x-ratelimit-* headers through the real ASGI app (upstream: the simulator on loopback)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.auth import ApiKey
from gateway.config import load_settings
from gateway.http.asgi import Gateway
from gateway.pipeline.outcome import Outcome
from gateway.providers.common import check_chunks
from gateway.ratelimit import Bucket, Limiter, format_reset, prompt_estimate, reservation
from gateway.request import ChatRequest
from gateway.simulator import SimulatorProcess
from tests.harness import API_KEY, simulator_env

AUTH = [(b"authorization", f"Bearer {API_KEY}".encode()), (b"content-type", b"application/json")]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_arithmetic():
    b = Bucket(rate=1.0, capacity=3, now=0.0)
    assert [b.take(1, 0.0) for _ in range(4)] == [True, True, True, False]
    assert b.wait(1, 0.0) == pytest.approx(1.0)
    assert b.reset(0.0) == pytest.approx(3.0)
    assert not b.take(1, 0.5) and b.take(1, 1.0)  # half a token is not a token
    assert b.level(100.0) == 3  # never beyond capacity
    b.charge(5, 100.0)  # usage charged after the fact may go into debt ...
    assert b.level(100.0) == -2 and b.wait(1, 100.0) == pytest.approx(3.0)
    b.charge(-10, 100.0)  # ... and a refund never lifts it past capacity
    assert b.level(100.0) == 3


def test_reset_format_is_openais():
    assert [format_reset(s) for s in (0, 0.02, 1.5, 360, 4000)] == ["0s", "20ms", "1.5s", "6m0s", "1h6m40s"]


def test_reservation_is_prompt_estimate_plus_max_tokens():
    body = {"messages": [{"role": "user", "content": "x" * 400}, {"role": "user", "content": [{"type": "text", "text": "y" * 40}]}]}
    assert prompt_estimate(body) == 110 + 8
    assert reservation(body, 1024) == 118 + 1024
    assert reservation({**body, "max_tokens": 50, "n": 2}, 1024) == 118 + 100


def settings_of(**env):
    return load_settings({"GATEWAY_API_KEYS": API_KEY, "GATEWAY_CACHE": "off", **env})


def local_limiter(**env) -> tuple[Limiter, ApiKey, Clock]:
    s, clock = settings_of(**env), Clock()
    return Limiter(lambda: s, clock=clock), s.api_keys[API_KEY], clock


def request(key: ApiKey, **body) -> ChatRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], **body}
    return ChatRequest(body, "m", bool(body.get("stream")), False, "r", key, {}, 0.0, 0.0, outcome=Outcome("r", 0.0))


def test_local_request_limit_refills_on_the_clock():
    lim, key, clock = local_limiter(RATE_LIMIT_REQUESTS_PER_MINUTE="60", RATE_LIMIT_BURST="5")
    for _ in range(5):
        assert lim(request(key)) is None
    r = request(key)
    with pytest.raises(Exception) as exc:
        lim(r)
    err = exc.value
    assert err.status == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
    assert err.headers == {"Retry-After": "1"}
    assert r.outcome.limit_requests.remaining == 0
    clock.now += 2.0  # two tokens back
    ok = request(key)
    assert lim(ok) is None and ok.outcome.limit_requests.remaining == 1 and lim(request(key)) is None
    with pytest.raises(Exception):
        lim(request(key))


def test_per_key_override_from_the_config_file(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[[keys]]\nkey = "k-small"\nrequests_per_minute = 6\nburst = 2\ntokens_per_minute = 600\n')
    s = load_settings({"GATEWAY_CONFIG": str(cfg), "GATEWAY_CACHE": "off"})
    clock = Clock()
    lim = Limiter(lambda: s, clock=clock)
    key = s.api_keys["k-small"]
    assert key.tokens_per_minute == 600
    assert lim(request(key, max_tokens=10)) is None and lim(request(key, max_tokens=10)) is None
    with pytest.raises(Exception):
        lim(request(key, max_tokens=10))
    clock.now += 10.0  # 6 a minute: one every 10 s
    assert lim(request(key, max_tokens=10)) is None


def finish(lim: Limiter, req: ChatRequest, prompt: int, completion: int, cache: str | None = None) -> None:
    out = req.outcome
    out.status, out.prompt_tokens, out.completion_tokens, out.cache = 200, prompt, completion, cache
    out.finished = 1.0
    lim.on_finish(req, out)


def test_token_reservation_and_settlement():
    lim, key, clock = local_limiter(RATE_LIMIT_TOKENS_PER_MINUTE="600", RATE_LIMIT_BURST="1000")
    bucket = lambda: lim.local[(API_KEY, "tok")].level(clock.now)  # noqa: E731
    a = request(key, max_tokens=100)
    lim(a)
    reserved = a.outcome.reserved_tokens
    assert reserved == prompt_estimate(a.body) + 100 and bucket() == 600 - reserved
    finish(lim, a, 5, 20)  # the real usage was smaller: the rest goes back
    assert bucket() == 600 - 25
    # A request whose reservation does not fit is refused, and its request slot goes back.
    before = lim.local[(API_KEY, "req")].level(clock.now)
    with pytest.raises(Exception) as exc:
        lim(request(key, max_tokens=570))
    assert exc.value.status == 429 and exc.value.type == "tokens" and int(exc.value.headers["Retry-After"]) >= 1
    assert lim.local[(API_KEY, "req")].level(clock.now) == before
    # A cache hit costs no tokens at all.
    c = request(key, max_tokens=100)
    lim(c)
    finish(lim, c, 0, 0, cache="hit")
    assert bucket() == 600 - 25


def relay(r, batch):
    """What the pipeline does with each streamed batch: the upstream stream counts its characters as it
    checks it, the outcome gets them, then the meter is told."""
    chars = check_chunks(batch, "test")
    r.outcome.content_chars += chars
    r.meter(chars)


def test_stream_is_charged_while_it_runs():
    lim, key, clock = local_limiter(RATE_LIMIT_TOKENS_PER_MINUTE="600", RATE_LIMIT_DEFAULT_MAX_TOKENS="10")
    r = request(key, stream=True)
    lim(r)
    assert r.meter is not None and r.outcome.reserved_tokens == prompt_estimate(r.body) + 10
    start = lim.local[(API_KEY, "tok")].level(clock.now)
    chunk = {"choices": [{"index": 0, "delta": {"content": "word " * 40}}]}  # 200 characters: ~50 tokens
    relay(r, [chunk])
    mid = lim.local[(API_KEY, "tok")].level(clock.now)
    assert start - mid == pytest.approx(50 - 10, abs=1)  # beyond the reservation, counted before the end
    relay(r, [chunk] * 4)
    assert start - lim.local[(API_KEY, "tok")].level(clock.now) == pytest.approx(250 - 10, abs=1)
    # The provider's real usage settles it: 300 completion tokens in all.
    finish(lim, r, prompt_estimate(r.body), 300)
    assert 600 - lim.local[(API_KEY, "tok")].level(clock.now) == prompt_estimate(r.body) + 300


def test_cut_stream_without_usage_pays_what_was_metered():
    lim, key, clock = local_limiter(RATE_LIMIT_TOKENS_PER_MINUTE="6000", RATE_LIMIT_DEFAULT_MAX_TOKENS="1000")
    r = request(key, stream=True)
    lim(r)
    relay(r, [{"choices": [{"index": 0, "delta": {"content": "x" * 80}}]}])  # 20 tokens, then the client left
    finish(lim, r, 0, 0)  # no usage reported
    assert 6000 - lim.local[(API_KEY, "tok")].level(clock.now) == prompt_estimate(r.body) + 20  # not the 1000 reserved


def test_cache_hit_weight():
    lim, key, clock = local_limiter(RATE_LIMIT_BURST="10", RATE_LIMIT_CACHE_HIT_WEIGHT="0.25")
    for _ in range(4):
        r = request(key)
        lim(r)
        finish(lim, r, 0, 0, cache="hit")
    assert lim.local[(API_KEY, "req")].level(clock.now) == pytest.approx(10 - 4 * 0.25)


# --- through the ASGI app, against the simulator -------------------------------------------


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess() as s:
        yield s


async def call(gw: Gateway, body: dict) -> tuple[int, dict[str, str], bytes]:
    sent: dict = {"parts": []}
    done = False

    async def receive():
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
        await asyncio.Event().wait()

    async def send(msg):
        if msg["type"] == "http.response.start":
            sent["status"] = msg["status"]
            sent["headers"] = {k.decode(): v.decode() for k, v in msg["headers"]}
        else:
            sent["parts"].append(msg.get("body", b""))

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": AUTH, "query_string": b""}
    await asyncio.wait_for(gw(scope, receive, send), 10)
    return sent["status"], sent["headers"], b"".join(sent["parts"])


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is machine learning?"}]}


async def test_429_in_openais_shape_with_headers(sim):
    gw = Gateway(load_settings(simulator_env(sim.base_url) | {
        "GATEWAY_API_KEYS": API_KEY, "GATEWAY_CACHE": "off", "RATE_LIMIT_REQUESTS_PER_MINUTE": "60",
        "RATE_LIMIT_BURST": "2", "RATE_LIMIT_TOKENS_PER_MINUTE": "100000",
    }))
    try:
        status, h, _ = await call(gw, CHAT)
        assert status == 200
        assert h["x-ratelimit-limit-requests"] == "60" and h["x-ratelimit-remaining-requests"] == "1"
        assert h["x-ratelimit-reset-requests"].endswith("s") and h["x-ratelimit-limit-tokens"] == "100000"
        assert int(h["x-ratelimit-remaining-tokens"]) < 100000 and "x-ratelimit-reset-tokens" in h
        status, h, _ = await call(gw, {**CHAT, "stream": True})
        assert status == 200 and h["x-ratelimit-remaining-requests"] == "0"
        status, h, body = await call(gw, CHAT)
        assert status == 429 and int(h["retry-after"]) >= 1 and h["x-ratelimit-remaining-requests"] == "0"
        err = orjson.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == "rate_limit_exceeded"
    finally:
        await gw.router.close()


async def test_limits_off(sim):
    gw = Gateway(load_settings(simulator_env(sim.base_url) | {
        "GATEWAY_API_KEYS": API_KEY, "GATEWAY_CACHE": "off", "RATE_LIMIT_BURST": "1", "RATE_LIMIT_ENABLED": "false",
    }))
    try:
        for _ in range(3):
            status, h, _ = await call(gw, CHAT)
            assert status == 200 and "x-ratelimit-limit-requests" not in h
    finally:
        await gw.router.close()


async def test_a_running_stream_is_charged_through_the_pipeline(sim):
    """The pipeline meters each streamed batch: the bucket drops past the reservation before the stream ends."""
    sim.configure("*", tokens_per_second=200, response_tokens=400)
    gw = Gateway(load_settings(simulator_env(sim.base_url) | {
        "GATEWAY_API_KEYS": API_KEY, "GATEWAY_CACHE": "off", "RATE_LIMIT_TOKENS_PER_MINUTE": "60",
        "RATE_LIMIT_TOKEN_BURST": "100000", "RATE_LIMIT_DEFAULT_MAX_TOKENS": "10",
    }))  # a refill of one token a second: what was spent stays visible
    try:
        task = asyncio.ensure_future(call(gw, {**CHAT, "stream": True}))
        await asyncio.sleep(1.0)  # about 200 of the 400 words streamed
        assert not task.done()
        bucket = gw.limiter.local[(API_KEY, "tok")]
        spent = 100000 - bucket.level(gw.limiter.clock())
        assert spent > 10 + 50  # the reservation (prompt + 10), and already far past it
        status, _, _ = await task
        assert status == 200
        spent = 100000 - bucket.level(gw.limiter.clock())
        assert spent >= 400 - 5  # settled with the provider's usage at the end (less a few seconds of refill)
    finally:
        sim.reset()
        await gw.router.close()
