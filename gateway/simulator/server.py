"""The HTTP/1.1 server: an asyncio Protocol, httptools parsing, one listener per port.

A benchmark must measure the gateway, never this, so the hot path stays small:
no framework, no coroutine per request (answers are written from the parser's
callback, or from a ``call_later`` timer when there is latency or pacing),
Content-Length for JSON, chunked encoding for streams, keep-alive and
pipelining.

Outage modes act on the socket itself: "timeout" reads the request and never
answers; "refuse" resets the connection of each request for that provider, and
when *every* provider refuses the main port stops listening (clients get a real
ECONNREFUSED) and all its connections are dropped, until the mode changes back.
That is why the admin API is also served on a separate admin port.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import sys
import traceback
from collections import deque
from http import HTTPStatus
from types import ModuleType

import httptools
import orjson

from gateway.config.validate import Refused, as_number
from gateway.providers.registry import PROVIDERS as REGISTRY
from gateway.simulator import wire
from gateway.simulator.settings import PROVIDERS, Settings, Stats, check
from gateway.simulator.wire import Handler, Reply, Request

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_STATUS_LINES[529] = b"HTTP/1.1 529 Overloaded\r\n"


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 11\r\nconnection: close\r\n\r\nBad Request"

Route = tuple[str, Handler]


class Routes:
    """Every registered provider's simulated routes: (method, path) first, then each one's ``match``.

    Two providers may share a path (OpenAI's and Anthropic's ``GET /v1/models``):
    the first registered serves it unless a later one's auth header is present.
    """

    def __init__(self, wires: dict[str, ModuleType]) -> None:
        shared: dict[tuple[bytes, str], list[tuple[bytes, str, Handler]]] = {}
        for provider, w in wires.items():
            for key, handler in w.ROUTES.items():
                shared.setdefault(key, []).append((w.AUTH_HEADER, provider, handler))
        self.exact: dict[tuple[bytes, str], Route] = {k: (v[0][1], v[0][2]) for k, v in shared.items() if len(v) == 1}
        self.shared = {k: v for k, v in shared.items() if len(v) > 1}
        self.matchers = [(provider, w.match) for provider, w in wires.items() if hasattr(w, "match")]

    def route(self, req: Request) -> Route | None:
        key = (req.method, req.path)
        found = self.exact.get(key)
        if found is not None:
            return found
        candidates = self.shared.get(key)
        if candidates is not None:
            for header, provider, handler in reversed(candidates[1:]):
                if header in req.headers:
                    return provider, handler
            return candidates[0][1], candidates[0][2]
        for provider, match in self.matchers:
            handler = match(req)
            if handler is not None:
                return provider, handler
        return None


def load_wires() -> dict[str, ModuleType]:
    """Each registered provider's simulated wire format, imported here so the gateway never loads them."""
    return {name: importlib.import_module(p.simulated) for name, p in REGISTRY.items()}


class Connection(asyncio.Protocol):
    """One client connection; requests on it are answered strictly in order."""

    def __init__(self, sim: Simulator, admin: bool) -> None:
        self.sim = sim
        self.admin = admin  # the admin port serves /_sim/ only
        self.loop = sim.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.queue: deque[Request] = deque()  # pipelined requests waiting for the current answer
        self.busy = False
        self.keep_alive = True
        self.provider: str | None = None  # whose request is in flight, for the in-flight count
        self.timer: asyncio.TimerHandle | None = None
        self.frames: list[bytes] = []
        self.next_frame = 0
        self.interval = 0.0

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        (self.sim.admin_connections if self.admin else self.sim.connections).add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        (self.sim.admin_connections if self.admin else self.sim.connections).discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.provider is not None:
            self.sim.stats.end(self.provider)
            self.provider = None
        self.transport = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # We speak HTTP/1.1 only (no h2c, no websockets): answer what was read, then close.
            self.queue.clear()
            self.keep_alive = False
            if not self.busy and self.transport is not None:
                self.transport.close()
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_BAD_REQUEST)
                self.transport.close()

    # ---- httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path, _, query = self.url.decode("latin-1").partition("?")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        req = Request(self.parser.get_method(), path, query, self.headers, body, self.parser.should_keep_alive())
        if self.busy:
            self.queue.append(req)
        else:
            self.handle(req)

    # ---- answering

    def handle(self, req: Request) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.busy = True
        self.keep_alive = req.keep_alive
        if req.path.startswith("/_sim/"):
            self.write(self.sim.admin(req))
            return
        if self.admin:
            self.write(Reply(404, b'{"error":"the admin port serves /_sim/ only"}'))
            return
        found = self.sim.route(req)
        if found is None:  # counted as "other": a gateway with a wrong base URL shows up in the stats
            self.sim.stats.begin("other")
            self.provider = "other"
            self.write(self.sim.unknown(404, f"Unknown request URL: {req.method.decode()} {req.path}."))
            return
        provider, handler = found
        s = self.sim.settings[provider]
        w = self.sim.wires[provider]
        stats = self.sim.stats
        mode = s.mode
        if mode == "refuse":
            stats.count(stats.dropped, provider)
            self.transport.abort()
            return
        stats.begin(provider)
        self.provider = provider
        if mode == "timeout":
            stats.count(stats.hung, provider)
            return  # busy forever: this connection answers nothing more
        if mode == "error":
            reply = wire.error(w, s.error_status, s.retry_after)
        elif mode == "overloaded":
            reply = wire.overloaded(w, s.retry_after)
        else:
            try:
                reply = handler(req, s)
            except Exception:
                traceback.print_exc(file=sys.stderr)
                reply = wire.error(w, 500)
            if reply.status == 200 and s.error_rate and self.sim.random() < s.error_rate:
                reply = wire.error(w, s.error_status, s.retry_after)
        delay = s.delay()
        if delay > 0:
            self.timer = self.loop.call_later(delay, self.send, reply, s.chunk_interval())
        else:
            self.send(reply, s.chunk_interval())

    def send(self, reply: Reply, interval: float) -> None:
        self.timer = None
        t = self.transport
        if t is None:
            return
        if self.provider is not None:
            self.sim.stats.answered(self.provider, reply.status, reply.frames is not None)
        close = b"" if self.keep_alive else b"connection: close\r\n"
        if reply.frames is None:
            t.write(
                b"%scontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n%s"
                % (_status_line(reply.status), reply.content_type, len(reply.body), reply.headers, close, reply.body)
            )
            self.done()
            return
        head = b"%scontent-type: %s\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n%s%s\r\n" % (
            _status_line(reply.status),
            reply.content_type,
            reply.headers,
            close,
        )
        if interval <= 0:  # as fast as possible: the whole stream in one chunk, one write
            body = b"".join(reply.frames)
            t.write(head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
            self.done()
            return
        t.write(head)
        self.frames = reply.frames
        self.next_frame = 0
        self.interval = interval
        self.write_frame()

    def write_frame(self) -> None:
        """Write the next stream frame; a timer, not a sleeping coroutine, brings the one after."""
        self.timer = None
        t = self.transport
        if t is None:
            return
        frame = self.frames[self.next_frame]
        self.next_frame += 1
        if self.next_frame < len(self.frames):
            t.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            self.timer = self.loop.call_later(self.interval, self.write_frame)
        else:
            t.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(frame), frame))
            self.frames = []
            self.done()

    def write(self, reply: Reply) -> None:
        """Answer at once, whatever the settings (admin API, unknown paths)."""
        self.send(reply, 0.0)

    def done(self) -> None:
        if self.provider is not None:
            self.sim.stats.end(self.provider)
            self.provider = None
        self.busy = False
        if not self.keep_alive:
            if self.transport is not None:
                self.transport.close()
            return
        if self.queue:
            self.handle(self.queue.popleft())


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket made synchronously, so it accepts the moment the mode changes back."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)  # create_server listens again with its own backlog: pass 4096 there too
    sock.setblocking(False)
    return sock


class Simulator:
    """The provider simulator, in this process: ``await start()``, ``configure()``, ``await close()``.

    ``config`` maps "openai" | "anthropic" | "google" | "*" to settings
    (``{"*": {"latency_ms": 20}, "google": {"mode": "error"}}``); ``reset()``
    returns to it.
    """

    def __init__(self, config: dict | None = None) -> None:
        import random

        self.random = random.random
        self.wires = load_wires()
        self.route = Routes(self.wires).route
        self.unknown = next(iter(self.wires.values())).error  # unknown paths: the first provider's (OpenAI's) error shape
        self.initial = config or {}
        self.settings: dict[str, Settings] = {}
        self.stats = Stats()
        self.connections: set[Connection] = set()  # on the main port: dropped when it refuses
        self.admin_connections: set[Connection] = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.host = "127.0.0.1"
        self.port = 0
        self.admin_port: int | None = None
        self.server: asyncio.AbstractServer | None = None
        self.admin_server: asyncio.AbstractServer | None = None
        self.started = False
        self.mode_timers: dict[str, asyncio.TimerHandle] = {}
        self.apply(self.initial, fresh=True)

    # ---- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0, admin_port: int | None = None) -> None:
        """Listen on ``port`` (0: any free one) and, if given, on ``admin_port`` for /_sim/ only."""
        self.loop = asyncio.get_running_loop()
        self.host = host
        sock = _listen(host, port)
        self.port = sock.getsockname()[1]
        self.server = await self.loop.create_server(lambda: Connection(self, False), sock=sock, backlog=4096)
        if admin_port is not None:
            admin = _listen(host, admin_port)
            self.admin_port = admin.getsockname()[1]
            self.admin_server = await self.loop.create_server(lambda: Connection(self, True), sock=admin, backlog=4096)
        self.started = True
        self.sync_listener()

    async def close(self) -> None:
        for timer in self.mode_timers.values():
            timer.cancel()
        for server in (self.server, self.admin_server):
            if server is not None:
                server.close()
        for conn in [*self.connections, *self.admin_connections]:
            if conn.transport is not None:
                conn.transport.abort()
        self.server = self.admin_server = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- settings

    def apply(self, config: dict, fresh: bool = False) -> None:
        """Apply ``{provider|"*": settings}`` atomically: everything is checked before anything changes."""
        if not isinstance(config, dict):
            raise ValueError("config must be an object mapping a provider or '*' to settings")
        plan: list[tuple[str, dict]] = []
        for provider in sorted(config, key=lambda p: p != "*"):  # "*" first, then specifics
            updates = config[provider]
            if provider not in (*PROVIDERS, "*"):
                raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}, *")
            if not isinstance(updates, dict):
                raise ValueError(f"settings for {provider!r} must be an object")
            plan.append((provider, self._check(updates)))
        if fresh:
            self.settings = {p: Settings() for p in PROVIDERS}
            for timer in self.mode_timers.values():
                timer.cancel()
            self.mode_timers.clear()
        for provider, updates in plan:
            for p in PROVIDERS if provider == "*" else (provider,):
                self._set(p, dict(updates))
        self.sync_listener()

    def configure(self, provider: str = "*", **settings: object) -> dict:
        """Change some settings of one provider (or all: "*"); returns the whole config."""
        self.apply({provider: settings})
        return self.config()

    def config(self) -> dict:
        return {p: s.to_dict() for p, s in self.settings.items()}

    def reset(self) -> None:
        """Back to the start-up config, counters zeroed."""
        self.apply(self.initial, fresh=True)
        self.stats.clear()

    @staticmethod
    def _check(updates: dict) -> dict:
        updates = dict(updates)
        seconds = updates.pop("for_seconds", None)
        out = check(updates)
        if seconds is not None:
            if "mode" not in out:
                raise ValueError("for_seconds needs a mode")
            try:
                out["for_seconds"] = as_number(seconds, 0, None, lo_open=True)
            except Refused:
                raise ValueError(f"for_seconds must be a positive number, got {seconds!r}") from None
        return out

    def _set(self, provider: str, updates: dict) -> None:
        seconds = updates.pop("for_seconds", None)
        s = self.settings[provider]
        for name, value in updates.items():
            setattr(s, name, value)
        if "mode" in updates:
            timer = self.mode_timers.pop(provider, None)
            if timer is not None:
                timer.cancel()
            if seconds is not None and s.mode != "ok":
                loop = self.loop or asyncio.get_event_loop()
                self.mode_timers[provider] = loop.call_later(seconds, self._mode_over, provider)

    def _mode_over(self, provider: str) -> None:
        self.mode_timers.pop(provider, None)
        self.settings[provider].mode = "ok"
        self.sync_listener()

    def sync_listener(self) -> None:
        """Stop listening while every provider refuses; listen again as soon as one does not."""
        if not self.started:
            return
        refuse = all(s.mode == "refuse" for s in self.settings.values())
        if refuse and self.server is not None:
            self.server.close()
            self.server = None
            self.drop_connections()
        elif not refuse and self.server is None:
            sock = _listen(self.host, self.port)  # accepting (in the kernel) from here on
            self.loop.create_task(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        server = await self.loop.create_server(lambda: Connection(self, False), sock=sock, backlog=4096)
        if self.server is None and not all(s.mode == "refuse" for s in self.settings.values()):
            self.server = server
        else:
            server.close()  # the mode flipped again meanwhile

    def drop_connections(self) -> None:
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()

    # ---- admin API

    def admin(self, req: Request) -> Reply:
        """GET|POST /_sim/config, POST /_sim/reset, GET /_sim/stats."""
        if req.path == "/_sim/config":
            if req.method == b"GET":
                return _json(200, self.config())
            if req.method == b"POST":
                try:
                    body = orjson.loads(req.body or b"{}")
                    if not isinstance(body, dict):
                        raise ValueError("body must be a JSON object")
                    provider = body.pop("provider", "*")
                    if isinstance(provider, list):
                        self.apply({p: body for p in provider})
                    else:
                        self.apply({provider: body})
                except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
                    return _json(400, {"error": str(exc)})
                return _json(200, self.config())
        elif req.path == "/_sim/reset" and req.method == b"POST":
            self.reset()
            return _json(200, self.config())
        elif req.path == "/_sim/stats" and req.method == b"GET":
            return _json(200, self.stats.snapshot(len(self.connections)))
        return _json(404, {"error": f"no admin route {req.method.decode()} {req.path}"})


def _json(status: int, obj: object) -> Reply:
    return Reply(status, orjson.dumps(obj))
