"""The gateway end to end: real HTTP on 127.0.0.1, the simulator as every provider."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from tests.harness import ADMIN_KEY, API_KEY, running_gateway, simulator_env

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "google": "gemini-2.0-flash"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def gateway(sim):
    # These tests are about providers: the cache (tests/test_cache_gateway.py) would answer repeats.
    env = simulator_env(sim.base_url) | {"GATEWAY_STREAM_PING_SECONDS": "0.2", "GATEWAY_CACHE": "off"}
    with running_gateway(env) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _reset(sim):
    sim.reset()
    yield


def chat_body(provider: str, text: str = "What is machine learning?", **extra) -> dict:
    return {"model": MODELS[provider], "messages": [{"role": "user", "content": text}], **extra}


async def sse_payloads(resp: aiohttp.ClientResponse) -> list[bytes]:
    raw = await resp.read()
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    return [e[len(b"data: "):] for e in events if e.startswith(b"data: ")]


@pytest.mark.parametrize("provider", list(MODELS))
async def test_non_streaming_each_provider(gateway, http, provider):
    body = chat_body(provider, max_tokens=50)
    body["messages"].insert(0, {"role": "system", "content": "You are terse."})
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        data = orjson.loads(await r.read())
        assert r.headers["x-gateway-provider"] == provider
        assert r.headers["x-request-id"].startswith("req_")
        assert float(r.headers["x-gateway-overhead-ms"]) >= 0
    assert data["object"] == "chat.completion"
    msg = data["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert "What is machine learning" in msg["content"]
    assert data["choices"][0]["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("provider", list(MODELS))
async def test_streaming_each_provider(gateway, http, provider):
    body = chat_body(provider, stream=True, stream_options={"include_usage": True})
    async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        assert r.headers["x-gateway-provider"] == provider
        payloads = await sse_payloads(r)
    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "What is machine learning" in text
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0


async def test_stream_without_include_usage_has_no_usage_chunk(gateway, sim, http):
    sim.configure("openai", tokens_per_second=400, response_tokens=12)  # 12 chunks, paced: several reads
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("openai", stream=True), headers=AUTH) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
        payloads = await sse_payloads(r)
    assert len(payloads) >= 3 and payloads[-1] == b"[DONE]"
    assert b"[DONE]" not in payloads[:-1]
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["choices"] for c in chunks)
    assert not any(c.get("usage") for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert "What is machine learning" in text
    assert sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) == 12  # one per token
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["stop"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"  # nothing after the finish but [DONE]


async def test_max_tokens_gives_length(gateway, http):
    for provider in MODELS:
        async with http.post(gateway.url + "/v1/chat/completions", json=chat_body(provider, max_tokens=3), headers=AUTH) as r:
            data = orjson.loads(await r.read())
        assert data["choices"][0]["finish_reason"] == "length", provider
        assert data["usage"]["completion_tokens"] <= 3


async def test_request_id_is_echoed(gateway, http):
    headers = AUTH | {"x-request-id": "client-id-42"}
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("openai"), headers=headers) as r:
        assert r.headers["x-request-id"] == "client-id-42"
    async with http.post(gateway.url + "/v1/chat/completions", json={}, headers=headers) as r:
        assert r.status == 400 and r.headers["x-request-id"] == "client-id-42"


# --- bad input: always a 4xx in OpenAI's error shape ---------------------------------------


def assert_openai_error(status: int, data: bytes, expected_status: int) -> dict:
    assert status == expected_status, data
    err = orjson.loads(data)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    return err


BAD = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b"", 400, None),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    (b'{"model": "gpt-4o-mini"}', 400, "messages"),
    (b'{"model": "gpt-4o-mini", "messages": []}', 400, "messages"),
    (b'{"model": "gpt-4o-mini", "messages": "hi"}', 400, "messages"),
    (b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages[0].role"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "temperature"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}', 400, "temperature"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400, "max_tokens"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": true}', 400, "max_tokens"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400, "stream"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stop": [1]}', 400, "stop"),
    (b'{"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hi"}], "n": 2}', 400, "n"),
    (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
]


@pytest.mark.parametrize("raw,status,param", BAD)
async def test_bad_input(gateway, http, raw, status, param):
    headers = AUTH | {"content-type": "application/json"}
    async with http.post(gateway.url + "/v1/chat/completions", data=raw, headers=headers) as r:
        err = assert_openai_error(r.status, await r.read(), status)
    assert err["param"] == param


async def test_wrong_content_type(gateway, http):
    headers = AUTH | {"content-type": "text/plain"}
    async with http.post(gateway.url + "/v1/chat/completions", data=b"hello", headers=headers) as r:
        assert_openai_error(r.status, await r.read(), 415)


async def test_oversize_body_is_413(gateway, http):
    big = orjson.dumps(chat_body("openai", "x" * (1_100_000)))
    async with http.post(gateway.url + "/v1/chat/completions", data=big, headers=AUTH | {"content-type": "application/json"}) as r:
        err = assert_openai_error(r.status, await r.read(), 413)
    assert err["code"] == "request_too_large"


async def test_oversize_chunked_body_is_413(gateway, http):
    async def gen():
        for _ in range(40):
            yield b"x" * 50_000

    async with http.post(gateway.url + "/v1/chat/completions", data=gen(), headers=AUTH | {"content-type": "application/json"}) as r:
        assert_openai_error(r.status, await r.read(), 413)


@pytest.mark.parametrize(
    "headers,code",
    [({}, "missing_api_key"), ({"Authorization": "Bearer wrong"}, "invalid_api_key"), ({"Authorization": "Basic abc"}, "missing_api_key")],
)
async def test_auth(gateway, http, headers, code):
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("openai"), headers=headers) as r:
        err = assert_openai_error(r.status, await r.read(), 401)
    assert err["code"] == code
    async with http.get(gateway.url + "/v1/models", headers=headers) as r:
        assert_openai_error(r.status, await r.read(), 401)


async def test_unknown_route_and_method(gateway, http):
    async with http.get(gateway.url + "/v1/nothing", headers=AUTH) as r:
        assert_openai_error(r.status, await r.read(), 404)
    async with http.get(gateway.url + "/v1/chat/completions", headers=AUTH) as r:
        assert_openai_error(r.status, await r.read(), 405)


# --- provider failures map to OpenAI errors -------------------------------------------------


@pytest.mark.parametrize("provider", list(MODELS))
async def test_provider_5xx_becomes_502(gateway, sim, http, provider):
    sim.configure(provider, mode="error", error_status=500)
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body(provider), headers=AUTH) as r:
        err = assert_openai_error(r.status, await r.read(), 502)
    assert err["type"] == "api_error"


@pytest.mark.parametrize("provider", list(MODELS))
async def test_provider_4xx_stays_4xx(gateway, sim, http, provider):
    sim.configure(provider, mode="error", error_status=400)
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body(provider), headers=AUTH) as r:
        assert_openai_error(r.status, await r.read(), 400)


async def test_provider_timeout_becomes_504(gateway, sim, http):
    sim.configure("openai", mode="timeout")
    headers = AUTH | {"x-gateway-timeout": "0.5"}
    t0 = time.monotonic()
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("openai"), headers=headers) as r:
        err = assert_openai_error(r.status, await r.read(), 504)
    assert time.monotonic() - t0 < 3
    assert err["code"] == "upstream_timeout"


async def test_streaming_provider_error_before_first_byte_is_json(gateway, sim, http):
    sim.configure("anthropic", mode="error", error_status=500)
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("anthropic", stream=True), headers=AUTH) as r:
        assert r.headers["content-type"].startswith("application/json")
        assert_openai_error(r.status, await r.read(), 502)


async def test_stream_is_relayed_as_it_arrives_and_pings_while_waiting(gateway, sim, http):
    # 5 tokens per second, one token per chunk, and a first token 0.6 s away: the gateway
    # must ping (interval 0.2 s in this fixture) and deliver chunks one by one, not at the end.
    sim.configure("openai", latency_ms=600, tokens_per_second=5, response_tokens=4, chunk_tokens=1)
    arrivals: list[tuple[float, bytes]] = []
    t0 = time.monotonic()
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("openai", stream=True), headers=AUTH) as r:
        assert r.status == 200
        async for line in r.content:
            if line.strip():
                arrivals.append((time.monotonic() - t0, line.strip()))
    pings = [t for t, line in arrivals if line.startswith(b":")]
    data = [t for t, line in arrivals if line.startswith(b"data: {")]
    assert pings and pings[0] < 0.5
    assert len(data) >= 4
    assert data[-1] - data[1] > 0.4  # spread over time, as produced


async def test_stream_pings_in_a_wait_between_chunks(gateway, sim, http):
    # Chunks 0.5 s apart with a 0.2 s ping interval: the keepalive's one timer per stream must
    # re-arm for the later waits, not only the wait for the first chunk.
    sim.configure("openai", latency_ms=0, tokens_per_second=2, response_tokens=3, chunk_tokens=1)
    lines: list[bytes] = []
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("openai", stream=True), headers=AUTH) as r:
        assert r.status == 200
        async for line in r.content:
            if line.strip():
                lines.append(line.strip())
    first = next(i for i, line in enumerate(lines) if line.startswith(b"data: {"))
    last = max(i for i, line in enumerate(lines) if line.startswith(b"data: {"))
    between = [line for line in lines[first:last] if line.startswith(b":")]
    assert len(between) >= 2, lines  # at least one ping in each of the two 0.5 s gaps
    assert lines[-1] == b"data: [DONE]"


async def test_client_disconnect_cancels_upstream(gateway, sim, http):
    sim.configure("openai", tokens_per_second=10, response_tokens=200, chunk_tokens=1)
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("openai", stream=True), headers=AUTH) as r:
        assert r.status == 200
        await r.content.readline()
        await asyncio.sleep(0.3)
        assert sim.stats()["providers"]["openai"]["in_flight"] == 1
    # Leaving the block closed our connection mid-stream.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and sim.stats()["providers"]["openai"]["in_flight"] != 0:
        await asyncio.sleep(0.1)
    assert sim.stats()["providers"]["openai"]["in_flight"] == 0


# --- other endpoints ------------------------------------------------------------------------


async def test_models_health_ready_usage(gateway, http):
    async with http.get(gateway.url + "/v1/models", headers=AUTH) as r:
        ids = [m["id"] for m in orjson.loads(await r.read())["data"]]
    assert {"gpt-4o-mini", "claude-3-5-haiku-latest", "gemini-2.0-flash"} <= set(ids)
    async with http.get(gateway.url + "/health") as r:
        assert r.status == 200
    async with http.get(gateway.url + "/ready") as r:
        ready = orjson.loads(await r.read())
    assert r.status == 200 and ready["providers"]["openai"] == "configured"

    async def report(url: str, key: str) -> dict[tuple[str, str], dict]:
        async with http.get(gateway.url + url, headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 200, await r.text()
            return {(x["key"], x["model"]): x for x in orjson.loads(await r.read())["data"]}

    # Other tests in this module use the same gateway: compare the rows before and after one request.
    ours = (API_KEY[:8] + "…", MODELS["google"])  # keys from GATEWAY_API_KEYS are named by their start
    zero = {"requests": 0, "cached_requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    before = (await report("/v1/usage?all=1", ADMIN_KEY)).get(ours, zero)
    async with http.post(gateway.url + "/v1/chat/completions", json=chat_body("google"), headers=AUTH) as r:
        usage = orjson.loads(await r.read())["usage"]
    mine = await report("/v1/usage", API_KEY)
    assert {k for k, _ in mine} == {ours[0]}  # a key sees its own rows only
    everyone = await report("/v1/usage?all=1", ADMIN_KEY)
    assert everyone[ours] == mine[ours]
    after = everyone[ours]
    assert {f: after[f] - before[f] for f in zero} == {
        "requests": 1, "cached_requests": 0, "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"], "total_tokens": usage["total_tokens"],
    }
    async with http.get(gateway.url + "/v1/usage?all=1", headers=AUTH) as r:
        assert r.status == 403


async def test_every_response_names_its_request_and_overhead(gateway, http):
    checks = [
        ("GET", "/health", {}, None),
        ("GET", "/v1/models", AUTH, None),
        ("GET", "/v1/models", {}, None),  # 401
        ("GET", "/v1/nothing", AUTH, None),  # 404
        ("GET", "/v1/chat/completions", AUTH, None),  # 405
        ("POST", "/v1/chat/completions", AUTH, {"model": "gpt-4o-mini"}),  # 400
        ("POST", "/v1/chat/completions", {}, chat_body("openai")),  # 401
        ("POST", "/v1/chat/completions", AUTH, chat_body("openai")),  # 200
    ]
    for method, path, headers, body in checks:
        t0 = time.perf_counter()
        async with http.request(method, gateway.url + path, headers=headers | {"x-request-id": "rid-7"}, json=body) as r:
            await r.read()
            wall_ms = (time.perf_counter() - t0) * 1000.0
            assert r.headers.get("x-request-id") == "rid-7", (method, path, r.status)
            assert r.headers.getall("x-request-id") == ["rid-7"], (method, path)
            assert len(r.headers.getall("x-gateway-overhead-ms")) == 1, (method, path)
            overhead = float(r.headers["x-gateway-overhead-ms"])
            assert 0 <= overhead < wall_ms, (method, path, r.status, overhead, wall_ms)


async def test_overhead_excludes_the_time_spent_waiting_on_the_provider(gateway, sim, http):
    """With a provider that takes 300 ms, the gateway's own share stays below the wall time minus those 300 ms:
    for an answer, a stream, and a provider error."""
    sim.configure("*", latency_ms=300)
    cases = [
        ("openai", {}, 200),
        ("anthropic", {"stream": True}, 200),
        ("google", {}, 502),
    ]
    for provider, extra, status in cases:
        if status == 502:
            sim.configure(provider, mode="error", error_status=500)
        t0 = time.perf_counter()
        async with http.post(gateway.url + "/v1/chat/completions", json=chat_body(provider, **extra), headers=AUTH) as r:
            await r.read()
            wall_ms = (time.perf_counter() - t0) * 1000.0
            assert r.status == status, provider
            overhead = float(r.headers["x-gateway-overhead-ms"])
        assert wall_ms >= 300, provider
        assert 0 <= overhead < wall_ms - 300, (provider, overhead, wall_ms)
