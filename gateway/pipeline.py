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
from gateway.cache import Cache, replay_chunks
from gateway.config import Settings
from gateway.errors import invalid
from gateway.request import ChatRequest, parse_json, validate_chat
from gateway.router import Router
from gateway.usage import Usage


class Pipeline:
    def __init__(self, settings: Settings, router: Router, usage: Usage, cache: Cache | None = None) -> None:
        self.settings = settings
        self.router = router
        self.usage = usage
        self.cache = cache
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

    async def _lookup(self, req: ChatRequest) -> dict | None:
        """The cached answer, if any; notes the outcome for the x-cache headers and usage."""
        result = await self.cache.lookup(req)
        req.meta["cache_status"] = result.status
        if result.response is None:
            return None
        req.meta["similarity"] = result.similarity
        self.usage.record(req.key.name, req.model, None, cached=True)
        return result.response

    async def complete(self, req: ChatRequest) -> dict:
        cache = self.cache
        if cache is not None:
            hit = await self._lookup(req)
            if hit is not None:
                return hit
        completion = await self.router.complete(req, req.meta["group"])
        self.usage.record(req.key.name, req.model, completion.get("usage"))
        if cache is not None:
            cache.store(req, completion)  # queues; the writer task embeds, indexes and mirrors
        return completion

    async def stream(self, req: ChatRequest) -> tuple[list[dict], AsyncIterator[list[dict]]]:
        """The first batch (already received, so failover happened before any byte) and the rest."""
        cache = self.cache
        collector = None
        if cache is not None:
            hit = await self._lookup(req)
            if hit is not None:
                return replay_chunks(hit, include_usage=req.include_usage), _nothing()
            collector = _Collector()
        first, rest, upstream_stream = await self.router.stream(req, req.meta["group"])
        if collector is not None:
            collector.add(first)
        return first, self._finish_stream(req, rest, upstream_stream, collector)

    async def _finish_stream(
        self, req: ChatRequest, rest: AsyncIterator[list[dict]], s, collector: "_Collector | None"
    ) -> AsyncIterator[list[dict]]:
        try:
            async for batch in rest:
                if collector is not None:
                    collector.add(batch)
                yield batch
        finally:
            # Even a cut stream counted what the provider reported so far.
            self.usage.record(req.key.name, req.model, s.state.usage)
        state = s.state
        if collector is not None:
            completion = collector.completion(state)
            if completion is not None:
                self.cache.store(req, completion)  # streamed answers are cached too, and replay as streams
        if req.include_usage:
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


async def _nothing() -> AsyncIterator[list[dict]]:
    return
    yield


class _Collector:
    """Rebuilds a ``chat.completion`` from a stream's chunks, so a streamed answer can be cached."""

    __slots__ = ("parts", "finish", "usable")

    def __init__(self) -> None:
        self.parts: dict[int, list[str]] = {}
        self.finish: dict[int, str] = {}
        self.usable = True

    def add(self, batch: list[dict]) -> None:
        if not self.usable:
            return
        for chunk in batch:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("tool_calls") or delta.get("function_call"):
                    self.usable = False  # tool calls are not rebuilt; the cache skips them anyway
                    return
                index = choice.get("index", 0)
                content = delta.get("content")
                if content:
                    self.parts.setdefault(index, []).append(content)
                if choice.get("finish_reason"):
                    self.finish[index] = choice["finish_reason"]

    def completion(self, state) -> dict | None:
        """None when the stream did not finish cleanly: a cut answer must not be cached."""
        if not self.usable or not self.finish or set(self.finish) != set(self.parts) | set(self.finish):
            return None
        return {
            "id": state.id,
            "object": "chat.completion",
            "created": state.created,
            "model": state.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "".join(self.parts.get(i, ()))},
                    "finish_reason": self.finish[i],
                    "logprobs": None,
                }
                for i in sorted(self.finish)
            ],
            "usage": state.usage,
        }
