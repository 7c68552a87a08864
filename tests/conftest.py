"""Shared fixtures: a real Redis, a simulator per module, free ports."""

from __future__ import annotations

import os
import tempfile
import uuid

import aiohttp
import pytest

from gateway.simulator import SimulatorProcess
from tests.redis_server import free_port, session_redis_url

# Every gateway a test starts inherits this: never the default SQLite file in the working directory (the
# repository), never a database the developer's own DATABASE_URL names.
os.environ["DATABASE_URL"] = "sqlite:///" + os.path.join(tempfile.mkdtemp(prefix="gateway-db-"), "gateway.db")


@pytest.fixture(scope="session")
def redis_url() -> str:
    with session_redis_url() as url:
        yield url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test (or run) uses, so tests can share one server."""
    return f"gwtest:{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
async def http():
    """An HTTP client for tests that talk to a running gateway or simulator."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
def sim():
    """One simulator process (all three providers) shared by a module's tests; reset it between them."""
    with SimulatorProcess() as s:
        yield s
@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A real PostgreSQL server (tests/pg_server.py): the machine's, or a private one; never skipped."""
    from tests.pg_server import session_pg

    with session_pg() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_db(request, tmp_path) -> str:
    """A fresh, empty database of each kind, as DATABASE_URL would name it; dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ledger.db"
        return
    from tests.pg_server import drop_database, new_database

    admin = request.getfixturevalue("pg_admin_url")
    url = await new_database(admin)
    yield url
    await drop_database(admin, url)


@pytest.fixture
def db_url(empty_db) -> str:
    """``empty_db`` migrated to the current schema; the SQLAlchemy URL (async driver named)."""
    from gateway.config.validate import database_url
    from gateway.db import upgrade

    url = database_url("DATABASE_URL", empty_db)
    upgrade(url)
    return url


@pytest.fixture
def fresh_sim(sim):
    """The module's simulator at its start-up config, before and after the test."""
    sim.reset()
    yield sim
    sim.reset()
