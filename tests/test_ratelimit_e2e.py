"""One key's limit across two gateway processes of four workers each, sharing one Redis.

Real processes (``gateway serve``), a real Redis we own (so it can be killed),
the simulator as the provider. Traffic is skewed: 90 % of it to one instance.
"""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import pytest

from gateway.simulator import SimulatorProcess
from tests.harness import ADMIN_KEY, API_KEY, running_gateway, simulator_env
from tests.redis_server import own_redis_server

RPM, BURST = 1200, 40  # 20 a second
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is machine learning?"}]}


async def offer(session, urls: list[str], weights: list[float], seconds: float, per_second: int, counts: dict) -> None:
    """Send ``per_second`` requests a second, each to an instance drawn by ``weights``, for ``seconds``."""
    rnd = random.Random(11)
    start = time.monotonic()
    headers = {"authorization": f"Bearer {API_KEY}"}

    async def one(url: str) -> None:
        try:
            async with session.post(url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
                await r.read()
                counts[r.status] = counts.get(r.status, 0) + 1
        except aiohttp.ClientError as exc:
            counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1

    tasks = []
    i = 0
    while time.monotonic() - start < seconds:
        tasks.append(asyncio.ensure_future(one(rnd.choices(urls, weights)[0])))
        i += 1
        delay = start + i / per_second - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*tasks)


async def stats(session, urls) -> list:
    out = []
    for url in urls:
        for _ in range(4):
            async with session.get(url + "/admin/limits", headers={"authorization": f"Bearer {ADMIN_KEY}"}) as r:
                out.append(await r.json())
    return out


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess() as s:
        yield s


async def test_limit_holds_across_instances_and_a_redis_restart(sim):
    with own_redis_server() as redis:
        env = simulator_env(sim.base_url) | {
            "REDIS_URL": redis.url, "GATEWAY_CACHE": "off", "RATE_LIMIT_REQUESTS_PER_MINUTE": str(RPM),
            "RATE_LIMIT_BURST": str(BURST), "RATE_LIMIT_REDIS_TIMEOUT_SECONDS": "2", "RATE_LIMIT_ENABLED": "true",
        }
        with running_gateway(env, workers=4) as a, running_gateway(env, workers=4) as b:
            urls, skew = [a.url, b.url], [0.9, 0.1]
            conn = aiohttp.TCPConnector(limit=64, force_close=True)  # new connections spread over the workers
            async with aiohttp.ClientSession(connector=conn) as session:
                # 1. Steady: three times the limit, 90 % to one instance.
                counts: dict = {}
                await offer(session, urls, skew, 6.0, 60, counts)
                allowed = BURST + RPM / 60 * 6.0  # the window requests were sent in
                assert set(counts) <= {200, 429}, counts
                assert abs(counts.get(200, 0) - allowed) <= 0.05 * allowed, (counts, allowed)

                # 2. Redis killed mid-run, restarted 2 s later: no client error, only answers and 429s.
                outage: dict = {}
                run = asyncio.ensure_future(offer(session, urls, skew, 5.0, 60, outage))
                await asyncio.sleep(1.0)
                redis.stop()
                await asyncio.sleep(2.0)
                redis.start()
                await run
                assert set(outage) <= {200, 429}, outage
                assert outage.get(200, 0) > 0

                # 3. Back to the shared limit within seconds: the steady refill, nothing per worker.
                after: dict = {}
                await offer(session, urls, skew, 4.0, 60, after)
                refill = RPM / 60 * 4.0
                assert set(after) <= {200, 429}, after
                assert abs(after.get(200, 0) - refill) <= 0.1 * refill + 2, (after, refill, await stats(session, urls))
