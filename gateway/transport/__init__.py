"""Upstream HTTP: one small interface, three pooled implementations.

aiohttp's HTTP/1.1 keep-alive pool is the default; httpx (HTTP/2) and pyreqwest (Rust
reqwest/hyper, HTTP/1.1 or HTTP/2) are selectable per provider (``transport = "httpx"`` or
``"reqwest"``, or ``GATEWAY_TRANSPORT``). The README's "Benchmarks" section has each one's figures.
Each provider gets one long-lived client, created in the app's lifespan and closed on shutdown.

Failures that never produced an HTTP answer become GatewayErrors here, the same for every
transport: connection problems, TLS failures included, 502 (``upstream_unreachable``), time-outs
504 (``upstream_timeout``); the router retries both.
"""

from __future__ import annotations

from gateway.transport._aiohttp import AiohttpTransport, _AiohttpStream, _why
from gateway.transport._base import (
    Transport,
    UpstreamResponse,
    _host,
    retry_after_seconds,
    ssl_context,
    timed_out,
    too_large,
    unreachable,
)
from gateway.transport._httpx import HttpxTransport, _HttpxStream
from gateway.transport._reqwest import ReqwestTransport

__all__ = [
    "AiohttpTransport",
    "HttpxTransport",
    "ReqwestTransport",
    "Transport",
    "UpstreamResponse",
    "make_transport",
    "retry_after_seconds",
    "ssl_context",
    "timed_out",
    "too_large",
    "unreachable",
    "_AiohttpStream",
    "_HttpxStream",
    "_host",
    "_why",
]

_KINDS = {"aiohttp": AiohttpTransport, "httpx": HttpxTransport, "reqwest": ReqwestTransport}


def make_transport(kind: str, max_connections: int, keepalive_timeout: float, ca_bundle: str | None = None) -> Transport:
    """``ca_bundle``: a PEM file of extra CAs trusted for upstream TLS (``UPSTREAM_CA_BUNDLE``)."""
    return _KINDS.get(kind, AiohttpTransport)(max_connections, keepalive_timeout, ca_bundle)
