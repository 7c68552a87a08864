"""The one pipeline every surface (REST, SSE, WebSocket) goes through.

    auth → parse + validate → rate limit → cache lookup → router → relay
         → cache store, usage and metrics (off the hot path)

Surfaces only frame what comes out of here: a ``chat.completion`` dict for a
plain answer, or batches of ``chat.completion.chunk`` dicts for a stream.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from gateway.auth import ApiKey, authenticate, check_model
from gateway.config import Settings
from gateway.errors import invalid
from gateway.request import ChatRequest, parse_json, validate_chat
from gateway.router import Router
from gateway.usage import Usage


class Pipeline:
    def __init__(self, settings: Settings, router: Router, usage: Usage) -> None:
        self.settings = settings
        self.router = router
        self.usage = usage
        self.keys = settings.api_keys
        self.default_timeout = settings.request_timeout_seconds

    # --- admission -------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> ApiKey:
        return authenticate(self.keys, authorization)

    def admit(self, key: ApiKey, raw: bytes, headers: dict[str, str], request_id: str, started: float) -> ChatRequest:
        """Parse, validate and resolve: every client mistake surfaces here as a 4xx."""
        body = parse_json(raw)
        validate_chat(body)
        model = body["model"]
        check_model(key, model)
        group = self.router.resolve(model)
        stream = body.get("stream") is True
        opts = body.get("stream_options")
        timeout = self.default_timeout
        override = headers.get("x-gateway-timeout")
        if override is not None:
            try:
                timeout = float(override)
            except ValueError:
                timeout = -1.0
            if not 0 < timeout <= 3600:
                raise invalid("'x-gateway-timeout' must be a number of seconds in (0, 3600].", param="x-gateway-timeout")
        req = ChatRequest(
            body=body,
            model=model,
            stream=stream,
            include_usage=bool(opts and opts.get("include_usage")),
            request_id=request_id,
            key=key,
            headers=headers,
            started=started,
            deadline=asyncio.get_running_loop().time() + timeout,
        )
        req.meta["group"] = group
        return req

    # --- answers ---------------------------------------------------------------------

    async def complete(self, req: ChatRequest) -> dict:
        completion = await self.router.complete(req, req.meta["group"])
        self.usage.record(req.key.name, req.model, completion.get("usage"))
        return completion

    async def stream(self, req: ChatRequest) -> tuple[list[dict], AsyncIterator[list[dict]]]:
        """The first batch (already received, so failover happened before any byte) and the rest."""
        first, rest, upstream_stream = await self.router.stream(req, req.meta["group"])
        return first, self._finish_stream(req, rest, upstream_stream)

    async def _finish_stream(self, req: ChatRequest, rest: AsyncIterator[list[dict]], s) -> AsyncIterator[list[dict]]:
        try:
            async for batch in rest:
                yield batch
        finally:
            # Even a cut stream counted what the provider reported so far.
            self.usage.record(req.key.name, req.model, s.state.usage)
        if req.include_usage:
            state = s.state
            yield [
                {
                    "id": state.id,
                    "object": "chat.completion.chunk",
                    "created": state.created,
                    "model": state.model,
                    "choices": [],
                    "usage": state.usage
                    or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                }
            ]
