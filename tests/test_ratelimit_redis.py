"""Shared limits through a real Redis and a real three-node Redis Cluster (both started here when needed).

Several ``Limiter`` objects on one loop stand for workers (each its own Redis
client and worker id); tests/test_ratelimit_e2e.py runs real gateway processes.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest

from gateway.auth import ApiKey
from gateway.config import load_settings
from gateway.pipeline.outcome import Outcome
from gateway.ratelimit import Limiter, connect
from gateway.request import ChatRequest
from tests.redis_server import _ping, own_redis_server


# Lease time-out for the accuracy tests: the test machine is shared and often loaded; a Redis that
# answers slowly must not turn into a fail-open there (the outage test keeps the default).
SLOW = 2.0


def settings_of(**env):
    return load_settings({"GATEWAY_CACHE": "off", "WORKER_PROCESSES": "4", **env})


def request(key: ApiKey) -> ChatRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return ChatRequest(body, "m", False, False, "r", key, {}, 0.0, 0.0, outcome=Outcome("r", 0.0))


async def admit(lim: Limiter, key: ApiKey) -> bool:
    try:
        pending = lim(request(key))
        if pending is not None:
            await pending
        return True
    except Exception as exc:  # noqa: BLE001 - only a 429 is a refusal; anything else fails the test
        assert getattr(exc, "status", None) == 429, repr(exc)
        return False


async def drive(workers: list[Limiter], key: ApiKey, seconds: float, weights: list[float], per_second: int = 400):
    """Offer ``per_second`` requests spread over the workers by ``weights``; returns (admitted, elapsed).

    ``drive.offered`` keeps how many were offered in all."""
    admitted = 0
    start = time.monotonic()
    i = 0
    step = 1.0 / per_second
    import random

    rnd = random.Random(7)
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        lim = rnd.choices(workers, weights)[0]
        admitted += await admit(lim, key)
        i += 1
        delay = start + i * step - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    drive.offered = i
    return admitted, time.monotonic() - start


def allowed(rpm: int, burst: int, seconds: float) -> float:
    return burst + rpm / 60.0 * seconds


async def close_all(workers):
    for w in workers:
        await w.close()
        await w.redis.aclose()


async def test_shared_limit_across_workers_with_skew(redis_url):
    s = settings_of(RATE_LIMIT_REQUESTS_PER_MINUTE="1200", RATE_LIMIT_BURST="60")
    key = ApiKey(key="k-" + uuid.uuid4().hex, name="k")
    workers = [Limiter(lambda: s, connect(redis_url, False, SLOW), timeout=SLOW) for _ in range(4)]
    try:
        admitted, elapsed = await drive(workers, key, 4.0, [0.9 * 0.5, 0.9 * 0.5, 0.05, 0.05])
    finally:
        await close_all(workers)
    limit = allowed(1200, 60, elapsed)
    assert abs(admitted - limit) <= 0.05 * limit, (admitted, limit)
    # Not a Redis call per request: a drained bucket costs about a call per worker per refilled token.
    assert sum(w.stats.redis_leases for w in workers) < drive.offered / 3


async def test_unused_lease_goes_back(redis_url):
    s = settings_of(RATE_LIMIT_REQUESTS_PER_MINUTE="60", RATE_LIMIT_BURST="100")
    key = ApiKey(key="k-" + uuid.uuid4().hex, name="k")
    a, b = (Limiter(lambda: s, connect(redis_url, False, SLOW), timeout=SLOW) for _ in range(2))
    try:
        # a takes a burst of demand (its lease grows), then goes quiet; its spare tokens must reach b.
        got_a = sum([await admit(a, key) for _ in range(40)])
        await asyncio.sleep(1.6)  # past the lease's lifetime: the sweeper hands it back
        assert a.shared[(key.key, "req")].allowance == 0 and a.stats.redis_returns >= 1
        got_b = sum([await admit(b, key) for _ in range(100)])
    finally:
        await close_all([a, b])
    assert got_a == 40 and 60 <= got_b <= 63  # 100 - 40, plus the refill of a few seconds


async def test_redis_outage_fails_open_then_resumes():
    s = settings_of(RATE_LIMIT_REQUESTS_PER_MINUTE="600", RATE_LIMIT_BURST="20", WORKER_PROCESSES="2")
    key = ApiKey(key="k-" + uuid.uuid4().hex, name="k")
    with own_redis_server() as server:
        workers = [Limiter(lambda: s, connect(server.url, False)) for _ in range(2)]
        try:
            await drive(workers, key, 1.0, [1, 1], per_second=100)
            assert all(w.stats.redis_leases for w in workers)
            server.stop()
            admitted, elapsed = await drive(workers, key, 2.0, [1, 1], per_second=100)
            # Local buckets at each worker's share: about the shared limit in all, never unlimited.
            assert admitted <= allowed(600, 20, elapsed) * 1.1 + 2
            assert admitted >= 600 / 60 * elapsed * 0.5
            assert all(w.stats.fail_open > 0 and w.stats.redis_errors > 0 for w in workers)
            assert all(w.report()["keys_on_fallback"] == 1 for w in workers)
            server.start()
            await drive(workers, key, 1.5, [1, 1], per_second=100)  # leasing resumes within a retry interval
            assert all(w.report()["keys_on_fallback"] == 0 for w in workers)
            leases = sum(w.stats.redis_leases for w in workers)
            admitted, elapsed = await drive(workers, key, 2.0, [1, 1], per_second=100)
            assert sum(w.stats.redis_leases for w in workers) > leases
            assert abs(admitted - 600 / 60 * elapsed) <= 0.1 * 600 / 60 * elapsed + 2  # the shared refill again
        finally:
            await close_all(workers)


# --- Redis Cluster ------------------------------------------------------------------------


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    import random
    import socket

    while True:
        p = random.randint(20000, 40000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 10000))
            return p
        except OSError:
            continue


class Cluster:
    """Three masters on loopback ports (no replicas), created with redis-cli --cluster create."""

    def __init__(self) -> None:
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed (apt-get install redis-server): the cluster test needs it")
        self.ports = [cluster_port() for _ in range(3)]
        self.dir = tempfile.mkdtemp(prefix="gw-cluster-")
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        for p in self.ports:
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", f"nodes-{p}.conf", "--save", "", "--appendonly", "no", "--dir", self.dir],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        deadline = time.monotonic() + 10
        while not all(_ping(p) for p in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("cluster nodes did not start")
            time.sleep(0.05)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "0",
             "--cluster-yes"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )
        deadline = time.monotonic() + 15
        while True:
            info = subprocess.run(["redis-cli", "-p", str(self.ports[0]), "cluster", "info"], capture_output=True, text=True).stdout
            if "cluster_state:ok" in info:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("cluster did not reach state ok: " + info)
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    c.start()
    try:
        yield c
    finally:
        c.stop()


async def test_shared_limit_on_redis_cluster(cluster):
    s = settings_of(RATE_LIMIT_REQUESTS_PER_MINUTE="600", RATE_LIMIT_BURST="30")
    keys = [ApiKey(key=f"k-{i}-" + uuid.uuid4().hex, name=f"k{i}") for i in range(6)]  # spread over the slots
    workers = [Limiter(lambda: s, connect(cluster.url, True, SLOW), timeout=SLOW) for _ in range(3)]
    for w in workers:
        await w.start()
    try:
        results = await asyncio.gather(*(drive(workers, k, 2.5, [0.8, 0.1, 0.1], per_second=80) for k in keys))
        leases = [w.stats.redis_leases for w in workers]
    finally:
        await close_all(workers)
    assert all(n > 0 for n in leases)
    for admitted, elapsed in results:
        limit = allowed(600, 30, elapsed)
        assert abs(admitted - limit) <= 0.05 * limit + 1, (admitted, limit)
    # The keys really live on different nodes of the cluster.
    import redis

    owners = set()
    for p in cluster.ports:
        r = redis.Redis(port=p)
        if any(True for _ in r.scan_iter(match="gw:rl:*", count=1000)):
            owners.add(p)
        r.close()
    assert len(owners) >= 2
