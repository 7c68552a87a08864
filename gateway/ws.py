"""``/ws``: chat completions over one WebSocket, several requests multiplexed by ``id``.

Each ``chat`` message runs through the same ``Relay.serve`` as a REST or SSE
request (admission, limits, cache, router, finish hook) with surface ``ws``;
only the framing differs (``WSSurface``). The protocol is in README.md.

Backpressure: every frame is awaited before the relay reads the next batch
from the provider, and the server's ``send`` waits while the client's socket
is full, so a client that stops reading pauses its upstream reads instead of
growing a buffer here.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from urllib.parse import parse_qs

import orjson

from gateway.errors import GatewayError, invalid
from gateway.http.chat import request_id
from gateway.http.relay import Watch
from gateway.pipeline.admission import Inbound
from gateway.pipeline.outcome import Outcome

log = logging.getLogger("gateway")

PATH = "/ws"
# Close codes (RFC 6455 and the IANA registry).
NORMAL, GOING_AWAY, POLICY, TOO_BIG, TRY_LATER = 1000, 1001, 1008, 1009, 1013
_CONTROL = frozenset({"type", "id"})  # keys of a chat message that are not part of the request body


class WSSurface:
    """The relay's frames for one request on a connection: deltas, done, error, ping."""

    __slots__ = ("conn", "id", "started", "usage", "finish_reason")

    def __init__(self, conn: "Connection", request_id: str) -> None:
        self.conn = conn
        self.id = request_id
        self.started = False
        self.usage = None
        self.finish_reason: str | None = None

    async def answer(self, completion: dict) -> None:
        # Chat over /ws always streams; a whole answer (not produced today) still frames the same way.
        self.started = True
        for choice in completion.get("choices") or ():
            msg = choice.get("message") or {}
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            if msg.get("content") or msg.get("tool_calls"):
                await self.conn.send({"type": "delta", "id": self.id, **_delta(choice.get("index", 0), msg)})
        self.usage = completion.get("usage")
        await self.end()

    async def open(self) -> None:
        self.started = True

    async def ping(self) -> None:
        await self.conn.send({"type": "ping", "id": self.id})

    async def batch(self, chunks: list[dict]) -> None:
        self.started = True
        content: dict[int, list[str]] = {}
        for chunk in chunks:
            usage = chunk.get("usage")
            if usage:
                self.usage = usage
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
                delta = choice.get("delta")
                if not delta:
                    continue
                index = choice.get("index", 0)
                if delta.get("tool_calls"):
                    await self._flush(content)
                    await self.conn.send({"type": "delta", "id": self.id, **_delta(index, delta)})
                elif delta.get("content"):
                    content.setdefault(index, []).append(delta["content"])
        await self._flush(content)

    async def _flush(self, content: dict[int, list[str]]) -> None:
        # One frame per batch and choice: the provider's chunks of one read are joined.
        for index, parts in content.items():
            msg = {"type": "delta", "id": self.id, "content": "".join(parts)}
            if index:
                msg["index"] = index
            await self.conn.send(msg)
        content.clear()

    async def end(self) -> None:
        await self.conn.send({"type": "done", "id": self.id, "usage": self.usage, "finish_reason": self.finish_reason})

    async def error(self, err: GatewayError) -> None:
        self.started = True
        await self.conn.send({"type": "error", "id": self.id, "error": err.to_dict()["error"]})


def _delta(index: int, part: dict) -> dict:
    out: dict = {}
    if part.get("content"):
        out["content"] = part["content"]
    if part.get("tool_calls"):
        out["tool_calls"] = part["tool_calls"]
    if index:
        out["index"] = index
    return out


class Connection:
    """One accepted WebSocket: its key, its requests in flight, its idle timer."""

    def __init__(self, gateway, scope: dict, receive, send) -> None:
        self.gateway = gateway
        self.scope = scope
        self.receive = receive
        self._send = send
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.inflight: dict[str, tuple[asyncio.Task, Watch]] = {}
        self.closed = False

    async def send(self, msg: dict) -> None:
        if self.closed:
            return
        await self._send({"type": "websocket.send", "text": orjson.dumps(msg).decode()})

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})
        except Exception:  # noqa: BLE001 - the peer may be gone already
            pass

    # --- the connection's life -----------------------------------------------

    async def run(self) -> None:
        settings = self.gateway.settings
        self.max_bytes = settings.max_body_bytes
        self.idle = float(settings.keepalive_timeout)
        self.max_in_flight = settings.ws_max_in_flight
        await self._send({"type": "websocket.accept"})
        try:
            token = self._key_from_request()
            if token is None:
                first = await self._next()
                if first is None:
                    return
                if first.get("type") != "auth" or not isinstance(first.get("api_key"), str):
                    await self.close(POLICY, "The first message must be {\"type\": \"auth\", \"api_key\": ...}.")
                    return
                token = first["api_key"]
            try:
                # Admission's key step, so virtual keys (the database's) work here as on REST.
                self.gateway.admission.authenticate(self.gateway.snapshot.keys, {"authorization": "Bearer " + token})
            except GatewayError as err:
                await self.close(POLICY, err.message)
                return
            self.headers["authorization"] = "Bearer " + token
            while not self.closed:
                msg = await self._next()
                if msg is None:
                    return
                await self._dispatch(msg)
        finally:
            for task, watch in list(self.inflight.values()):
                watch.cancel() if watch.task is not None else task.cancel()
            if self.inflight:
                await asyncio.gather(*(t for t, _ in self.inflight.values()), return_exceptions=True)
            await self.close(NORMAL)

    def _key_from_request(self) -> str | None:
        auth = self.headers.get("authorization")
        if auth:
            scheme, _, token = auth.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        keys = query.get("api_key")
        return keys[0] if keys else None

    async def _next(self) -> dict | None:
        """The client's next JSON message; None once the connection is over (closed here or by the peer)."""
        while True:
            fut = asyncio.ensure_future(self.receive())
            while True:
                done, _ = await asyncio.wait((fut,), timeout=self.idle)
                if done:
                    break
                if not self.inflight:  # silent and idle for KEEPALIVE_TIMEOUT: like an idle keep-alive connection
                    fut.cancel()
                    await self.close(GOING_AWAY, "idle timeout")
                    return None
            event = fut.result()
            kind = event["type"]
            if kind == "websocket.disconnect":
                self.closed = True
                return None
            if kind != "websocket.receive":
                continue
            raw = event.get("text")
            if raw is None:
                raw = event.get("bytes") or b""
            if len(raw) > self.max_bytes:  # characters of a str are at least a byte each
                await self.close(TOO_BIG, f"Messages are limited to {self.max_bytes} bytes.")
                return None
            try:
                msg = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                await self._error(None, invalid(f"Message is not valid JSON: {exc}", code="invalid_json"))
                continue
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                await self._error(None, invalid("A message must be a JSON object with a 'type'.", param="type"))
                continue
            return msg

    async def _error(self, request_id, err: GatewayError) -> None:
        await self.send({"type": "error", "id": request_id, "error": err.to_dict()["error"]})

    async def _dispatch(self, msg: dict) -> None:
        kind = msg["type"]
        rid = msg.get("id")
        if kind == "ping":
            await self.send({"type": "pong"})
            return
        if kind == "cancel":
            entry = self.inflight.get(rid) if isinstance(rid, str) else None
            if entry is not None:
                task, watch = entry
                watch.cancel() if watch.task is not None else task.cancel()
            return
        if kind != "chat":
            await self._error(rid, invalid(f"Unknown message type {kind!r}; expected chat, cancel or ping.", param="type"))
            return
        if not isinstance(rid, str) or not rid or len(rid) > 200:
            await self._error(None, invalid("A chat message needs a string 'id' (at most 200 characters).", param="id"))
            return
        if rid in self.inflight:
            await self._error(rid, invalid(f"Request id {rid!r} is already in flight on this connection.", param="id",
                                           code="duplicate_id"))
            return
        if len(self.inflight) >= self.max_in_flight:
            await self._error(rid, GatewayError(
                429, f"At most {self.max_in_flight} requests may be in flight on one connection.", "requests", None,
                "too_many_in_flight"))
            return
        body = {k: v for k, v in msg.items() if k not in _CONTROL}
        body["stream"] = True  # deltas are the protocol
        opts = body.get("stream_options")
        body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}  # for done.usage
        watch = Watch()
        task = asyncio.ensure_future(self._serve(rid, orjson.dumps(body), watch))
        self.inflight[rid] = (task, watch)
        task.add_done_callback(lambda _t, rid=rid: self.inflight.pop(rid, None))

    async def _serve(self, rid: str, raw: bytes, watch: Watch) -> None:
        gw = self.gateway
        outcome = Outcome(request_id(None), perf_counter(), surface="ws", route=PATH, method="WS")

        async def read_body(limit: int) -> bytes:
            return raw

        inbound = Inbound(self.headers, read_body, "ws", checks_content_type=False)
        surface = WSSurface(self, rid)
        try:
            await gw.relay.serve(gw.router.state, inbound, outcome, surface, watch, None)
        except asyncio.CancelledError:
            outcome.client_gone = True  # cancelled during admission: the finish hook ran in the relay's finally
        except Exception:  # noqa: BLE001 - a dead socket while framing an error: the connection's loop ends it
            log.debug("ws request %s ended with the connection", rid, exc_info=True)
            return
        if outcome.client_gone and not self.closed:
            # The upstream request is closed by now: the id may be used again.
            surface.finish_reason = "cancelled"
            await surface.end()


class WebSockets:
    """The ``/ws`` endpoint of one worker: counts connections against WORKER_CONNECTIONS."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway
        self.open = 0
        self.refused = 0

    async def __call__(self, scope: dict, receive, send) -> None:
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        if scope["path"] != PATH:
            await send({"type": "websocket.close", "code": POLICY})  # before accept: the server answers 403
            return
        if self.open >= self.gateway.settings.worker_connections:
            self.refused += 1
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": TRY_LATER, "reason": "connection limit reached"})
            return
        self.open += 1
        try:
            await Connection(self.gateway, scope, receive, send).run()
        finally:
            self.open -= 1
