"""A provider that misbehaves: wrong shapes, cut streams, comment-only streams, huge answers.

The gateway's ASGI app runs in this process (as in test_lifecycle.py); its
upstreams are real HTTP servers on loopback: a misbehaving one written here
(the simulator only ever answers well) and the real simulator behind it, so
a failover has somewhere to go.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.config import load_settings
from gateway.http.asgi import Gateway
from tests.harness import API_KEY, simulator_env
from tests.test_lifecycle import Exchange, Recorder, chat, run, sim  # noqa: F401  (sim: the module's simulator)


class BadUpstream:
    """An HTTP/1.1 server that answers every request with ``reply`` (raw bytes after the status line's
    headers), then, if ``trickle`` is set, keeps writing it every 0.1 s without ever ending."""

    def __init__(self) -> None:
        self.reply = b""
        self.content_type = b"application/json"
        self.trickle: bytes | None = None
        self.requests = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.requests += 1
                if self.trickle is not None:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + self.reply)
                    while True:
                        await writer.drain()
                        await asyncio.sleep(0.1)
                        writer.write(self.trickle)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: " + self.content_type
                    + b"\r\ncontent-length: %d\r\n\r\n" % len(self.reply) + self.reply
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def bad():
    b = BadUpstream()
    b.url = await b.start()
    yield b
    await b.close()


def _app(sim, bad: BadUpstream, tmp_path, fallback: bool = True, **env) -> Gateway:
    """Model group "g": the bad upstream first, the simulator second (priority order)."""
    good = f'{{ provider = "openai", model = "gpt-4o-mini", base_url = "{sim.base_url}/v1", name = "good" }}'
    second = f", {good}" if fallback else ""
    path = tmp_path / "gw.toml"
    path.write_text(
        "[models.g]\nstrategy = \"priority\"\nbreaker_failures = 100\ndeployments = [\n"
        f'  {{ provider = "openai", model = "m", base_url = "{bad.url}/v1", name = "bad" }}{second}\n]\n'
    )
    return Gateway(load_settings(simulator_env(sim.base_url) | {
        "GATEWAY_API_KEYS": API_KEY, "GATEWAY_CONFIG": str(path), "GATEWAY_STREAM_PING_SECONDS": "5", **env,
    }))


WRONG_SHAPES = [
    b'{"choices":[1,2]}',
    b'{"choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}],"usage":"lots"}',
    b'{"choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":"3","completion_tokens":1,"total_tokens":4}}',
    b'{"choices":[{"index":0,"message":"hello","finish_reason":"stop"}]}',
    b'{"choices":[]}',
]


@pytest.mark.parametrize("reply", WRONG_SHAPES)
async def test_wrong_shape_answer_fails_over_and_counts_against_the_breaker(sim, bad, tmp_path, reply):
    bad.reply = reply
    app = _app(sim, bad, tmp_path, GATEWAY_CACHE="off")
    rec = Recorder(app)
    try:
        ex = await run(app, Exchange(chat("g")))
        assert ex.status == 200, ex.text
        assert ex.headers["x-gateway-deployment"] == "good"
        _, out = rec.one()
        assert "bad (upstream_bad_response)" in out.failover
        health = {row["name"]: row for row in app.router.snapshot()}["bad"]
        assert health["total"]["failed"] == 1, health
    finally:
        await app.router.close()


@pytest.mark.parametrize("reply", WRONG_SHAPES[:1])
async def test_wrong_shape_answer_alone_is_a_502_in_openai_shape(sim, bad, tmp_path, reply):
    bad.reply = reply
    app = _app(sim, bad, tmp_path, fallback=False, GATEWAY_CACHE="off")
    try:
        ex = await run(app, Exchange(chat("g")))
        assert ex.status == 502
        assert orjson.loads(ex.text)["error"]["code"] == "upstream_bad_response"
    finally:
        await app.router.close()


def _sse(*events: bytes) -> bytes:
    return b"".join(b"data: " + e + b"\n\n" for e in events)


_CHUNK = b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[%s]}'
ROLE = _CHUNK % b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}'
WORD = _CHUNK % b'{"index":0,"delta":{"content":"half"},"finish_reason":null}'

BAD_STREAMS = [
    _sse(_CHUNK % b'{"index":0,"delta":"hello","finish_reason":null}'),  # delta a string
    _sse(_CHUNK % b"1"),  # a choice that is an integer
    _sse(_CHUNK % b'{"index":0,"delta":{"content":5},"finish_reason":null}'),  # content a number
    _sse(_CHUNK % b'{"index":0,"delta":{"content":"x"},"finish_reason":7}'),  # finish_reason a number
    _sse(_CHUNK % b'{"index":"0","delta":{"content":"x"},"finish_reason":null}'),  # index a string
    b'{"id":"x","object":"chat.completion","choices":[]}',  # a plain JSON body, not a stream
    b"",  # no event at all
]


@pytest.mark.parametrize("reply", BAD_STREAMS)
async def test_bad_stream_before_the_first_chunk_fails_over(sim, bad, tmp_path, reply):
    bad.reply = reply
    bad.content_type = b"text/event-stream"
    app = _app(sim, bad, tmp_path, GATEWAY_CACHE="off")
    rec = Recorder(app)
    try:
        ex = await run(app, Exchange(chat("g", stream=True)))
        assert ex.status == 200
        assert ex.headers["x-gateway-deployment"] == "good"
        assert ex.text.endswith(b"data: [DONE]\n\n") and b'"error"' not in ex.text
        _, out = rec.one()
        assert "bad (" in out.failover
    finally:
        await app.router.close()


async def test_cut_stream_after_the_first_chunk_is_an_error_event_and_not_cached(sim, bad, tmp_path):
    bad.content_type = b"text/event-stream"
    bad.reply = _sse(ROLE, WORD)  # no finish reason, no [DONE]
    app = _app(sim, bad, tmp_path, fallback=False, GATEWAY_CACHE="on")
    await app.cache.start()
    try:
        ex = await run(app, Exchange(chat("g", stream=True)))
        payloads = [p for p in ex.text.split(b"\n\n") if p.startswith(b"data: ")]
        last_event = orjson.loads(payloads[-2][len(b"data: "):])
        assert last_event["error"]["code"] == "upstream_stream_cut", ex.text
        assert payloads[-1] == b"data: [DONE]"
        await app.cache.drain()
        again = await run(app, Exchange(chat("g", stream=True)))
        assert again.headers["x-cache"] == "miss"
        assert bad.requests == 2
    finally:
        await app.cache.close()
        await app.router.close()


@pytest.mark.parametrize("first", [b"", _sse(ROLE)], ids=["before-first-chunk", "after-first-chunk"])
async def test_comments_alone_do_not_keep_a_stream_alive(sim, bad, tmp_path, first):
    bad.content_type = b"text/event-stream"
    bad.reply = first
    bad.trickle = b": keepalive\n\n"
    app = _app(sim, bad, tmp_path, fallback=False, GATEWAY_CACHE="off", REQUEST_TIMEOUT_SECONDS="1")
    try:
        t0 = asyncio.get_running_loop().time()
        ex = await run(app, Exchange(chat("g", stream=True)))
        took = asyncio.get_running_loop().time() - t0
        assert took < 3, took
        assert b"upstream_timeout" in ex.text
    finally:
        await app.router.close()


async def test_an_answer_over_the_size_cap_is_a_502_and_fails_over(sim, bad, tmp_path):
    bad.reply = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"' + b"x" * 20_000 + b'"}}]}'
    app = _app(sim, bad, tmp_path, GATEWAY_CACHE="off", GATEWAY_MAX_UPSTREAM_BYTES="10000")
    rec = Recorder(app)
    try:
        ex = await run(app, Exchange(chat("g")))
        assert ex.status == 200 and ex.headers["x-gateway-deployment"] == "good"
        assert "bad (upstream_too_large)" in rec.one()[1].failover
    finally:
        await app.router.close()


async def test_a_stream_event_over_the_size_cap_is_a_502_and_fails_over(sim, bad, tmp_path):
    bad.content_type = b"text/event-stream"
    bad.reply = b"data: " + b"x" * 5_000
    bad.trickle = b"x" * 5_000  # one line that never ends
    app = _app(sim, bad, tmp_path, GATEWAY_CACHE="off", GATEWAY_MAX_EVENT_BYTES="10000")
    rec = Recorder(app)
    try:
        ex = await run(app, Exchange(chat("g", stream=True)))
        assert ex.status == 200 and ex.headers["x-gateway-deployment"] == "good"
        assert "bad (upstream_too_large)" in rec.one()[1].failover
    finally:
        await app.router.close()
