"""``/ws`` over real sockets: a real gateway process (Granian), the simulator as provider, the websockets client."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from gateway.simulator import SimulatorProcess
from tests.harness import API_KEY, running_gateway, simulator_env

MESSAGES = [{"role": "user", "content": "What is machine learning?"}]


@pytest.fixture(scope="module")
def simulator():
    with SimulatorProcess() as s:
        yield s


@pytest.fixture
def sim(simulator):
    """The module's simulator, back to its start-up settings for each test."""
    simulator.reset()
    return simulator


@pytest.fixture(scope="module")
def gw(simulator):
    env = simulator_env(simulator.base_url) | {
        "GATEWAY_CACHE": "off", "RATE_LIMIT_ENABLED": "false",
        "GATEWAY_WS_MAX_IN_FLIGHT": "3", "GATEWAY_MAX_BODY_BYTES": "65536", "WORKER_CONNECTIONS": "700",
    }
    with running_gateway(env) as g:
        g.ws = g.url.replace("http://", "ws://") + "/ws"
        yield g


def connect(gw, key: str | None = API_KEY, how: str = "header", **kw):
    if how == "header":
        return websockets.connect(gw.ws, additional_headers={"Authorization": f"Bearer {key}"}, **kw)
    return websockets.connect(gw.ws + f"?api_key={key}", **kw)


async def send(ws, **msg) -> None:
    await ws.send(orjson.dumps(msg).decode())


async def recv(ws, timeout: float = 10) -> dict:
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def collect(ws, ids: set[str]) -> dict[str, dict]:
    """Read until every id is done (or errored): {id: {"content", "done", "error"}}."""
    out = {i: {"content": "", "done": None, "error": None} for i in ids}
    pending = set(ids)
    while pending:
        m = await recv(ws)
        if m["type"] == "ping":
            continue
        entry = out[m["id"]]
        if m["type"] == "delta":
            entry["content"] += m.get("content", "")
        elif m["type"] == "done":
            entry["done"] = m
            pending.discard(m["id"])
        elif m["type"] == "error":
            entry["error"] = m["error"]
            pending.discard(m["id"])
    return out


async def closed_code(ws) -> int:
    with pytest.raises(ConnectionClosed) as exc:
        for _ in range(10):
            await recv(ws)
    return exc.value.rcvd.code


@pytest.mark.parametrize("how", ["header", "query", "message"])
async def test_each_auth_mode_streams_a_chat(gw, how):
    async with connect(gw, how=how if how != "message" else "none", key=API_KEY if how != "message" else "") as ws:
        if how == "message":
            await send(ws, type="auth", api_key=API_KEY)
        await send(ws, type="chat", id="a1", model="gpt-4o-mini", messages=MESSAGES)
        got = (await collect(ws, {"a1"}))["a1"]
    assert got["error"] is None and got["content"].startswith("Simulated openai reply")
    done = got["done"]
    assert done["finish_reason"] == "stop" and done["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("how", ["header", "query", "message"])
async def test_bad_key_closes_1008(gw, how):
    if how == "message":
        async with websockets.connect(gw.ws) as ws:
            await send(ws, type="auth", api_key="wrong")
            assert await closed_code(ws) == 1008
        async with websockets.connect(gw.ws) as ws:  # anything but auth first
            await send(ws, type="chat", id="x", model="gpt-4o-mini", messages=MESSAGES)
            assert await closed_code(ws) == 1008
        return
    async with connect(gw, key="wrong", how=how) as ws:
        assert await closed_code(ws) == 1008


def _usage_requests(gw) -> int:
    import urllib.request

    req = urllib.request.Request(gw.url + "/v1/usage", headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return sum(row["requests"] for row in orjson.loads(r.read())["data"])


async def test_finish_hook_counts_ws_requests(gw):
    before = _usage_requests(gw)
    async with connect(gw) as ws:
        await send(ws, type="chat", id="u", model="gpt-4o-mini", messages=MESSAGES)
        assert (await collect(ws, {"u"}))["u"]["done"] is not None
    # The usage report reads the ledger, which a writer task fills in batches (every 250 ms).
    deadline = asyncio.get_running_loop().time() + 5
    while _usage_requests(gw) == before and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert _usage_requests(gw) == before + 1


async def test_multiplexed_requests(gw, sim):
    sim.configure("*", tokens_per_second=300, response_tokens=40)
    async with connect(gw) as ws:
        for i in range(3):
            await send(ws, type="chat", id=f"m{i}", model="gpt-4o-mini",
                       messages=[{"role": "user", "content": f"Question number {i}"}])
        got = await collect(ws, {"m0", "m1", "m2"})
    for i in range(3):
        assert got[f"m{i}"]["done"] is not None and f"Question number {i}" in got[f"m{i}"]["content"]


async def test_cancel_closes_the_upstream_request(gw, sim):
    sim.configure("*", tokens_per_second=20, response_tokens=400)
    async with connect(gw) as ws:
        await send(ws, type="chat", id="slow", model="gpt-4o-mini", messages=MESSAGES)
        await send(ws, type="chat", id="other", model="gpt-4o-mini", messages=MESSAGES)
        seen = set()
        while seen != {"slow", "other"}:  # both streaming
            m = await recv(ws)
            assert m["type"] in ("delta", "ping"), m
            seen.add(m["id"])
        assert sim.stats()["total"]["in_flight"] == 2
        await send(ws, type="cancel", id="slow")
        while True:
            m = await recv(ws)
            if m["type"] == "done" and m["id"] == "slow":
                break
        assert m["finish_reason"] == "cancelled"
        deadline = time.monotonic() + 5
        while sim.stats()["total"]["in_flight"] != 1:  # the simulator saw its request closed; "other" still runs
            assert time.monotonic() < deadline, sim.stats()
            await asyncio.sleep(0.05)
        await send(ws, type="cancel", id="other")


async def test_bad_messages_answer_errors_and_keep_the_socket(gw, sim):  # sim: the default pace, not a slow one left by the test before
    async with connect(gw) as ws:
        await ws.send("{not json")
        m = await recv(ws)
        assert m["type"] == "error" and m["id"] is None and m["error"]["code"] == "invalid_json"
        await send(ws, type="launch", id="z")
        m = await recv(ws)
        assert m["type"] == "error" and m["id"] == "z" and m["error"]["param"] == "type"
        await send(ws, type="chat", id="bad", model="gpt-4o-mini", messages=[])  # the REST validation, as an error frame
        m = await recv(ws)
        assert m == {"type": "error", "id": "bad", "error": m["error"]} and m["error"]["param"] == "messages"
        await send(ws, type="chat", id="ok", model="gpt-4o-mini", messages=MESSAGES)
        assert (await collect(ws, {"ok"}))["ok"]["done"] is not None


async def test_oversize_message_closes_1009(gw):
    async with connect(gw, max_size=None) as ws:
        await send(ws, type="chat", id="big", model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 70_000}])
        assert await closed_code(ws) == 1009


async def test_in_flight_cap(gw, sim):
    sim.configure("*", tokens_per_second=20, response_tokens=200)
    async with connect(gw) as ws:
        for i in range(4):
            await send(ws, type="chat", id=f"c{i}", model="gpt-4o-mini", messages=MESSAGES)
        while True:
            m = await recv(ws)
            if m["type"] == "error":
                break
        assert m["id"] == "c3" and m["error"]["code"] == "too_many_in_flight"
        for i in range(3):
            await send(ws, type="cancel", id=f"c{i}")


async def test_500_concurrent_streaming_connections(gw, sim):
    sim.configure("*", tokens_per_second=50, response_tokens=30)
    errors: list = []

    async def one(i: int) -> None:
        try:
            async with connect(gw, open_timeout=30) as ws:
                await send(ws, type="chat", id=str(i), model="gpt-4o-mini", messages=MESSAGES)
                got = (await asyncio.wait_for(collect(ws, {str(i)}), 60))[str(i)]
                if got["done"] is None or not got["content"]:
                    errors.append(got)
        except Exception as exc:  # noqa: BLE001 - counted: the assertion says what failed
            errors.append(repr(exc))

    await asyncio.gather(*(one(i) for i in range(500)))
    assert errors == []


def _rss_kb(pid: int) -> int:
    """Resident memory of the gateway process and its workers."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return total


async def test_slow_reader_pauses_the_upstream_and_memory_stays_bounded(gw, sim):
    # 8 choices of a million words: ~60 MB of answer, more than the loopback socket buffers can hold,
    # as fast as the simulator can send it. The client reads one frame and stops reading.
    sim.configure("*", response_tokens=1_000_000, chunk_tokens=200)
    async with connect(gw, max_queue=1, max_size=None) as ws:
        await send(ws, type="chat", id="firehose", model="gpt-4o-mini", messages=MESSAGES, n=8)
        assert (await recv(ws))["type"] == "delta"
        before = _rss_kb(gw.proc.pid)
        samples = []
        for _ in range(8):
            await asyncio.sleep(0.5)
            samples.append(_rss_kb(gw.proc.pid))
        grown = max(samples) - before
        # kB, against ~60,000 kB of answer: the relay waits on each frame, so the rest waits upstream
        # (in the simulator and the sockets), not in the gateway.
        assert grown < 8_000, (before, samples)
        await send(ws, type="cancel", id="firehose")
        deadline = time.monotonic() + 20
        while True:  # reading again: the rest of what was in the pipes, then done (cancelled)
            m = await recv(ws, timeout=max(1.0, deadline - time.monotonic()))
            if m["type"] == "done":
                break
        assert m["finish_reason"] == "cancelled"
    deadline = time.monotonic() + 5
    while sim.stats()["total"]["in_flight"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def small(simulator):
    """A gateway with tight limits: two connections, one request a minute, 2 s keepalive."""
    env = simulator_env(simulator.base_url) | {
        "GATEWAY_CACHE": "off", "WORKER_CONNECTIONS": "2", "RATE_LIMIT_BURST": "1", "KEEPALIVE_TIMEOUT": "2",
        "RATE_LIMIT_REQUESTS_PER_MINUTE": "1",
        "RATE_LIMIT_ENABLED": "true",
    }
    with running_gateway(env) as g:
        g.ws = g.url.replace("http://", "ws://") + "/ws"
        yield g


async def test_keepalive_timeout(small):
    async with connect(small) as ws:  # silent: closed after KEEPALIVE_TIMEOUT (2 s)
        t0 = time.monotonic()
        assert await closed_code(ws) == 1001
        assert 1.5 <= time.monotonic() - t0 < 5
    async with connect(small) as ws:  # pings keep it open past the timeout
        for _ in range(6):
            await send(ws, type="ping")
            assert (await recv(ws))["type"] == "pong"
            await asyncio.sleep(0.6)
        assert ws.close_code is None  # 3.6 s open, past the 2 s timeout


async def test_connection_cap_and_limits_over_ws(small):
    await asyncio.sleep(0.5)  # the keepalive test's connections are counted out
    async with connect(small) as a, connect(small):
        async with connect(small) as c:  # the third: refused cleanly
            assert await closed_code(c) == 1013
        await send(a, type="chat", id="1", model="gpt-4o-mini", messages=MESSAGES)
        assert (await collect(a, {"1"}))["1"]["done"] is not None
        await send(a, type="chat", id="2", model="gpt-4o-mini", messages=MESSAGES)  # past the burst of 1
        err = (await collect(a, {"2"}))["2"]["error"]
        assert err["code"] == "rate_limit_exceeded" and set(err) == {"message", "type", "param", "code"}
        await send(a, type="ping")  # the socket stays open after a 429
        assert (await recv(a))["type"] == "pong"
