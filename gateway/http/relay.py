"""The relay core every surface shares: from admission to the last frame, then the finish hook.

A surface (HTTP for REST and SSE, the WebSocket) only says how to frame: a
whole answer, a stream's opening, a batch of chunks, its end, an error, and a
keepalive. The relay decides when: nothing is framed before the provider's
first batch, so a failed attempt can still fail over or become a plain error
answer; keepalives go out while waiting on the provider; a client that leaves
cancels the work (and so closes the upstream request); an error after the
first byte becomes an error frame; and ``Finish.run`` runs exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

from gateway.errors import GatewayError
from gateway.timers import Timers
from gateway.pipeline.admission import Admission, Inbound
from gateway.pipeline.finish import Finish
from gateway.pipeline.outcome import Outcome
from gateway.pipeline.pipeline import Pipeline
from gateway.request import ChatRequest

log = logging.getLogger("gateway")

INTERNAL = GatewayError(500, "The gateway failed to handle this request.", "api_error", None, "internal_error")


class Surface(Protocol):
    started: bool  # has any byte of the answer gone out?

    async def answer(self, completion: dict) -> None: ...
    async def open(self) -> None: ...
    async def ping(self) -> None: ...
    async def batch(self, chunks: list[dict]) -> None: ...
    async def end(self) -> None: ...
    async def error(self, err: GatewayError) -> None:
        """Before any byte: a whole error answer; after: an error frame, then the end."""


# A plain answer is watched for a gone client only once it has taken this long: most finish sooner,
# and listening on Granian's receive() for every one cost ~10 % of non-streaming throughput (measured
# in an interleaved run); a client that leaves is then noticed at most this late.
LAZY_WATCH_SECONDS = 0.1


class Watch:
    """Cancels the task serving a request when its client leaves (or cancels it).

    ``arm`` takes a function returning the client's next message; the HTTP
    surface passes ASGI ``receive``. Under Granian that returns a future, so
    watching costs a callback, not a task; ``lazy`` defers even that by a timer.

    The HTTP surface's body deadline rides on the same timer (``reading``): one
    coarse timer per request instead of two. It is armed when the body read
    starts; if it fires while the body is still being read it is the deadline
    (``LAZY_WATCH_SECONDS`` in, re-armed for the rest; then ``expired``),
    otherwise (the reader has set ``reading_left`` back to None) it is the
    lazy watch's start.
    """

    __slots__ = ("task", "gone", "expired", "reading_left", "_next", "_fut", "_timers", "_slot", "_due")

    def __init__(self, timers: Timers | None = None) -> None:
        self.task: asyncio.Task | None = None
        self.gone = False
        self.expired = False  # the body deadline passed: the reading task was cancelled for it
        self._next = None
        self._fut = None
        self._timers = timers  # the lazy start's coarse timer (gateway/timers.py); None: start at once
        self._slot: int | None = None
        # While the body is read: the deadline's seconds after the timer fires. The reader sets it back
        # to None when the body is in (an attribute, not a method: this is on every request).
        self.reading_left: float | None = None
        self._due = False  # the lazy delay passed before arm (body or admission slow): listen as soon as armed

    def reading(self, timeout: float) -> None:
        """The body read starts now, and must end within ``timeout`` seconds (needs ``timers``)."""
        self.task = asyncio.current_task()
        if timeout > LAZY_WATCH_SECONDS:
            self.reading_left = timeout - LAZY_WATCH_SECONDS
            self._slot = self._timers.arm(LAZY_WATCH_SECONDS, self)
        else:
            self.reading_left = 0.0
            self._slot = self._timers.arm(timeout, self)

    def arm(self, next_message, lazy: bool = False) -> None:
        if self.task is None:
            self.task = asyncio.current_task()
        self._next = next_message
        if next_message is None:
            return
        if lazy and self._timers is not None and not self._due:
            if self._slot is None:
                self._slot = self._timers.arm(LAZY_WATCH_SECONDS, self)
            return  # else the timer armed by reading() starts the watch
        if self._slot is not None:
            self._timers.disarm(self._slot, self)
            self._slot = None
        self._listen()

    def fire(self) -> None:  # the coarse timer
        self._slot = None
        left = self.reading_left
        if left is not None:  # still reading the body: this is its deadline
            if left > 0:
                self.reading_left = 0.0
                self._slot = self._timers.arm(left, self)
                self._due = True  # the lazy watch's time has come: once the body is in, the relay's arm listens
                return
            self.expired = True
            self.task.cancel()
            return
        if self._next is None:
            self._due = True  # fired during admission: the relay's arm listens at once
            return
        self._listen()

    def _listen(self) -> None:
        fut = self._fut = asyncio.ensure_future(self._next())
        fut.add_done_callback(self._fired)

    def _fired(self, fut) -> None:
        if self._fut is not fut or fut.cancelled():
            return  # stopped: the answer is out, a late disconnect changes nothing
        if fut.exception() is None and fut.result().get("type") != "http.disconnect":
            self._listen()  # not a disconnect (a server may send more): keep watching
            return
        self.cancel()

    def cancel(self) -> None:
        """The client is gone (or asked to stop): cancel its request's task."""
        if not self.gone and self.task is not None:
            self.gone = True
            self.task.cancel()

    def stop(self) -> None:
        self._next = None  # a timer that still fires starts nothing
        if self._slot is not None:
            self._timers.disarm(self._slot, self)
            self._slot = None
        fut = self._fut
        if fut is not None:
            self._fut = None
            if not fut.done():
                fut.cancel()


@dataclass(slots=True)
class Relay:
    admission: Admission
    pipeline: Pipeline
    finish: Finish
    ping_seconds: float

    async def serve(self, snap, inbound: Inbound, outcome: Outcome, surface: Surface, watch: Watch, next_message=None) -> None:
        """Admit, answer and frame one request; ``next_message`` (see ``Watch``) tells when the client leaves."""
        req = None
        try:
            try:
                req = await self.admission.admit(snap, inbound, outcome)
                watch.arm(next_message, lazy=not req.stream)
                if req.stream:
                    await self._stream(req, surface)
                else:
                    pipeline = self.pipeline
                    # No lookup coroutine to make and run when the cache is off.
                    completion = await pipeline.lookup(req) if pipeline.cache is not None else None
                    if completion is None:
                        completion = await pipeline.complete(req)
                        pipeline.answered(req, completion)
                    watch.stop()
                    watch = None  # stopped: the answer is out, a late disconnect changes nothing
                    outcome.status = 200
                    await surface.answer(completion)
            except GatewayError as err:
                watch.stop()
                self._failed(outcome, surface, err)
                await surface.error(err)
            except asyncio.CancelledError:
                if watch is None or not watch.gone:
                    raise  # shutdown, or the server cancelled us: the finish hook still runs
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                outcome.client_gone = True
            except Exception:
                if watch is not None:
                    watch.stop()
                log.exception("unexpected failure handling %s", outcome.request_id)
                self._failed(outcome, surface, INTERNAL)
                await surface.error(INTERNAL)
        finally:
            if watch is not None:
                watch.stop()
            if req is not None and req.stream:
                outcome.estimate_usage(req.prompt_tokens())  # cut before its usage: estimated, never $0
            self.finish.run(req, outcome)

    @staticmethod
    def _failed(outcome: Outcome, surface: Surface, err: GatewayError) -> None:
        outcome.fail(err)
        if surface.started:
            outcome.status = 200  # what the client saw; the error type says the rest

    async def _stream(self, req: ChatRequest, surface: Surface) -> None:
        out = req.outcome
        keepalive = Keepalive(surface, self.ping_seconds)
        upstream = None
        rest = None
        try:
            # The cache answers before any keepalive, so a stream's headers always carry x-cache.
            hit = await self.pipeline.lookup(req) if self.pipeline.cache is not None else None
            if hit is not None:
                first, rest = self.pipeline.replay(req, hit)
            else:
                first, rest, upstream = await keepalive.around(self.pipeline.open_stream(req))
            if not surface.started:
                await surface.open()
            out.status = 200
            if first:
                out.first_chunk_seconds = perf_counter() - out.started
                out.chunks += len(first)
                await surface.batch(first)
            while True:
                try:
                    batch = await keepalive.around(rest.__anext__())
                except StopAsyncIteration:
                    break
                if out.first_chunk_seconds is None:
                    out.first_chunk_seconds = perf_counter() - out.started
                out.chunks += len(batch)
                await surface.batch(batch)
            await surface.end()
        finally:
            keepalive.stop()
            # Closing the stream closes the upstream connection, which stops the generation
            # when the client went away.
            if rest is not None:
                await rest.aclose()
            if upstream is not None:
                await upstream.close()


class Keepalive:
    """Sends the surface's keepalive while the relay waits on the provider.

    One timer per stream, not one per wait: each wait only notes when it began,
    and the timer, when due, either re-arms for the wait now under way or starts
    a task that sends the keepalives (a timer handle per awaited batch was ~3 %
    of a streaming profile). The relay lets an in-progress send finish before
    its own, so two sends never overlap.
    """

    __slots__ = ("surface", "interval", "_loop", "_since", "_timer", "_task", "_sending", "_halt")

    def __init__(self, surface: Surface, interval: float) -> None:
        self.surface = surface
        self.interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._since = 0.0  # loop time the wait under way began; 0.0: not waiting
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._sending = False
        self._halt = False

    async def around(self, awaitable):
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._since = since = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(since + self.interval, self._due)
        try:
            return await awaitable
        finally:
            self._since = 0.0
            if self._task is not None:
                await self._end_task()

    def _due(self) -> None:
        self._timer = None
        since = self._since
        if not since:
            return  # between waits: the next wait arms the timer again
        due = since + self.interval
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._due)  # a later wait: not yet its time
            return
        self._halt = False
        self._task = self._loop.create_task(self._ping())

    async def _ping(self) -> None:
        while not self._halt:
            self._sending = True
            try:
                await self.surface.ping()
            finally:
                self._sending = False
            if self._halt:
                return
            await asyncio.sleep(self.interval)

    async def _end_task(self) -> None:
        task, self._task = self._task, None
        self._halt = True
        if not self._sending:
            task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
