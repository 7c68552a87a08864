"""httpx: HTTP/2 (multiplexed streams over one TLS connection) where the upstream offers it."""

from __future__ import annotations

import ssl
from typing import AsyncIterator

import httpx

from gateway.providers.base import UpstreamRequest
from gateway.transport._base import OpenStream, retry_after_seconds, ssl_context, timed_out, too_large, unreachable


class _HttpxStream(OpenStream):
    __slots__ = ()
    _resp: httpx.Response

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
    def __init__(self, max_connections: int, keepalive_timeout: float, ca_bundle: str | None = None) -> None:
        # httpx's own default roots (certifi), plus the bundle if one is set.
        self._verify: ssl.SSLContext | bool = ssl_context(ca_bundle, httpx.create_ssl_context()) if ca_bundle else True
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_timeout,
        )
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(http2=True, limits=self._limits, timeout=None, verify=self._verify)
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
        return _HttpxStream(resp, resp.status_code, resp.headers.get("retry-after"), req.url, timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
