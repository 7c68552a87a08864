"""One attempt against one deployment: adapter + transport.

The router decides where and how often to try; this module only turns an
OpenAI request into one provider call and its answer back into OpenAI shape.
Time spent waiting on the provider is added to ``req.outcome.upstream_seconds`` so the
gateway can report its own overhead.
"""

from __future__ import annotations

from typing import AsyncIterator

from gateway.errors import GatewayError
from gateway.providers import get_adapter
from gateway.embeddings import KIND as EMBEDDINGS
from gateway.providers.base import Deployment, StreamState
from gateway.request import ChatRequest
from gateway.sse import SSEDecoder
from gateway.transport import Transport, UpstreamResponse


def _upstream_error(adapter, status: int, data: bytes, retry_after: float | None) -> GatewayError:
    err = adapter.map_error(status, data)
    # A rejected key counts as the 401 it means, whatever status carried it (Gemini: 400 API_KEY_INVALID),
    # so the router fails over and the outcome blames the provider, not the client.
    err.upstream_status = err.status if err.code == "upstream_auth_error" else status
    err.retry_after = retry_after
    return err


async def complete(req: ChatRequest, deployment: Deployment, transport: Transport, timeout: float,
                   timed: bool = True) -> dict:
    """One call; ``timed=False`` when the caller times it (a hedge race counts its span once, not each attempt)."""
    adapter = get_adapter(deployment.provider)
    embed = req.kind == EMBEDDINGS
    upstream = adapter.build_embeddings(req.body, deployment) if embed else adapter.build_request(req.body, deployment, False)
    if timed:
        t0 = req.outcome.wait_begin()
    try:
        status, data, retry_after = await transport.send(upstream, timeout)
    finally:
        if timed:
            req.outcome.wait_end(t0)
    if status >= 400:
        raise _upstream_error(adapter, status, data, retry_after)
    if embed:
        return adapter.parse_embeddings(data, req.body, deployment)
    return adapter.parse_response(data, deployment)


class UpstreamStream:
    """An open provider stream, yielding batches of OpenAI chunks per network read."""

    __slots__ = ("deployment", "state", "_resp", "_adapter", "_req")

    def __init__(self, req: ChatRequest, deployment: Deployment, resp: UpstreamResponse, adapter, state: StreamState):
        self._req = req
        self.deployment = deployment
        self._resp = resp
        self._adapter = adapter
        self.state = state

    async def batches(self) -> AsyncIterator[list[dict]]:
        parse = self._adapter.parse_stream_event
        state = self.state
        decoder = SSEDecoder()
        try:
            async for raw in self._resp.chunks():
                out: list[dict] = []
                for data in decoder.feed(raw):
                    out.extend(parse(data, state))
                if out:
                    yield out
            out = []
            for data in decoder.flush():
                out.extend(parse(data, state))
            if out:
                yield out
        finally:
            await self._resp.close()

    async def close(self) -> None:
        await self._resp.close()


async def open_stream(req: ChatRequest, deployment: Deployment, transport: Transport, timeout: float) -> UpstreamStream:
    adapter = get_adapter(deployment.provider)
    upstream = adapter.build_request(req.body, deployment, True)
    resp = await transport.open(upstream, timeout)
    if resp.status >= 400:
        data = await resp.read()
        await resp.close()
        raise _upstream_error(adapter, resp.status, data, resp.retry_after)
    return UpstreamStream(req, deployment, resp, adapter, adapter.new_stream(req.body, deployment))


async def open_first(req: ChatRequest, d: Deployment, transport: Transport, timeout: float, timed: bool = True):
    """Open a stream and wait for its first batch: until then a failure can still fail over.

    The wait counts as upstream time up to the first batch (a provider sends its
    headers at once and its first token later): the SSE headers, which carry the
    overhead, leave only after it.
    """
    if timed:
        t0 = req.outcome.wait_begin()
    try:
        s = await open_stream(req, d, transport, timeout)
        it = s.batches().__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            first = []
        except BaseException:
            await s.close()
            raise
    finally:
        if timed:
            req.outcome.wait_end(t0)
    return first, it, s


async def close_stream(result) -> None:
    """Close a stream ``open_first`` opened (one that lost a hedge race)."""
    _, it, s = result
    try:
        await it.aclose()
    finally:
        await s.close()
