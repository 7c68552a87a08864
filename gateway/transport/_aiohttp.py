"""aiohttp: the HTTP/1.1 keep-alive pool (the default; see the package docstring)."""

from __future__ import annotations

import asyncio
import ssl
from typing import AsyncIterator, Awaitable

import aiohttp

from gateway.errors import GatewayError
from gateway.providers.base import UpstreamRequest
from gateway.timers import Timers
from gateway.transport._base import OpenStream, retry_after_seconds, ssl_context, timed_out, too_large, unreachable


class _AiohttpStream(OpenStream):
    __slots__ = ()
    _resp: aiohttp.ClientResponse

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return b""

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                # readany returns whatever has arrived: relays chunks as they come, never buffers.
                data = await content.readany()
                if not data:
                    return
                yield data
        except asyncio.TimeoutError:
            raise timed_out(self._url, self._idle) from None
        except aiohttp.ClientError as exc:
            raise unreachable(self._url, f"stream broke: {exc.__class__.__name__}") from None

    async def close(self) -> None:
        # Closing (not releasing) drops the connection, which cancels the upstream generation.
        self._resp.close()


class _Deadline:
    """A call's deadline on the coarse timers: it cancels the calling task, and ``send`` maps that to a time-out.

    aiohttp's own ``total`` time-out was a loop timer handle, a TimeoutHandle and a TimerContext entered and
    left per call: 2.7 % of a non-streaming request's instructions (callgrind, same run). Up to one tick
    (50 ms) late, which a request deadline of seconds does not mind."""

    __slots__ = ("task", "fired")

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()


# ``ClientSession.request`` wraps ``_request``'s coroutine in ``_RequestContextManager``, a subscripted
# generic whose call then tries to set ``__orig_class__`` on a slotted object and swallows the
# AttributeError: ~4k instructions a call (callgrind). Both call sites await the response and release it
# themselves, so they call the coroutine; a release without ``_request`` falls back to the public call.
_REQUEST = getattr(aiohttp.ClientSession, "_request", None) or aiohttp.ClientSession.request


class AiohttpTransport:
    def __init__(self, max_connections: int, keepalive_timeout: float, ca_bundle: str | None = None) -> None:
        self._limit = max_connections
        self._keepalive = keepalive_timeout
        self._ssl: ssl.SSLContext | bool = ssl_context(ca_bundle) or True
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._timers: Timers | None = None  # made with the session: both belong to the loop they start on

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=0,
                keepalive_timeout=self._keepalive,
                ttl_dns_cache=300,
                ssl=self._ssl,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",), raise_for_status=False
            )
            self._timers = Timers()
        return self._session

    def _timeout(self, seconds: float, stream: bool) -> aiohttp.ClientTimeout:
        # Rounded so a handful of objects are reused instead of one per request.
        key = round(seconds, 1) if not stream else -round(seconds, 1)
        t = self._timeouts.get(key)
        if t is None:
            if len(self._timeouts) > 4096:
                self._timeouts.clear()
            secs = max(abs(key), 0.05)
            # A stream's deadline covers time to headers; after that each read may idle that long. A plain
            # call's whole deadline is send's own (_Deadline); aiohttp bounds only a new connection's set-up.
            t = aiohttp.ClientTimeout(total=None, connect=secs, sock_read=secs) if stream else aiohttp.ClientTimeout(total=None, connect=secs)
            self._timeouts[key] = t
        return t

    async def send(self, req: UpstreamRequest, timeout: float) -> tuple[int, bytes, float | None]:
        session = self._session
        if session is None:  # the property makes it; read directly, a call less per request
            session = self.session
        timers = self._timers
        deadline = _Deadline(asyncio.current_task())
        slot = timers.arm(max(timeout, 0.0), deadline)
        try:
            # Awaited, as ``open`` does, not entered: ``async with`` ran four coroutines more per call (its own
            # and the response's __aenter__ and __aexit__). Releasing is what leaving it did for the pool.
            resp = await _REQUEST(
                session, req.method, req.url, data=req.body, headers=req.headers, timeout=self._timeout(timeout, False)
            )
            try:
                body = await _body(resp, req.url, req.max_bytes)
            finally:
                resp.release()
            retry_after = resp.headers.get("Retry-After")  # rarely sent: no call to parse its absence
            return resp.status, body, retry_after_seconds(retry_after) if retry_after else None
        except asyncio.CancelledError:
            # Ours only if the deadline fired and no other cancel (the client gone, shutdown) is on top of it.
            if deadline.fired and deadline.task.uncancel() == 0:
                raise timed_out(req.url, timeout) from None
            raise
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _failed(exc, req.url, timeout) from None
        finally:
            if not deadline.fired:
                timers.disarm(slot, deadline)

    async def open(self, req: UpstreamRequest, timeout: float) -> _AiohttpStream:
        try:
            resp = await _REQUEST(
                self.session, req.method, req.url, data=req.body, headers=req.headers, timeout=self._timeout(timeout, True)
            )
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _failed(exc, req.url, timeout) from None
        return _AiohttpStream(resp, resp.status, resp.headers.get("Retry-After"), req.url, timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _failed(exc: BaseException, url: str, timeout: float) -> GatewayError:
    if isinstance(exc, asyncio.TimeoutError):  # before OSError: it is one
        return timed_out(url, timeout)
    if isinstance(exc, aiohttp.ClientError):
        return unreachable(url, _why(exc))
    return unreachable(url, getattr(exc, "strerror", None) or exc)


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    return exc.__class__.__name__


def _body(resp: aiohttp.ClientResponse, url: str, limit: int | None) -> Awaitable[bytes]:
    """The whole body, read in one go when its declared length is under ``limit``, else counted as it comes.

    A plain function returning ``resp.read()``'s coroutine for the usual answer, not a coroutine around it:
    one coroutine made and resumed less per call."""
    length = resp.content_length
    if limit is None or (length is not None and length <= limit and "Content-Encoding" not in resp.headers):
        return resp.read()
    if length is not None and "Content-Encoding" not in resp.headers:
        raise too_large(url, limit)
    return _counted(resp, url, limit)


async def _counted(resp: aiohttp.ClientResponse, url: str, limit: int) -> bytes:
    parts, size = [], 0
    async for data in resp.content.iter_any():  # decompressed: a small compressed body may be large
        size += len(data)
        if size > limit:
            raise too_large(url, limit)
        parts.append(data)
    return b"".join(parts)
