"""The floors a Python gateway is measured against: bare Granian forwarders, and a constant-JSON app.

No auth, validation, routing or translation: a forwarder passes the request body to the upstream
and the answer back. ``--interface asgi`` is the shape of our hot path; ``rsgi`` is Granian's
native interface (fewer thread hand-offs). ``CLIENT`` picks the upstream client the way
``GATEWAY_TRANSPORT`` does for the gateway: ``aiohttp`` (default), ``reqwest`` (pyreqwest) or
``httpx``. Used by ``gateway_bench.py`` to show, in the same run, how much of the added latency any
Granian proxy on that client pays before the gateway does any work. ``const_app`` answers a fixed
chat.completion without any upstream: the ceiling of one Granian worker.

A ``text/event-stream`` answer is relayed as its bytes arrive (one ASGI ``more_body`` message /
RSGI ``send_bytes`` per network read), which is the floor for time to first chunk.

    UPSTREAM=http://127.0.0.1:9000/v1/chat/completions CLIENT=reqwest granian --interface asgi \
        --loop uvloop benchmarks.bare_forwarder:asgi_app

``UPSTREAM_CA_BUNDLE``: a PEM file of extra CAs for an ``https`` upstream (the gateway's setting).
"""

from __future__ import annotations

import os
import ssl
from typing import AsyncIterator

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:9000/v1/chat/completions")
CLIENT = os.environ.get("CLIENT", "aiohttp")
CA = os.environ.get("UPSTREAM_CA_BUNDLE") or None
_HEADERS = {"content-type": "application/json", "authorization": "Bearer bare"}
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_client = None


class _Aiohttp:
    def __init__(self) -> None:
        import aiohttp

        ctx = ssl.create_default_context(cafile=CA) if CA else True
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000, ssl=ctx))

    async def post(self, body: bytes) -> tuple[int, bool, object]:
        resp = await self.session.post(UPSTREAM, data=body, headers=_HEADERS)
        return resp.status, resp.content_type == "text/event-stream", resp

    async def read(self, resp) -> bytes:
        return await resp.read()

    async def chunks(self, resp) -> AsyncIterator[bytes]:
        async for chunk in resp.content.iter_any():
            yield chunk
        resp.release()


class _Reqwest:
    def __init__(self) -> None:
        from pyreqwest.client import ClientBuilder

        b = ClientBuilder().max_connections(1000).pool_max_idle_per_host(1000).http2(True)
        if CA:
            with open(CA, "rb") as f:
                b = b.add_root_certificate_pem(f.read())
        self.client = b.build()

    async def post(self, body: bytes) -> tuple[int, bool, object]:
        # Read-ahead 0: pyreqwest's default buffer holds a stream back until 64 KiB or its end.
        req = self.client.post(UPSTREAM).headers(_HEADERS).body_bytes(body).streamed_read_buffer_limit(0).build_streamed()
        resp = await req.__aenter__()
        return resp.status, (resp.get_header("content-type") or "").startswith("text/event-stream"), (req, resp)

    async def read(self, pair) -> bytes:
        req, resp = pair
        data = bytes(await resp.body_reader.bytes())
        await req.__aexit__(None, None, None)
        return data

    async def chunks(self, pair) -> AsyncIterator[bytes]:
        req, resp = pair
        reader = resp.body_reader
        while (chunk := await reader.read_chunk()) is not None:
            yield bytes(chunk)
        await req.__aexit__(None, None, None)


class _Httpx:
    def __init__(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        self.client = httpx.AsyncClient(http2=True, limits=limits, verify=ssl.create_default_context(cafile=CA) if CA else True)

    async def post(self, body: bytes) -> tuple[int, bool, object]:
        resp = await self.client.send(self.client.build_request("POST", UPSTREAM, content=body, headers=_HEADERS), stream=True)
        return resp.status_code, resp.headers.get("content-type", "").startswith("text/event-stream"), resp

    async def read(self, resp) -> bytes:
        return await resp.aread()

    async def chunks(self, resp) -> AsyncIterator[bytes]:
        async for chunk in resp.aiter_raw():
            yield chunk
        await resp.aclose()


def _upstream():
    global _client
    if _client is None:
        _client = {"aiohttp": _Aiohttp, "reqwest": _Reqwest, "httpx": _Httpx}[CLIENT]()
    return _client


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    msg = await receive()
    body = msg.get("body", b"")
    while msg.get("more_body"):
        msg = await receive()
        body += msg.get("body", b"")
    client = _upstream()
    status, sse, resp = await client.post(body)
    if sse:
        await send({"type": "http.response.start", "status": status, "headers": _SSE})
        async for chunk in client.chunks(resp):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    data = await client.read(resp)
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": data})


class RSGIApp:
    async def __rsgi__(self, scope, protocol):
        body = await protocol()
        client = _upstream()
        status, sse, resp = await client.post(body)
        if sse:
            transport = protocol.response_stream(status, [("content-type", "text/event-stream")])
            async for chunk in client.chunks(resp):
                await transport.send_bytes(chunk)
            return
        protocol.response_bytes(status, [("content-type", "application/json")], await client.read(resp))


rsgi_app = RSGIApp()

# A chat.completion of the simulator's size (~750 bytes), answered without any upstream.
_CONST = (
    b'{"id":"chatcmpl-const","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"' + b"word " * 100 + b'"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":100,"total_tokens":112}}'
)


async def const_app(scope, receive, send):
    if scope["type"] != "http":
        return
    msg = await receive()
    while msg.get("more_body"):
        msg = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": _JSON})
    await send({"type": "http.response.body", "body": _CONST})
