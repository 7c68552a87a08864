"""The floor a Python gateway is measured against: a bare Granian + aiohttp forwarder.

No auth, validation, routing or translation: it passes the request body to the
upstream and the answer back. ``--interface asgi`` is the shape of our hot path;
``rsgi`` is Granian's native interface (fewer thread hand-offs). Used by
``gateway_bench.py --bare`` to show, in the same run, how much of the added
latency any Granian + aiohttp proxy pays before the gateway does any work.

A ``text/event-stream`` answer is relayed as its bytes arrive
(``resp.content.iter_any()`` -> one ASGI ``more_body`` message / RSGI
``send_bytes`` per read), which is the floor for time to first chunk.

    UPSTREAM=http://127.0.0.1:9000/v1/chat/completions granian --interface asgi --loop uvloop \
        benchmarks.bare_forwarder:asgi_app
"""

from __future__ import annotations

import os

import aiohttp

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9000/v1/chat/completions")
_HEADERS = {"content-type": "application/json", "authorization": "Bearer bare"}
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_session: aiohttp.ClientSession | None = None


def _client() -> aiohttp.ClientSession:
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
    return _session


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    msg = await receive()
    body = msg.get("body", b"")
    while msg.get("more_body") and len(body) != int(dict(scope["headers"]).get(b"content-length", b"-1")):
        msg = await receive()
        body += msg.get("body", b"")
    async with _client().post(UPSTREAM, data=body, headers=_HEADERS) as resp:
        if resp.content_type == "text/event-stream":
            await send({"type": "http.response.start", "status": resp.status, "headers": _SSE})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        data = await resp.read()
    await send({"type": "http.response.start", "status": resp.status, "headers": _JSON})
    await send({"type": "http.response.body", "body": data})


class RSGIApp:
    async def __rsgi__(self, scope, protocol):
        body = await protocol()
        async with _client().post(UPSTREAM, data=body, headers=_HEADERS) as resp:
            if resp.content_type == "text/event-stream":
                transport = protocol.response_stream(resp.status, [("content-type", "text/event-stream")])
                async for chunk in resp.content.iter_any():
                    await transport.send_bytes(chunk)
                return
            data = await resp.read()
        protocol.response_bytes(resp.status, [("content-type", "application/json")], data)


rsgi_app = RSGIApp()
