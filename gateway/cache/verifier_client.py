"""The workers' side of the shared verifier (:mod:`gateway.cache.verifier`), and its supervisor in ``gateway serve``.

:class:`SharedVerifier` is the ``minilm`` verifier of a worker when ``gateway serve`` started the shared
process (``GATEWAY_VERIFIER_SOCKET`` names its socket). It never blocks the event loop and never fails a
request: while the process is down, restarting or too slow (``embedder_timeout_seconds``), a lookup that
needs it gets an exception, which the semantic tier turns into a miss; it reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Callable

import numpy as np
import orjson

from gateway.cache import verifier_wire as wire
from gateway.cache.embed import Verifier

log = logging.getLogger("gateway.cache")

SOCKET_ENV = "GATEWAY_VERIFIER_SOCKET"
STORED_BATCH = 16  # stored prompts per STORED request
STORED_BACKLOG = 1024  # as semantic.PRE_EMBED_BACKLOG: past it a prompt is embedded at its first use
LOAD_WAIT = 20.0  # the longest a lookup waits for the model to load (start-up: ~4-10 s)
SUSPECT_SECONDS = 1.0  # after a lookup timed out, lookups answer miss at once for this long
STORED_TIMEOUT = 120.0  # a STORED request runs at idle priority: on a busy machine it may wait long


class VerifierUnavailable(RuntimeError):
    pass


class _Client(asyncio.Protocol):
    def __init__(self, owner: SharedVerifier) -> None:
        self.owner = owner
        self.buf = bytearray()
        self.pending: dict[int, asyncio.Future] = {}  # request id -> its answer, on this connection

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.owner._lost(self, exc)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            for rid, kind, count, body in wire.frames(self.buf):
                self.owner._answer(self, rid, kind, count, body)
        except ValueError:
            self.transport.close()  # not the verifier speaking: connection_lost fails what waits


def _arrays(body: bytes, count: int) -> list[np.ndarray]:
    out, i = [], 0
    for _ in range(count):
        w, d = wire.SHAPE.unpack_from(body, i)
        i += wire.SHAPE.size
        out.append(np.frombuffer(body, dtype="<f4", count=w * d, offset=i).reshape(w, d))
        i += 4 * w * d
    return out


class SharedVerifier(Verifier):
    """MiniLM in the shared process, over its Unix socket. ``awindows([query, *stored])``: the query's
    windows in float32, the stored prompts' in float16 (as the in-process verifier keeps them)."""

    name = "minilm"
    dim = 384
    is_async = True
    shared = True

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self.graph: str | None = None
        self.server_pid: int | None = None
        self._proto: _Client | None = None
        self._ready = False
        self._rid = 0
        self._connecting: asyncio.Task | None = None
        self._retry_at = 0.0
        self._suspect_until = 0.0
        self._backoff = 0.05
        self.stored: deque = deque()
        self._wake: asyncio.Event | None = None
        self.connects = self.lost = self.unavailable = self.timeouts = 0
        self.pre_embedded = self.pre_embed_skipped = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ state

    @property
    def ready(self) -> bool:
        return self._ready and self._proto is not None

    def state(self) -> dict:
        """For /admin/cache: the shared process as this worker sees it."""
        return {"shared": True, "connected": self._proto is not None, "server_pid": self.server_pid,
                "connects": self.connects, "connections_lost": self.lost, "unavailable": self.unavailable,
                "timeouts": self.timeouts, "pre_embedded": self.pre_embedded,
                "pre_embed_skipped": self.pre_embed_skipped, "stored_waiting": len(self.stored),
                "last_error": self.last_error}

    # ------------------------------------------------------------------ connection

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _t, proto = await asyncio.wait_for(loop.create_unix_connection(lambda: _Client(self), self.path), 1.0)
        except (OSError, asyncio.TimeoutError) as exc:
            self._drop(f"connect: {type(exc).__name__}: {exc}")
            raise VerifierUnavailable(self.last_error) from None
        self._proto = proto
        try:
            await self._hello()
        except Exception as exc:  # noqa: BLE001 - listening but not answering: not a verifier to wait on
            self._drop(f"hello: {type(exc).__name__}: {exc}")
            raise VerifierUnavailable(self.last_error) from None
        self._backoff = 0.05
        self.last_error = None
        self.connects += 1

    def _drop(self, why: str) -> None:
        proto, self._proto, self._ready = self._proto, None, False
        self.last_error = why
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 1.0)
        if proto is not None:
            proto.transport.close()
        if self._wake is not None:
            self._wake.set()  # run() reconnects

    async def _hello(self) -> None:
        info = orjson.loads(await self._call(wire.HELLO, [], 2.0))
        self.server_pid = info.get("pid")
        self.graph = info.get("graph")
        self._ready = bool(info.get("ready"))
        if info.get("error"):
            self.last_error = f"verifier process: {info['error']}"

    async def _ensure(self) -> None:
        if self._proto is not None:
            return
        if time.monotonic() < self._retry_at:
            raise VerifierUnavailable(self.last_error or "the shared verifier is not reachable")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        await asyncio.shield(self._connecting)

    def _lost(self, proto: _Client, exc) -> None:
        if self._proto is proto:
            self._proto = None
            self._ready = False
            self.lost += 1
            self.last_error = f"connection lost: {exc or 'closed by the verifier'}"
            log.warning("cache: the shared verifier's connection closed (%s); lookups that need it answer miss "
                        "until it is back", exc or "closed")
            if self._wake is not None:
                self._wake.set()  # run() reconnects
        for fut in proto.pending.values():
            if not fut.done():
                fut.set_exception(VerifierUnavailable("the shared verifier's connection closed"))
        proto.pending.clear()

    def _answer(self, proto: _Client, rid: int, kind: int, count: int, body: bytes) -> None:
        fut = proto.pending.pop(rid, None)
        if fut is None or fut.done():
            return  # timed out already
        if kind == wire.OK:
            fut.set_result(body if count == 0 else _arrays(body, count))
        else:
            fut.set_exception(RuntimeError(f"verifier process: {body.decode('utf-8', 'replace')}"))

    async def _call(self, kind: int, texts: list[str], timeout: float):
        proto = self._proto
        if proto is None:
            raise VerifierUnavailable("not connected")
        self._rid = (self._rid + 1) & 0xFFFFFFFF
        rid = self._rid
        fut = asyncio.get_running_loop().create_future()
        proto.pending[rid] = fut
        proto.transport.write(wire.request(rid, kind, texts))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            proto.pending.pop(rid, None)
            self.timeouts += 1
            raise VerifierUnavailable(f"no answer from the shared verifier within {timeout:g} s") from None

    # ------------------------------------------------------------------ lookups

    async def awindows(self, texts: list[str]) -> list[np.ndarray]:
        try:
            if time.monotonic() < self._suspect_until:
                raise VerifierUnavailable(self.last_error or "the shared verifier did not answer in time")
            await self._ensure()
        except VerifierUnavailable:
            self.unavailable += 1
            raise
        # While the process loads the model it queues lookups: they wait for it, as they waited for
        # the in-process verifier's warm(), but not for ever.
        timeout = self.timeout if self._ready else max(self.timeout, LOAD_WAIT)
        out = []
        try:
            for lo in range(0, len(texts), wire.MAX_TEXTS):
                out += await self._call(wire.LOOKUP, texts[lo:lo + wire.MAX_TEXTS], timeout)
        except VerifierUnavailable as exc:
            if self._proto is not None:  # a timeout: stuck or swamped; the next lookups do not queue behind it
                self._suspect_until = time.monotonic() + SUSPECT_SECONDS
                self.last_error = str(exc)
            raise
        self._ready = True
        return [out[0].copy()] + [a.astype(np.float16) for a in out[1:]]

    # ------------------------------------------------------------------ stored prompts, embedded ahead

    def embed_later(self, e) -> None:
        """A short prompt just stored: the shared process embeds it when it has nothing else to do."""
        if len(self.stored) >= STORED_BACKLOG:
            self.pre_embed_skipped += 1
            return
        self.stored.append(e)
        if self._wake is not None:
            self._wake.set()

    async def run(self, alive: Callable[[object], bool]) -> None:
        """Keep connected (and asking until the model is loaded), and send stored prompts ahead of use."""
        self._wake = asyncio.Event()
        while True:
            try:
                if self._proto is None:
                    await self._ensure()
                if not self._ready:
                    await self._hello()
                    if not self._ready:
                        await asyncio.sleep(0.25)
                        continue
                batch = []
                while self.stored and len(batch) < STORED_BATCH:
                    e = self.stored.popleft()
                    if e.windows is None and alive(e):
                        batch.append(e)
                if not batch:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                vecs = await self._call(wire.STORED, [e.text for e in batch], STORED_TIMEOUT)
                for e, w in zip(batch, vecs):
                    if e.windows is None:
                        e.windows = w.astype(np.float16)
                self.pre_embedded += len(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - those prompts are embedded at first use instead
                self.last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(max(0.05, self._retry_at - time.monotonic()))

    async def close(self) -> None:
        if self._proto is not None:
            self._proto.transport.close()
            self._proto = None


class Supervisor:
    """Runs the shared verifier process for ``gateway serve`` and starts it again whenever it exits.

    Started before Granian's workers, so they inherit ``GATEWAY_VERIFIER_SOCKET``; a restart keeps the
    socket's path, and the workers reconnect by themselves.
    """

    def __init__(self, socket_dir: str, threads: int, window: int) -> None:
        self.dir = socket_dir
        self.path = os.path.join(socket_dir, "verifier.sock")
        self.threads, self.window = threads, window
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = False
        self._lock = threading.Lock()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway.cache.verifier", "--socket", self.path, "--threads", str(self.threads),
                "--window", str(self.window), "--parent", str(os.getpid())]

    def start(self) -> None:
        with self._lock:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL)
        threading.Thread(target=self._watch, name="verifier-supervisor", daemon=True).start()

    def _watch(self) -> None:
        delay = 0.5
        while True:
            proc = self.proc
            born = time.monotonic()
            rc = proc.wait()
            with self._lock:
                if self._stopping:
                    return
            delay = 0.5 if time.monotonic() - born > 30 else min(delay * 2, 10.0)
            log.error("the shared cache verifier (pid %d) exited with %s; starting it again in %.1f s "
                      "(semantic lookups answer miss meanwhile)", proc.pid, rc, delay)
            time.sleep(delay)
            with self._lock:
                if self._stopping:
                    return
                self.restarts += 1
                self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            if _exited(proc, 5) is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _exited(proc: subprocess.Popen, seconds: float) -> int | None:
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return None
