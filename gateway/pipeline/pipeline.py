"""The stages after admission, shared by every surface.

    cache lookup → router (deployment, breaker, retry, hedge) → adapter + transport
        → cache store (queued, off the hot path)

Surfaces only frame what comes out of here: a ``chat.completion`` dict for a
plain answer, or batches of ``chat.completion.chunk`` dicts for a stream. Each
stage writes what it did into ``req.outcome``; usage and everything else that
reports on a request run in the finish hook, never here.
"""

from __future__ import annotations

from typing import AsyncIterator, Awaitable

from gateway.cache import Cache, replay_chunks
from gateway import shapes
from gateway.request import ChatRequest
from gateway.routing.router import Router
from gateway.upstream import UpstreamStream

Batches = AsyncIterator[list[dict]]


class Pipeline:
    def __init__(self, router: Router, cache: Cache | None = None) -> None:
        self.router = router
        self.cache = cache

    async def lookup(self, req: ChatRequest) -> dict | None:
        """The cached answer, if any; notes the cache outcome."""
        if self.cache is None:
            return None
        result = await self.cache.lookup(req, req.cache_controls)
        out = req.outcome
        out.cache = result.status
        if result.response is None:
            return None
        out.similarity = result.similarity
        out.add_usage(result.response.get("usage"))  # what the answer would have cost: the saved-cost metric
        return result.response

    def complete(self, req: ChatRequest) -> Awaitable[dict]:
        """An answer from a provider (the cache was looked up already); the caller hands it to ``answered``.

        The router's coroutine, not one of ours around it: every resume of the request (each upstream
        read) passes through every coroutine frame above it, so this is one layer less on each."""
        return self.router.complete(req, req.group)

    def answered(self, req: ChatRequest, completion: dict) -> None:
        """What follows a provider's answer: its usage, and the cache's copy."""
        req.outcome.add_usage(completion.get("usage"))
        # A rerouted answer is another model's: it is not this request's model's answer to keep.
        if self.cache is not None and not req.outcome.rerouted:
            self.cache.store(req, completion)  # queues; the writer task embeds, indexes and mirrors

    @staticmethod
    def replay(req: ChatRequest, hit: dict) -> tuple[list[dict], Batches]:
        """A cached answer as a stream: all of it in the first batch."""
        return replay_chunks(hit, include_usage=req.include_usage), _nothing()

    async def open_stream(self, req: ChatRequest) -> tuple[list[dict], Batches, UpstreamStream]:
        """The first batch (already received, so failover happened before any byte), the rest, and the
        upstream stream (to close, even if the rest is never iterated)."""
        first, rest, upstream_stream = await self.router.stream(req, req.group)
        # The winning attempt's own count (a hedge's loser counted into its own state, not here).
        chars = upstream_stream.state.content_chars
        req.outcome.content_chars += chars  # a cut stream's usage is estimated from what was relayed
        if req.meter is not None:
            req.meter(chars)
        collector = _Collector() if self.cache is not None and not req.outcome.rerouted else None
        if collector is not None:
            collector.add(first)
        return first, self._rest(req, rest, upstream_stream, collector), upstream_stream

    async def _rest(self, req: ChatRequest, rest: Batches, s: UpstreamStream, collector: "_Collector | None") -> Batches:
        state = s.state
        meter = req.meter  # token limits count a stream while it runs, not only when it ends
        out = req.outcome
        seen = state.content_chars  # counted by the upstream stream as it checks each batch
        try:
            async for batch in rest:
                now = state.content_chars
                if now != seen:
                    out.content_chars += now - seen
                    if meter is not None:
                        meter(now - seen)
                    seen = now
                if collector is not None:
                    collector.add(batch)
                yield batch
        finally:
            # Even a cut stream counts what the provider reported so far.
            out.add_usage(state.usage)
        if collector is not None:
            completion = collector.completion(state)
            if completion is not None:
                self.cache.store(req, completion)  # streamed answers are cached too, and replay as streams
        if req.include_usage:
            yield [shapes.usage_chunk(state.id, state.created, state.model, state.usage)]


async def _nothing() -> Batches:
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
        choices = [shapes.choice(i, "".join(self.parts.get(i, ())), self.finish[i]) for i in sorted(self.finish)]
        return shapes.completion(state.id, state.created, state.model, choices, state.usage)
