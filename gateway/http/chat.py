"""``POST /v1/chat/completions`` over HTTP: REST answers and SSE streams.

Only framing lives here (ASGI messages, SSE encoding); admission, the
pipeline, keepalives, disconnects and the finish hook are the relay's.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from time import perf_counter
from typing import Awaitable

import orjson
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError
from gateway.http import headers
from gateway.http.relay import Relay, Watch
from gateway.pipeline.admission import Inbound, too_large
from gateway.pipeline.outcome import Outcome
from gateway.sse import DONE, PING

ROUTE = "/v1/chat/completions"
EMBEDDINGS_ROUTE = "/v1/embeddings"
# Path -> (route template, request kind): embeddings take the same path through the gateway as chat.
ROUTES = {
    ROUTE: (ROUTE, "chat"),
    "/chat/completions": (ROUTE, "chat"),
    EMBEDDINGS_ROUTE: (EMBEDDINGS_ROUTE, "embeddings"),
    "/embeddings": (EMBEDDINGS_ROUTE, "embeddings"),
}
PATHS = frozenset(ROUTES)


def scope_headers(scope: Scope) -> dict[str, str]:
    """ASGI headers as a dict of str (names are already lower-case in ASGI; the last of a repeated name wins).

    Joined, decoded and split in C rather than decoded pair by pair in a comprehension: that cost two
    decodes and a store per header in bytecode (an SDK sends about 15). No header name or value holds a
    line feed (the HTTP parser refuses one), so it separates them; if a server ever passed one, the count
    of parts says so and the pairs are decoded one by one."""
    raw = scope["headers"]
    parts = b"\n".join(_flat(raw)).decode("latin-1").split("\n")
    if len(parts) == 2 * len(raw):
        return dict(zip(parts[::2], parts[1::2]))
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}


_flat = itertools.chain.from_iterable


# A per-process random prefix and a counter: unique across workers and instances without a
# getrandom() system call per request (os.urandom was 3 % of the loop's samples in a flamegraph).
_ID_PREFIX = ""
_ids = itertools.count(1)


def _new_id_prefix() -> None:
    global _ID_PREFIX
    _ID_PREFIX = "req_" + os.urandom(8).hex()


_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)  # Granian forks its workers: each needs its own


def request_id(given: str | None) -> str:
    # Echo a client's id only when it is safe to put back in a header.
    if given and len(given) <= 200 and given.isprintable():
        return given
    return f"{_ID_PREFIX}{next(_ids):08x}"


class HTTPSurface:
    """REST and SSE framing of the relay's output as ASGI messages."""

    __slots__ = ("send", "outcome", "started")
    keepalive = PING  # what a wait sends (an SSE comment)

    def __init__(self, send: Send, outcome: Outcome) -> None:
        self.send = send
        self.outcome = outcome
        self.started = False

    async def answer(self, completion: dict) -> None:
        body = orjson.dumps(completion)
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": headers.build(self.outcome, headers.JSON)})
        await self.send({"type": "http.response.body", "body": body})

    async def open(self) -> None:
        # Built when sent, not before: the headers carry what is known by then (x-cache always).
        self.started = True
        await self.send({"type": "http.response.start", "status": 200, "headers": headers.build(self.outcome, *headers.SSE)})

    async def ping(self) -> None:
        if not self.started:
            await self.open()
        await self.send({"type": "http.response.body", "body": self.keepalive, "more_body": True})

    async def batch(self, chunks: list[dict]) -> None:
        # One join over a C map, not a bytes concatenation per chunk in a comprehension.
        body = b"data: " + b"\n\ndata: ".join(map(orjson.dumps, chunks)) + b"\n\n"
        await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def end(self) -> None:
        await self.send({"type": "http.response.body", "body": DONE, "more_body": False})

    async def error(self, err: GatewayError) -> None:
        if self.started:
            await self.send({"type": "http.response.body", "body": b"data: " + err.body() + b"\n\n" + DONE, "more_body": False})
            return
        self.started = True
        hdrs = headers.build(self.outcome, headers.JSON, err=err)
        await self.send({"type": "http.response.start", "status": err.status, "headers": hdrs})
        await self.send({"type": "http.response.body", "body": err.body()})


class BodyReads:
    """How many request bodies this worker is reading now, against a bound.

    Granian hands at most WORKER_CONNECTIONS requests to the app at once
    (``backpressure``); a client that sends headers and then stalls holds one
    of those slots until its body deadline. Bounding the reads in progress
    (half the slots by default) and answering the excess at once keeps the
    other half for everything else, ``/health`` included.
    """

    __slots__ = ("active", "limit")

    def __init__(self, limit: int) -> None:
        self.active = 0
        self.limit = max(1, limit)


BUSY = GatewayError(
    503, "Too many request bodies are being uploaded to this worker; retry shortly.", "api_error", None, "server_busy",
    headers={"Retry-After": "1"},
)


def _unreadable() -> GatewayError:
    # Granian reports a malformed chunked body (and a client that left mid-body) as a disconnect.
    return GatewayError(400, "The request body is malformed or ended before it was complete.", code="invalid_body")


def body_reader(receive: Receive, content_length: str | None, reads: BodyReads, timeout: float, watch: Watch):
    """``read_body(limit)`` for admission: the whole body; a 413 past the limit, a 408 past ``timeout``
    seconds, a 400 for a body that is malformed or cut short, a 503 when too many are being read.

    The deadline is the request's one coarse timer (``Watch.reading``), the same that later starts
    the lazy client watch: an asyncio.timeout() was a Timeout object and a loop timer handle per
    request, and a second coarse timer another arm and disarm."""

    async def read(limit: int) -> bytes:
        declared = -1
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                raise GatewayError(400, "Invalid Content-Length header.", code="invalid_content_length") from None
            if declared > limit:
                raise too_large(limit)
        if reads.active >= reads.limit:
            raise BUSY
        reads.active += 1
        watch.reading(timeout)
        try:
            msg = await _receive(receive)
            body = msg.get("body", b"")
            # Granian sends the whole body with more_body=True and then an empty message;
            # when Content-Length says we have it all, skip that extra hop through the loop.
            if not msg.get("more_body") or len(body) == declared:
                if len(body) > limit:
                    raise too_large(limit)
                return body  # here, not in a coroutine of its own: one made and resumed less per request
            return await _rest(receive, body, limit)
        except asyncio.CancelledError:
            if not watch.expired or watch.task.uncancel() > 0:
                raise  # not our deadline (shutdown, or the server's own cancel), or another cancel on top
            raise GatewayError(
                408, f"The request body did not arrive within {timeout:g}s.", code="request_timeout"
            ) from None
        finally:
            watch.reading_left = None  # the body is in (or failed): the timer now starts the lazy watch
            reads.active -= 1

    return read


async def _rest(receive, body: bytes, limit: int) -> bytes:
    """The messages after the first (``body``), which said more would come."""
    parts = [body]
    size = len(body)
    more = True
    while more:
        msg = await _receive(receive)
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
        more = msg.get("more_body")
    return b"".join(parts)


def _receive_failed(exc: BaseException) -> BaseException:
    """What a failed ``receive()`` becomes: our own cancel (deadline, shutdown) stays one; anything else
    (the server cancelled the read, a broken body) means the body cannot be read."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return exc
        return _unreadable()
    if isinstance(exc, Exception):
        return _unreadable()
    return exc  # KeyboardInterrupt, SystemExit: not ours to map


async def _receive(receive) -> dict:
    try:
        msg = await receive()
    except BaseException as exc:
        raise _receive_failed(exc) from None
    if msg["type"] == "http.disconnect":
        raise _unreadable()
    return msg


def serve(gateway, scope: Scope, receive: Receive, send: Send, make_surface, route: str, kind: str = "chat",
          hdrs: dict[str, str] | None = None, translate=None) -> Awaitable[None]:
    """One HTTP request through the relay, framed by ``make_surface(send, outcome)``; ``translate`` wraps the
    body reader when the surface speaks another API (``/v1/messages``).

    A plain function returning the relay's coroutine, not a coroutine itself: every resume of a request
    (each upstream read, each stream chunk) passes through every coroutine frame above it, so this one
    layer less is paid on each of them."""
    hdrs = scope_headers(scope) if hdrs is None else hdrs
    # Positional (surface, route, method), as Inbound below: a class call with keywords builds a dict for them
    # (1.4k and 0.8k instructions, callgrind).
    outcome = Outcome(request_id(hdrs.get("x-request-id")), perf_counter(), "rest", route, scope["method"])
    surface = make_surface(send, outcome)
    relay: Relay = gateway.relay
    if scope["method"] != "POST":
        return _refuse(relay, outcome, surface, scope["method"])
    snap = gateway.router.state
    watch = Watch(gateway.timers)
    read = body_reader(receive, hdrs.get("content-length"), gateway.body_reads, snap.settings.body_timeout_seconds, watch)
    inbound = Inbound(hdrs, translate(read) if translate is not None else read, "rest", True, kind)
    return relay.serve(snap, inbound, outcome, surface, watch, receive)


async def _refuse(relay: Relay, outcome: Outcome, surface, method: str) -> None:
    err = GatewayError(405, f"Method {method} is not allowed here; use POST.", code="method_not_allowed")
    outcome.fail(err)
    await surface.error(err)
    relay.finish.run(None, outcome)
