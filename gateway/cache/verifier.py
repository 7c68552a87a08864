"""The shared verifier: one process holding MiniLM for every worker of ``gateway serve``.

    python -m gateway.cache.verifier --socket PATH [--threads N] [--window 128] [--parent PID]

Each Granian worker used to load the model itself (~50 MB of RSS each, and its own executor thread
running it). ``gateway serve`` now starts this process before the workers (see
:class:`gateway.cache.verifier_client.Supervisor`, which restarts it if it dies); the workers reach it
over a Unix socket (:mod:`gateway.cache.verifier_wire`, client: :class:`SharedVerifier`).

Two kinds of work, two priorities:

* lookups (a request waits): ``--threads`` threads at normal priority, one ONNX run each at a time;
* stored prompts (embedded ahead of their first use): one thread at ``SCHED_IDLE``, and only while no
  lookup is running or queued, so it takes nothing from the workers or from lookups when the machine is
  busy. When it never gets to a prompt, that prompt is embedded at its first semantic use, as before.

Sockets are read on an asyncio loop; the model runs on the threads (onnxruntime releases the GIL).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import queue
import signal
import sys
import threading
import time

import orjson

from gateway.cache import verifier_wire as wire
from gateway.cache.embed import MiniLMVerifier

log = logging.getLogger("gateway.cache.verifier")


class _Conn(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections += 1

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.server.connections -= 1

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            for rid, kind, count, body in wire.frames(self.buf):
                self.server.submit(self, rid, kind, count, body)
        except ValueError as exc:
            log.warning("verifier: %s: closing that connection", exc)
            self.transport.close()


class Server:
    def __init__(self, path: str, threads: int, window: int) -> None:
        self.path = path
        self.threads = max(1, threads)
        self.model = MiniLMVerifier(window=window)
        self.lookups: queue.SimpleQueue = queue.SimpleQueue()
        self.stored: queue.SimpleQueue = queue.SimpleQueue()
        self._busy = [False] * self.threads
        self.error: str | None = None
        self.connections = 0
        self.served = {"lookup_texts": 0, "stored_texts": 0, "errors": 0}
        self.loop: asyncio.AbstractEventLoop | None = None

    # ---------------------------------------------------------------- the socket side (event loop)

    def submit(self, conn: _Conn, rid: int, kind: int, count: int, body: bytes) -> None:
        if kind == wire.HELLO:
            info = {"pid": os.getpid(), "ready": self.model.ready, "graph": self.model.graph, "error": self.error,
                    "threads": self.threads, "window": self.model.window, **self.served}
            conn.send(wire.hello(rid, orjson.dumps(info)))
            return
        try:
            texts = wire.texts_of(body, count)
        except (ValueError, UnicodeError) as exc:
            conn.send(wire.error(rid, f"bad request: {exc}"))
            return
        (self.lookups if kind == wire.LOOKUP else self.stored).put((conn, rid, texts))

    # ---------------------------------------------------------------- the model side (threads)

    def _load(self) -> None:
        try:
            self.model.warm()
            self.error = None
            log.info("verifier: MiniLM loaded (%s graph), pid %d, %d lookup thread(s)", self.model.graph,
                     os.getpid(), self.threads)
        except Exception as exc:  # noqa: BLE001 - every request then answers this error (a miss)
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("verifier: MiniLM did not load: %s", self.error)
            return
        for i in range(self.threads):
            threading.Thread(target=self._lookup_thread, args=(i,), name=f"verify-{i}", daemon=True).start()
        threading.Thread(target=self._stored_thread, name="verify-stored", daemon=True).start()

    def _run(self, job, what: str) -> None:
        conn, rid, texts = job
        try:
            out = [self.model.windows(t) for t in texts]
            frame = wire.answer(rid, out)
            self.served[what] += len(texts)
        except Exception as exc:  # noqa: BLE001 - the worker answers miss
            self.served["errors"] += 1
            frame = wire.error(rid, f"{type(exc).__name__}: {exc}")
        self.loop.call_soon_threadsafe(conn.send, frame)

    def _lookup_thread(self, i: int) -> None:
        while True:
            job = self.lookups.get()
            self._busy[i] = True
            try:
                self._run(job, "lookup_texts")
            finally:
                self._busy[i] = False

    def _stored_thread(self) -> None:
        idle_priority()
        while True:
            job = self.stored.get()
            while any(self._busy) or not self.lookups.empty():
                time.sleep(0.002)  # lookups first
            self._run(job, "stored_texts")

    # ---------------------------------------------------------------- life

    async def serve(self, parent: int | None) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        server = await self.loop.create_unix_server(lambda: _Conn(self), self.path)
        os.chmod(self.path, 0o600)
        threading.Thread(target=self._load, name="verify-load", daemon=True).start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        async with server:
            while not stop.is_set():
                if parent is not None and os.getppid() != parent:
                    log.warning("verifier: gateway serve (pid %d) is gone: exiting", parent)
                    break
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        try:
            os.unlink(self.path)
        except OSError:
            pass


def idle_priority() -> None:
    """This thread only gets CPU that nothing else wants (Linux: policies are per thread)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass


def _die_with_parent() -> None:
    # A SIGKILLed `gateway serve` would otherwise leave this process behind (Linux only; the
    # getppid() check in serve() covers the rest, within a second).
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m gateway.cache.verifier", description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--threads", type=int, default=1, help="lookup threads (one ONNX run each at a time)")
    ap.add_argument("--window", type=int, default=128, help="tokens per window (the cache's verify_window_tokens)")
    ap.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    args = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _die_with_parent()
    if args.parent is not None and os.getppid() != args.parent:
        sys.exit(0)
    asyncio.run(Server(args.socket, args.threads, args.window).serve(args.parent))


if __name__ == "__main__":
    main()
