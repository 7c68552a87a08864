"""Admission: the one stage that turns an inbound request into a ``ChatRequest``.

Every surface (REST, SSE, WebSocket) hands it the same ``Inbound``; every
client mistake surfaces here as an OpenAI-shaped 4xx, before the cache, the
router or a provider sees the request. The steps, in order:

    key → content type → body (size limit) → JSON → validation → model access
        → model group → limits → time-out override → cache controls

The key comes first so an unauthenticated caller learns nothing and costs
no body read. Limits (rate, tokens, budget) are the ``limits`` step: each
limiter is a callable registered at start-up that admits or raises a 429.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable

from gateway import embeddings
from gateway.auth import ApiKey, authenticate, check_model
from gateway.embeddings import KIND as EMBEDDINGS
from gateway.cache.controls import parse_controls
from gateway.errors import GatewayError, invalid
from gateway.pipeline.outcome import Outcome
from gateway.request import ChatRequest, parse_json, validate_chat

# limiter(request) → None to admit, or raises a GatewayError (429) to refuse; it may instead return an
# awaitable that does either (a budget shared through Redis), so a purely local limiter stays a plain call.
Limiter = Callable[[ChatRequest], Awaitable[None] | None]


@dataclass(slots=True)
class Inbound:
    """A request as any surface received it: headers (lower-case names) and a way to read the body."""

    headers: dict[str, str]
    read_body: Callable[[int], Awaitable[bytes]]  # read_body(limit) → bytes, or a 413 past the limit
    surface: str  # rest | ws (a REST request that asks to stream becomes sse)
    checks_content_type: bool = True  # a WebSocket message has no Content-Type
    kind: str = "chat"  # "chat" | "embeddings": what the path asks for


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"Request body exceeds the limit of {limit} bytes.", "invalid_request_error", None, "request_too_large"
    )


class Admission:
    def __init__(self, router, cache) -> None:
        self.router = router
        self.cache = cache
        self.limiters: list[Limiter] = []
        self.virtual_keys = None  # token → ApiKey | None: the database's keys (gateway/keys/cache.py), when on

    async def admit(self, snap, inbound: Inbound, outcome: Outcome) -> ChatRequest:
        headers = inbound.headers
        key = authenticate(snap.keys, headers.get("authorization"), self.virtual_keys)
        outcome.key_name = key.name
        if inbound.checks_content_type:
            ctype = headers.get("content-type")
            if ctype is not None and not ctype.startswith("application/json"):
                raise GatewayError(
                    415, f"Content-Type must be application/json, got '{ctype}'.", code="unsupported_media_type"
                )
        raw = await inbound.read_body(snap.settings.max_body_bytes)
        body = parse_json(raw)
        if inbound.kind == EMBEDDINGS:
            embeddings.validate(body)
        else:
            validate_chat(body)
        model = body["model"]
        if key.models is not None:
            check_model(key, model)
        group = snap.resolve(model)
        outcome.model = model  # only a name the gateway serves reaches logs, labels and usage rows
        stream = body.get("stream") is True
        if stream and inbound.surface == "rest":
            outcome.surface = "sse"
        opts = body.get("stream_options")
        settings = snap.settings
        timeout = settings.request_timeout_seconds
        if "x-gateway-timeout" in headers:
            timeout = _timeout(headers["x-gateway-timeout"])
        # All positional: a class call with keywords builds a dict for them (1.8k instructions, callgrind).
        req = ChatRequest(
            body, model, stream, bool(opts and opts.get("include_usage")), outcome.request_id, key, headers,
            outcome.started, asyncio.get_running_loop().time() + timeout, group, outcome, settings.request_timeout_seconds,
            settings.max_upstream_bytes, settings.max_event_bytes, inbound.kind,
        )
        if self.cache is not None:
            req.cache_controls = parse_controls(headers, self.cache.config.max_ttl_seconds)
        for limiter in self.limiters:  # last: a request refused for its own mistakes costs no quota
            pending = limiter(req)
            if pending is not None:  # a limiter that shares state across instances (a budget in Redis) awaits it
                await pending
        return req

    def authenticate(self, keys: dict[str, ApiKey], headers: dict[str, str]) -> ApiKey:
        return authenticate(keys, headers.get("authorization"), self.virtual_keys)


def _timeout(override: str) -> float:
    try:
        timeout = float(override)
    except ValueError:
        timeout = -1.0
    if not 0 < timeout <= 3600:
        raise invalid("'x-gateway-timeout' must be a number of seconds in (0, 3600].", param="x-gateway-timeout")
    return timeout
