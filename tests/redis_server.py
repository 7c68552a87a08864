"""A real Redis for the tests: the machine's if one answers, else our own.

Never a fake. When nothing listens on 127.0.0.1:6379 we start ``redis-server``
on a free port (no persistence) and stop it at the end of the session.
``own_redis_server()`` always starts a private one, for tests that kill it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server process we own on ``port``; ``stop``/``start`` for outage tests."""

    def __init__(self, port: int | None = None, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: .ci/run installs it (apt-get install redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="gw-redis-")
        # persistent: the data survives a kill -9 (append-only file, fsync on every write).
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self.dir,
             *(("--appendonly", "yes", "--appendfsync", "always") if self.persistent else ("--appendonly", "no"))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _ping(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@contextmanager
def own_redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def session_redis_url() -> Iterator[str]:
    """The machine's Redis when reachable (REDIS_TEST_PORT, default 6379), else a private one."""
    port = int(os.environ.get("REDIS_TEST_PORT", "6379"))
    if _ping(port):
        yield f"redis://127.0.0.1:{port}/0"
        return
    with own_redis_server() as server:
        yield server.url
