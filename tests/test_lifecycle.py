"""The request lifecycle: one finish call per request on every exit path, the Outcome it sees.

The gateway's ASGI app runs in this process so each exit path can be driven
exactly (a client that leaves after two chunks, a task cancelled as on
shutdown); its upstream is the real simulator over loopback.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from gateway.config import load_settings
from gateway.http.asgi import Gateway
from gateway.simulator import SimulatorProcess
from tests.harness import API_KEY, simulator_env

AUTH = [(b"authorization", f"Bearer {API_KEY}".encode()), (b"content-type", b"application/json")]


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess() as s:
        yield s


@pytest.fixture(autouse=True)
def _reset(sim):
    sim.reset()
    yield


def settings(sim, **env):
    return load_settings(simulator_env(sim.base_url) | {
        "GATEWAY_API_KEYS": API_KEY, "GATEWAY_CACHE": "off", "GATEWAY_STREAM_PING_SECONDS": "0.1", **env,
    })


class Recorder:
    def __init__(self, gw: Gateway) -> None:
        self.calls: list = []
        gw.finish.add(lambda req, out: self.calls.append((req, out)))

    def one(self):
        assert len(self.calls) == 1, f"finish ran {len(self.calls)} times"
        return self.calls[0]


@pytest.fixture
async def gw(sim):
    gw = Gateway(settings(sim))
    yield gw, Recorder(gw)
    await gw.router.close()


class Exchange:
    """One ASGI request: what was sent back, and a switch to make the client leave."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.left = asyncio.Event()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] = []
        self._read = False

    async def receive(self) -> dict:
        if not self._read:
            self._read = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, msg: dict) -> None:
        if msg["type"] == "http.response.start":
            self.status = msg["status"]
            self.headers = {k.decode(): v.decode() for k, v in msg["headers"]}
        else:
            self.parts.append(msg.get("body", b""))

    @property
    def text(self) -> bytes:
        return b"".join(self.parts)


def scope(method: str = "POST", path: str = "/v1/chat/completions", headers=AUTH) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": list(headers), "query_string": b""}


def chat(model: str = "gpt-4o-mini", **extra) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "What is machine learning?"}], **extra})


async def run(gw: Gateway, ex: Exchange, **kw) -> Exchange:
    await asyncio.wait_for(gw(scope(**kw), ex.receive, ex.send), 60)
    return ex


async def test_rest_answer(gw):
    app, rec = gw
    ex = await run(app, Exchange(chat()))
    assert ex.status == 200
    req, out = rec.one()
    assert req is not None and out.surface == "rest" and out.status == 200 and out.error_type is None
    assert out.deployment.provider == "openai" and out.attempts == 1 and out.key_name is not None
    assert out.prompt_tokens > 0 and out.completion_tokens > 0 and out.upstream_seconds > 0
    assert ex.headers["x-request-id"] == out.request_id and ex.headers["x-gateway-deployment"] == out.deployment.name


async def test_sse_answer(gw):
    app, rec = gw
    ex = await run(app, Exchange(chat(stream=True, stream_options={"include_usage": True})))
    assert ex.status == 200 and ex.text.endswith(b"data: [DONE]\n\n")
    _, out = rec.one()
    assert out.surface == "sse" and out.status == 200 and out.first_chunk_seconds is not None
    assert out.completion_tokens > 0 and not out.client_gone


@pytest.mark.parametrize("body, headers, status, kind", [
    (b"{not json", AUTH, 400, "client"),
    (chat("no-such-model"), AUTH, 404, "client"),
    (chat(), [(b"authorization", b"Bearer wrong")], 401, "policy"),
    (chat(), AUTH + [(b"x-gateway-timeout", b"never")], 400, "client"),
])
async def test_refused_before_any_byte(gw, body, headers, status, kind):
    app, rec = gw
    ex = await run(app, Exchange(body), headers=headers)
    assert ex.status == status and orjson.loads(ex.text)["error"]["message"]
    req, out = rec.one()
    assert req is None and out.status == status and out.error_type == kind
    assert ex.headers["x-request-id"] == out.request_id and float(ex.headers["x-gateway-overhead-ms"]) >= 0


async def test_provider_error_before_any_byte(gw, sim):
    app, rec = gw
    sim.configure("openai", mode="error", error_status=500)
    ex = await run(app, Exchange(chat(stream=True)))
    assert ex.status == 502
    _, out = rec.one()
    assert out.status == 502 and out.error_type == "provider" and out.attempts >= 1


async def test_stream_cut_by_provider_after_headers(gw, sim):
    """The provider drops the connection mid-stream: the client got 200, then an error event and [DONE]."""
    app, rec = gw
    sim.configure("openai", tokens_per_second=20, response_tokens=200)
    task = asyncio.ensure_future(run(app, Exchange(chat(stream=True))))
    await asyncio.sleep(0.4)
    sim.configure("*", mode="refuse")  # every provider refusing: the simulator drops its open connections
    ex = await task
    assert ex.status == 200 and b'"error"' in ex.text and ex.text.endswith(b"data: [DONE]\n\n")
    _, out = rec.one()
    assert out.status == 200 and out.error_type == "provider" and out.error_code and not out.client_gone


@pytest.mark.parametrize("stream", [False, True])
async def test_client_leaves(gw, sim, stream):
    """The client goes away: its upstream request is closed (the simulator sees it end) and finish runs once."""
    app, rec = gw
    sim.configure("openai", latency_ms=0 if stream else 3000, tokens_per_second=10, response_tokens=100)
    ex = Exchange(chat(stream=stream))
    task = asyncio.ensure_future(run(app, ex))
    await asyncio.sleep(0.4)
    assert sim.stats()["providers"]["openai"]["in_flight"] == 1
    ex.left.set()
    await task
    _, out = rec.one()
    assert out.client_gone and out.status == (200 if stream else 0)
    assert ex.status == (200 if stream else None)  # a plain answer never started: nothing was sent
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and sim.stats()["providers"]["openai"]["in_flight"]:
        await asyncio.sleep(0.05)
    assert sim.stats()["providers"]["openai"]["in_flight"] == 0


async def test_cancelled_on_shutdown(gw, sim):
    app, rec = gw
    sim.configure("openai", latency_ms=3000)
    task = asyncio.ensure_future(app(scope(), Exchange(chat()).receive, Exchange(b"").send))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _, out = rec.one()
    assert out.status == 0 and not out.client_gone


async def test_other_routes_and_wrong_method(gw):
    app, rec = gw
    ex = await run(app, Exchange(b""), method="GET", path="/v1/models")
    assert ex.status == 200 and ex.headers["x-request-id"]
    ex = await run(app, Exchange(b""), method="GET")  # GET on the chat path
    assert ex.status == 405
    assert [(o.route, o.status) for _, o in rec.calls] == [("/v1/models", 200), ("/v1/chat/completions", 405)]


async def test_a_failing_listener_is_counted_not_seen(gw):
    app, rec = gw

    def broken(req, out):
        raise RuntimeError("listener bug")

    app.finish.listeners.insert(0, broken)
    ex = await run(app, Exchange(chat()))
    assert ex.status == 200 and orjson.loads(ex.text)["choices"]
    assert app.finish.failures == 1 and len(rec.calls) == 1  # the next listener still ran


async def test_reload_keeps_the_snapshot_a_request_started_with(gw, sim, tmp_path, monkeypatch):
    app, rec = gw
    sim.configure("openai", latency_ms=500)
    old = app.snapshot
    task = asyncio.ensure_future(run(app, Exchange(chat())))
    await asyncio.sleep(0.1)
    monkeypatch.setenv("GATEWAY_API_KEYS", "another-key")
    for k, v in simulator_env(sim.base_url).items():
        monkeypatch.setenv(k, v)
    app.reload_config()
    assert app.snapshot is not old and API_KEY not in app.snapshot.keys
    ex = await task
    assert ex.status == 200  # admitted under the old snapshot, answered under it
    ex = await run(app, Exchange(chat()))
    assert ex.status == 401  # new requests see the new keys


async def test_streamed_cache_hits_carry_x_cache_even_when_a_ping_goes_first(sim):
    """A ping due during the cache lookup must not send the stream's headers before x-cache is known."""
    app = Gateway(settings(sim, GATEWAY_CACHE="on", GATEWAY_STREAM_PING_SECONDS="0.001"))
    rec = Recorder(app)
    await app.cache.start()
    try:
        q = "How does photosynthesis work?"
        assert (await run(app, Exchange(chat(messages=[{"role": "user", "content": q}])))).status == 200
        await app.cache.drain()
        exact = await run(app, Exchange(chat(stream=True, messages=[{"role": "user", "content": q}])))
        assert exact.headers["x-cache"] == "hit" and exact.text.endswith(b"data: [DONE]\n\n")
        para = await run(app, Exchange(chat(stream=True, messages=[{"role": "user", "content": "Explain how photosynthesis works."}])))
        assert para.headers["x-cache"] == "semantic-hit" and "x-cache-similarity" in para.headers
        assert [o.cache for _, o in rec.calls] == ["miss", "hit", "semantic-hit"]
        assert all(o.status == 200 for _, o in rec.calls)
    finally:
        await app.cache.close()
        await app.router.close()



def test_request_ids_are_unique_within_and_across_forked_workers():
    import os

    from gateway.http.chat import request_id

    ids = {request_id(None) for _ in range(1000)}
    assert len(ids) == 1000
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a Granian worker is a fork of the process that imported the app
        os.write(w, request_id(None).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 100).decode()
    assert child not in ids and child[:20] != next(iter(ids))[:20]
    assert request_id("client-given-id") == "client-given-id"


@pytest.mark.parametrize(
    "raw, want",
    [
        ([], {}),
        ([(b"authorization", b"Bearer k"), (b"x-a", b"1")], {"authorization": "Bearer k", "x-a": "1"}),
        ([(b"x-a", b"1"), (b"x-a", b"2")], {"x-a": "2"}),  # a repeated name: the last wins, as before
        ([(b"x-a", b"caf\xe9"), (b"x-b", b"")], {"x-a": "caf\u00e9", "x-b": ""}),  # latin-1; an empty value
        ([(b"x-a", b"one\ntwo"), (b"x-b", b"3")], {"x-a": "one\ntwo", "x-b": "3"}),  # a line feed: pair by pair
    ],
)
def test_scope_headers_decode_every_pair(raw, want):
    from gateway.http.chat import scope_headers

    assert scope_headers({"headers": raw}) == want


async def test_a_plain_request_whose_client_leaves_at_once_is_cancelled_too(gw, sim):
    """The watch on a plain answer starts late (relay.LAZY_WATCH_SECONDS), but a client that left before it still
    cancels the upstream request once it does."""
    app, rec = gw
    sim.configure("openai", latency_ms=3000)
    ex = Exchange(chat())
    task = asyncio.ensure_future(run(app, ex))
    await asyncio.sleep(0.02)
    ex.left.set()
    await task
    _, out = rec.one()
    assert out.client_gone and ex.status is None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and sim.stats()["providers"]["openai"]["in_flight"]:
        await asyncio.sleep(0.05)
    assert sim.stats()["providers"]["openai"]["in_flight"] == 0
