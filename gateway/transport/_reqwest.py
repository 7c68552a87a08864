"""pyreqwest: Rust's reqwest/hyper behind the same interface, HTTP/1.1 or HTTP/2 (ALPN) over rustls.

The request is written, the answer parsed and the pool kept in Rust, off the event loop: per call the
loop only hands over the headers and body and wakes for the result (issue 16 measured a bare
forwarder at about twice aiohttp's non-streaming rate with it).

Not the default, because a cancelled call is not ended: pyreqwest 0.15.1 drops the tokio task of a
cancelled send without aborting it, so the upstream keeps the request until it answers (a stream: until
its headers come) or the call's own time-out; no Python API reaches a sent request. The README's
transport section and tests/test_transport.py (a strict xfail) have the details.
"""

from __future__ import annotations

import asyncio
import types
from datetime import timedelta
from typing import AsyncIterator

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError, RequestTimeoutError
from pyreqwest.request import StreamRequest
from pyreqwest.response import Response

from gateway.providers.base import UpstreamRequest
from gateway.transport._base import OpenStream, retry_after_seconds, timed_out, too_large, unreachable

# pyreqwest reads a streamed body ahead into a buffer of this many bytes and returns from the send (and
# from each later read) only once it is full or the body has ended: 64 KiB by default, which holds a whole
# short SSE answer back until its end. 0: each network read is handed over as it arrives (measured: first
# chunk at +1 ms instead of the whole stream's duration; see tests/test_transport.py).
READ_AHEAD = 0


def _why(exc: PyreqwestError) -> str:
    """The innermost cause ("Connection refused", "invalid peer certificate: UnknownIssuer"), like aiohttp's."""
    causes = (getattr(exc, "details", None) or {}).get("causes") or []
    text = causes[-1]["message"] if causes else exc.__class__.__name__
    return text.split(" (os error", 1)[0]


@types.coroutine
def _resume(step, first):
    """Finish a pyreqwest read whose first step, taken by hand, returned ``first`` (the future it waits on).

    What ``await`` would have done from there: the task waits on that future, and what the task sends or
    throws in (a cancellation included) goes on to the read.
    """
    out = first
    while True:
        try:
            sent = yield out
        except GeneratorExit:
            step.close()
            raise
        except BaseException as exc:
            try:
                out = step.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                out = step.send(sent)
            except StopIteration as done:
                return done.value


class _ReqwestStream(OpenStream):
    __slots__ = ("_request",)
    _resp: Response

    def __init__(self, request: StreamRequest, resp: Response, url: str, idle: float) -> None:
        super().__init__(resp, resp.status, resp.get_header("retry-after"), url, idle)
        self._request = request

    async def read(self) -> bytes:
        try:
            return bytes(await self._resp.body_reader.bytes())
        except PyreqwestError:
            return b""

    async def chunks(self) -> AsyncIterator[bytes]:
        # pyreqwest hands over one network read (an HTTP/1.1 chunk, an HTTP/2 DATA frame: one SSE event as
        # providers write them) per read_chunk() and has no "what has arrived" call. So each read is
        # stepped by hand: those that complete at once are joined into one piece (one SSE decode and one
        # relay downstream for the lot, as aiohttp's readany gives), and the first that would wait is
        # kept, already started, and awaited once the piece is out: nothing is held back.
        reader = self._resp.body_reader
        loop = asyncio.get_running_loop()
        idle = self._idle
        parts: list = []
        read = reader.read_chunk()  # read(n) would wait for n bytes
        try:
            # Each wait may last ``idle`` seconds (aiohttp's sock_read); the timer runs only while a read
            # waits, never while the consumer relays a piece.
            async with asyncio.timeout(None) as deadline:
                while True:
                    try:
                        pending = read.send(None)
                    except StopIteration as done:
                        data = done.value
                    else:
                        if parts:
                            yield b"".join(parts)
                            parts = []
                        deadline.reschedule(loop.time() + idle)
                        data = await _resume(read, pending)
                        deadline.reschedule(None)
                    if data is None:
                        read = None
                        if parts:
                            yield b"".join(parts)
                        return
                    parts.append(data)
                    read = reader.read_chunk()
        except TimeoutError:
            raise timed_out(self._url, idle) from None
        except PyreqwestError as exc:
            raise unreachable(self._url, f"stream broke: {exc.__class__.__name__}") from None
        finally:
            if read is not None:
                read.close()  # a read started by hand and left (the consumer stopped): drop it in Rust

    async def close(self) -> None:
        # Leaving the request's context before the body is read drops the connection, which cancels
        # the upstream generation (hyper does not pool a connection with an unread body).
        request, self._request = self._request, None
        if request is not None:
            await request.__aexit__(None, None, None)


class ReqwestTransport:
    def __init__(self, max_connections: int, keepalive_timeout: float, ca_bundle: str | None = None) -> None:
        self._limit = max_connections
        self._keepalive = keepalive_timeout
        self._ca_pem: bytes | None = None
        if ca_bundle is not None:
            with open(ca_bundle, "rb") as f:
                self._ca_pem = f.read()
        self._client: Client | None = None
        self._timeouts: dict[float, timedelta] = {}

    @property
    def client(self) -> Client:
        if self._client is None:
            builder = (
                ClientBuilder()
                .max_connections(self._limit)
                .pool_max_idle_per_host(self._limit)
                .pool_idle_timeout(timedelta(seconds=self._keepalive))
                .http2(True)  # offered through ALPN on TLS; plain http stays HTTP/1.1
                .referer(False)
                .error_for_status(False)
            )
            if self._ca_pem is not None:
                builder = builder.add_root_certificate_pem(self._ca_pem)
            self._client = builder.build()
        return self._client

    def _timeout(self, seconds: float) -> timedelta:
        # Rounded so a handful of objects are reused instead of one per request.
        key = round(seconds, 1)
        t = self._timeouts.get(key)
        if t is None:
            if len(self._timeouts) > 4096:
                self._timeouts.clear()
            t = self._timeouts[key] = timedelta(seconds=max(key, 0.05))
        return t

    async def send(self, req: UpstreamRequest, timeout: float) -> tuple[int, bytes, float | None]:
        request = (
            self.client.request(req.method, req.url)
            .headers(req.headers)
            .body_bytes(req.body)
            .timeout(self._timeout(timeout))
            .build()
        )
        try:
            resp = await request.send()
            limit = req.max_bytes
            if limit is not None:
                # A declared length over the limit is refused before reading; an undeclared one is
                # read whole by pyreqwest, then measured (its buffered API has no cap of its own).
                declared = resp.get_header("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise too_large(req.url, limit)
            body = await resp.bytes()
        except RequestTimeoutError:
            raise timed_out(req.url, timeout) from None
        except PyreqwestError as exc:
            raise unreachable(req.url, _why(exc)) from None
        if limit is not None and len(body) > limit:
            raise too_large(req.url, limit)
        return resp.status, bytes(body), retry_after_seconds(resp.get_header("retry-after"))

    async def open(self, req: UpstreamRequest, timeout: float) -> _ReqwestStream:
        # No total timeout on a stream: the deadline covers time to headers, then each read (chunks()).
        request = (
            self.client.request(req.method, req.url)
            .headers(req.headers)
            .body_bytes(req.body)
            .streamed_read_buffer_limit(READ_AHEAD)
            .build_streamed()
        )
        try:
            async with asyncio.timeout(timeout):
                resp = await request.__aenter__()
        except TimeoutError:  # cancelling the send drops the request in Rust: nothing to close
            raise timed_out(req.url, timeout) from None
        except PyreqwestError as exc:
            raise unreachable(req.url, _why(exc)) from None
        return _ReqwestStream(request, resp, req.url, timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
