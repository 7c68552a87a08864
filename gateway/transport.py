"""Upstream HTTP: one small interface, two pooled implementations.

aiohttp's HTTP/1.1 keep-alive pool is the default because it measured an order
of magnitude faster than httpx here (README, "Benchmarks"); httpx stays
available per provider for HTTP/2 (``transport = "httpx"``). Each provider gets
one long-lived client, created in the app's lifespan and closed on shutdown.

Failures that never produced an HTTP answer become GatewayErrors here:
connection problems 502 (``upstream_unreachable``), time-outs 504
(``upstream_timeout``); the router retries both.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Protocol

import aiohttp
import httpx

from gateway.errors import GatewayError
from gateway.providers.base import UpstreamRequest


def unreachable(url: str, why: object) -> GatewayError:
    return GatewayError(502, f"Upstream {_host(url)} is unreachable: {why}", "api_error", None, "upstream_unreachable")


def timed_out(url: str, seconds: float) -> GatewayError:
    return GatewayError(
        504, f"Upstream {_host(url)} did not answer within {seconds:.3g}s.", "api_error", None, "upstream_timeout"
    )


def too_large(url: str, limit: int) -> GatewayError:
    return GatewayError(
        502, f"Upstream {_host(url)} sent an answer over the limit of {limit} bytes.", "api_error", None, "upstream_too_large"
    )


def _host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0]


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: rare from these providers; fall back to our own backoff


class UpstreamResponse(Protocol):
    status: int
    retry_after: float | None

    async def read(self) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    async def close(self) -> None: ...


class Transport(Protocol):
    async def send(self, req: UpstreamRequest, timeout: float) -> tuple[int, bytes, float | None]:
        """Status, body and Retry-After (seconds) of a non-streaming call; a 502 past ``req.max_bytes``."""

    async def open(self, req: UpstreamRequest, timeout: float) -> UpstreamResponse:
        """Start a streaming call; returns once the status line and headers are in."""

    async def close(self) -> None: ...


# --- aiohttp -----------------------------------------------------------------


class _AiohttpStream:
    __slots__ = ("_resp", "status", "retry_after", "_url", "_idle")

    def __init__(self, resp: aiohttp.ClientResponse, url: str, idle: float) -> None:
        self._resp = resp
        self._url = url
        self._idle = idle
        self.status = resp.status
        self.retry_after = retry_after_seconds(resp.headers.get("Retry-After"))

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


class AiohttpTransport:
    def __init__(self, max_connections: int, keepalive_timeout: float) -> None:
        self._limit = max_connections
        self._keepalive = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=0, keepalive_timeout=self._keepalive, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",), raise_for_status=False
            )
        return self._session

    def _timeout(self, seconds: float, stream: bool) -> aiohttp.ClientTimeout:
        # Rounded so a handful of objects are reused instead of one per request.
        key = round(seconds, 1) if not stream else -round(seconds, 1)
        t = self._timeouts.get(key)
        if t is None:
            if len(self._timeouts) > 4096:
                self._timeouts.clear()
            secs = max(abs(key), 0.05)
            # A stream's deadline covers time to headers; after that each read may idle that long.
            t = aiohttp.ClientTimeout(total=None, connect=secs, sock_read=secs) if stream else aiohttp.ClientTimeout(total=secs)
            self._timeouts[key] = t
        return t

    async def send(self, req: UpstreamRequest, timeout: float) -> tuple[int, bytes, float | None]:
        try:
            async with self.session.request(
                req.method, req.url, data=req.body, headers=req.headers, timeout=self._timeout(timeout, False)
            ) as resp:
                body = await _aiohttp_body(resp, req.url, req.max_bytes)
                return resp.status, body, retry_after_seconds(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            raise timed_out(req.url, timeout) from None
        except aiohttp.ClientError as exc:
            raise unreachable(req.url, _why(exc)) from None
        except OSError as exc:
            raise unreachable(req.url, exc.strerror or exc) from None

    async def open(self, req: UpstreamRequest, timeout: float) -> _AiohttpStream:
        try:
            resp = await self.session.request(
                req.method, req.url, data=req.body, headers=req.headers, timeout=self._timeout(timeout, True)
            )
        except asyncio.TimeoutError:
            raise timed_out(req.url, timeout) from None
        except aiohttp.ClientError as exc:
            raise unreachable(req.url, _why(exc)) from None
        except OSError as exc:
            raise unreachable(req.url, exc.strerror or exc) from None
        return _AiohttpStream(resp, req.url, timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _aiohttp_body(resp: aiohttp.ClientResponse, url: str, limit: int | None) -> bytes:
    """The whole body, read in one go when its declared length is under ``limit``, else counted as it comes."""
    length = resp.content_length
    if limit is None or (length is not None and length <= limit and "Content-Encoding" not in resp.headers):
        return await resp.read()
    if length is not None and "Content-Encoding" not in resp.headers:
        raise too_large(url, limit)
    parts, size = [], 0
    async for data in resp.content.iter_any():  # decompressed: a small compressed body may be large
        size += len(data)
        if size > limit:
            raise too_large(url, limit)
        parts.append(data)
    return b"".join(parts)


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    return exc.__class__.__name__


# --- httpx (HTTP/2) ------------------------------------------------------------


class _HttpxStream:
    __slots__ = ("_resp", "status", "retry_after", "_url", "_idle")

    def __init__(self, resp: httpx.Response, url: str, idle: float) -> None:
        self._resp = resp
        self._url = url
        self._idle = idle
        self.status = resp.status_code
        self.retry_after = retry_after_seconds(resp.headers.get("retry-after"))

    async def read(self) -> bytes:
        try:
            return await self._resp.aread()
        except httpx.HTTPError:
            return b""

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.aiter_raw():
                yield data
        except httpx.TimeoutException:
            raise timed_out(self._url, self._idle) from None
        except httpx.HTTPError as exc:
            raise unreachable(self._url, f"stream broke: {exc.__class__.__name__}") from None

    async def close(self) -> None:
        await self._resp.aclose()


class HttpxTransport:
    def __init__(self, max_connections: int, keepalive_timeout: float) -> None:
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_timeout,
        )
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(http2=True, limits=self._limits, timeout=None)
        return self._client

    async def send(self, req: UpstreamRequest, timeout: float) -> tuple[int, bytes, float | None]:
        max_bytes = req.max_bytes
        request = self.client.build_request(req.method, req.url, content=req.body, headers=req.headers, timeout=timeout)
        try:
            resp = await self.client.send(request, stream=True)
            try:
                parts, size = [], 0
                async for data in resp.aiter_bytes():
                    size += len(data)
                    if max_bytes is not None and size > max_bytes:
                        raise too_large(req.url, max_bytes)
                    parts.append(data)
            finally:
                await resp.aclose()
        except httpx.TimeoutException:
            raise timed_out(req.url, timeout) from None
        except httpx.HTTPError as exc:
            raise unreachable(req.url, exc.__class__.__name__) from None
        return resp.status_code, b"".join(parts), retry_after_seconds(resp.headers.get("retry-after"))

    async def open(self, req: UpstreamRequest, timeout: float) -> _HttpxStream:
        request = self.client.build_request(
            req.method, req.url, content=req.body, headers=req.headers, timeout=timeout
        )
        try:
            resp = await self.client.send(request, stream=True)
        except httpx.TimeoutException:
            raise timed_out(req.url, timeout) from None
        except httpx.HTTPError as exc:
            raise unreachable(req.url, exc.__class__.__name__) from None
        return _HttpxStream(resp, req.url, timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def make_transport(kind: str, max_connections: int, keepalive_timeout: float) -> Transport:
    if kind == "httpx":
        return HttpxTransport(max_connections, keepalive_timeout)
    return AiohttpTransport(max_connections, keepalive_timeout)
