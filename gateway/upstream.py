"""One attempt against one deployment: adapter + transport.

The router decides where and how often to try; this module only turns an
OpenAI request into one provider call and its answer back into OpenAI shape.
Time spent waiting on the provider is added to ``req.outcome.upstream_seconds`` so the
gateway can report its own overhead.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any, AsyncIterator, Callable

from gateway import tracing

from gateway.errors import GatewayError
from gateway.providers import get_adapter
from gateway.providers.base import Deployment, StreamState
from gateway.request import ChatRequest
from gateway.sse import SSEDecoder
from gateway.transport import Transport, UpstreamResponse


# A stage counter: listener(deployment, seconds, error or None) after every provider call that
# ended (cancelled ones, e.g. a hedge's loser, are not counted). The metrics register here at start-up.
AttemptListener = Callable[[Deployment, float, "GatewayError | None"], None]
attempt_listeners: list[AttemptListener] = []


def _attempted(deployment: Deployment, seconds: float, err: GatewayError | None, span: Any = None) -> None:
    for listener in attempt_listeners:
        listener(deployment, seconds, err)
    if span is not None:
        tracing.end_attempt(span, err)


def _upstream_error(adapter, status: int, data: bytes, retry_after: float | None) -> GatewayError:
    err = adapter.map_error(status, data)
    err.upstream_status = status
    err.retry_after = retry_after
    return err


async def complete(req: ChatRequest, deployment: Deployment, transport: Transport, timeout: float) -> dict:
    adapter = get_adapter(deployment.provider)
    upstream = adapter.build_request(req.body, deployment, False)
    span = tracing.start_attempt(req, deployment, upstream.headers) if tracing.tracer is not None else None
    t0 = perf_counter()
    try:
        status, data, retry_after = await transport.send(upstream, timeout)
    except GatewayError as err:
        _attempted(deployment, perf_counter() - t0, err, span)
        raise
    except asyncio.CancelledError:
        if span is not None:
            span.end()  # a hedge's loser, or the client left
        raise
    finally:
        req.outcome.upstream_seconds += perf_counter() - t0
    seconds = perf_counter() - t0
    try:
        if status >= 400:
            raise _upstream_error(adapter, status, data, retry_after)
        completion = adapter.parse_response(data, deployment)
    except GatewayError as err:
        _attempted(deployment, seconds, err, span)
        raise
    _attempted(deployment, seconds, None, span)
    return completion


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
    span = tracing.start_attempt(req, deployment, upstream.headers) if tracing.tracer is not None else None
    t0 = perf_counter()
    try:
        resp = await transport.open(upstream, timeout)
        if resp.status >= 400:
            data = await resp.read()
            await resp.close()
            raise _upstream_error(adapter, resp.status, data, resp.retry_after)
    except GatewayError as err:
        _attempted(deployment, perf_counter() - t0, err, span)
        raise
    except asyncio.CancelledError:
        if span is not None:
            span.end()
        raise
    finally:
        req.outcome.upstream_seconds += perf_counter() - t0
    _attempted(deployment, perf_counter() - t0, None, span)  # a stream counts as answered when its headers came
    return UpstreamStream(req, deployment, resp, adapter, adapter.new_stream(req.body, deployment))
