"""A real PostgreSQL for the tests: the machine's if one answers, else our own. Never skipped, never faked.

``session_pg()`` yields an admin URL of a server (``PG_TEST_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``, or a private server started
with initdb/pg_ctl when nothing answers there); ``new_database`` makes a
throwaway database on it. ``PostgresServer`` is a private server in a
temporary directory on a free port, for the outage test that stops it.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import asyncpg

from tests.redis_server import free_port

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"{name} is not installed: .ci/run installs PostgreSQL (apt-get install postgresql)")
    return found


def _as_owner() -> list[str]:
    """PostgreSQL refuses to run as root: run it as the 'postgres' user then."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


class PostgresServer:
    """A private server we own on ``port`` (trust auth, user postgres); ``stop``/``start`` for outage tests."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gw-pg-")
        self.data = os.path.join(self.dir, "data")
        if os.geteuid() == 0:
            os.chown(self.dir, pwd.getpwnam("postgres").pw_uid, -1)
        subprocess.run(
            [*_as_owner(), _binary("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*_as_owner(), _binary("pg_ctl"), "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "start"],
            check=True, stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        subprocess.run([*_as_owner(), _binary("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop"],
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def own_pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


def _answers(url: str) -> bool:
    """A server accepts a connection and a login there (its own thread: callers may be inside a loop)."""

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
            return False
        await conn.close()
        return True

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, probe()).result()


@contextmanager
def session_pg() -> Iterator[str]:
    url = os.environ.get("PG_TEST_URL", DEFAULT_URL)
    if _answers(url):
        yield url
        return
    with own_pg_server() as server:
        yield server.url


def _with_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


async def new_database(admin_url: str) -> str:
    """A fresh, empty database on the server of ``admin_url``; its URL."""
    name = "gwtest_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_db(admin_url, name)


async def drop_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
