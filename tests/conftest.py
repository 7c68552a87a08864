"""Shared fixtures: a real Redis, a simulator per module, free ports."""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from gateway.simulator import SimulatorProcess
from tests.redis_server import free_port, session_redis_url


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


@pytest.fixture
def fresh_sim(sim):
    """The module's simulator at its start-up config, before and after the test."""
    sim.reset()
    yield sim
    sim.reset()
