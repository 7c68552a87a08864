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
from gateway.errors import GatewayError, upstream_error
from gateway.providers import get_adapter
from gateway.embeddings import KIND as EMBEDDINGS
from gateway.providers.base import Deployment, StreamState
from gateway.providers.common import check_chunks, check_completion
from gateway.request import ChatRequest
from gateway.sse import DONE_DATA, SSEDecoder
from gateway.transport import Transport, UpstreamResponse, timed_out


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
    upstream.max_bytes = req.max_upstream_bytes
    span = tracing.start_attempt(req, deployment, upstream.headers) if tracing.tracer is not None else None
    out = req.outcome
    # Outcome.wait_begin/wait_end, inline: this runs once per attempt of every request.
    t0 = perf_counter()
    if timed:
        out.waiting_since = t0
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
        seconds = perf_counter() - t0
        if timed:
            out.upstream_seconds += seconds
            out.waiting_since = 0.0
    try:
        if status >= 400:
            raise _upstream_error(adapter, status, data, retry_after)
        if embed:
            answer = adapter.parse_embeddings(data, req.body, deployment)
        else:
            answer = check_completion(adapter.parse_response(data, deployment), adapter.LABEL)
    except GatewayError as err:
        _attempted(deployment, seconds, err, span)
        raise
    if attempt_listeners or span is not None:
        _attempted(deployment, seconds, None, span)
    return answer


def _cut(label: str) -> GatewayError:
    return upstream_error(502, f"{label} ended the stream before its end marker.", code="upstream_stream_cut")


class UpstreamStream:
    """An open provider stream, yielding batches of OpenAI chunks per network read.

    Every chunk is checked (``check_chunks``, which also counts the answer's
    characters into the state, or the adapter's own parse: ``CHECKS_CHUNKS``);
    a stream that ends without its end marker (``[DONE]``, or a finish reason:
    Anthropic's and Gemini's last events carry one) is cut, an error rather
    than a complete answer; and a stream that sends only SSE comments for
    ``idle`` seconds has timed out, though each comment resets the
    transport's per-read bound.
    """

    __slots__ = ("deployment", "state", "_resp", "_adapter", "_req", "_idle")

    def __init__(
        self, req: ChatRequest, deployment: Deployment, resp: UpstreamResponse, adapter, state: StreamState, idle: float
    ):
        self._req = req
        self.deployment = deployment
        self._resp = resp
        self._adapter = adapter
        self.state = state
        self._idle = idle

    async def batches(self) -> AsyncIterator[list[dict]]:
        adapter = self._adapter
        parse = adapter.parse_stream_event
        label = adapter.LABEL
        state = self.state
        decoder = SSEDecoder(self._req.max_event_bytes)
        idle = self._idle
        checks = not getattr(adapter, "CHECKS_CHUNKS", False)  # else the adapter's parse checked them
        last_data = perf_counter()
        done = False
        try:
            async for raw in self._resp.chunks():
                events = decoder.feed(raw)
                if not events:
                    if perf_counter() - last_data > idle:
                        raise timed_out(self.deployment.base_url, idle)
                    continue
                last_data = perf_counter()
                out: list[dict] = []
                for data in events:
                    if data == DONE_DATA:
                        done = True
                    out.extend(parse(data, state))
                if out:
                    if checks:
                        state.content_chars += check_chunks(out, label)
                    yield out
            out = []
            for data in decoder.flush():
                if data == DONE_DATA:
                    done = True
                out.extend(parse(data, state))
            if out:
                if checks:
                    state.content_chars += check_chunks(out, label)
                yield out
            if not done and state.finish_reason is None:
                raise _cut(label)
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
    _attempted(deployment, perf_counter() - t0, None, span)  # a stream counts as answered when its headers came
    return UpstreamStream(req, deployment, resp, adapter, adapter.new_stream(req.body, deployment), timeout)


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
