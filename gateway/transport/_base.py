"""What every transport shares: the interface and the errors for answers that never came."""

from __future__ import annotations

import ssl
from typing import AsyncIterator, Protocol

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


def ssl_context(ca_bundle: str | None, base: ssl.SSLContext | None = None) -> ssl.SSLContext | None:
    """The client's usual trust store plus ``ca_bundle`` (a private CA or a self-signed upstream).

    Added to, not replacing, the default roots: one gateway may reach a private endpoint and a
    public provider through the same pool.
    """
    if ca_bundle is None:
        return base
    ctx = base or ssl.create_default_context()
    ctx.load_verify_locations(cafile=ca_bundle)
    return ctx


class OpenStream:
    """What every client's open stream holds: its response, status and Retry-After, and what its errors name."""

    __slots__ = ("_resp", "status", "retry_after", "_url", "_idle")

    def __init__(self, resp, status: int, retry_after: str | None, url: str, idle: float) -> None:
        self._resp = resp
        self.status = status
        self.retry_after = retry_after_seconds(retry_after)
        self._url = url
        self._idle = idle


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
