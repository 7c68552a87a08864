"""The cache against a real Redis: mirror, convergence, warm start, TTL, outages."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest
import redis.asyncio as aioredis

from gateway.cache import Cache
from tests.redis_server import RedisServer, own_redis_server
from tests.test_cache_helpers import config, eventually, lookup, store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def _pair(redis_url, prefix, **kw):
    a = Cache(config(redis_prefix=prefix, **kw), redis_url)
    b = Cache(config(redis_prefix=prefix, **kw), redis_url)
    await a.start()
    await b.start()
    return a, b


async def test_two_workers_converge_within_a_second(redis_url, redis_prefix):
    a, b = await _pair(redis_url, redis_prefix)
    try:
        await store(a, "How do I reverse a list in Python?", "reversed()")
        # Exact hit on the other worker within a second.
        hit, took = await eventually(lambda: _status(b, "How do I reverse a list in Python?", "hit"), timeout=1.0)
        assert hit, "worker b never saw worker a's entry"
        assert took < 1.0
        # The mirrored entry carries its vector: semantic hits work there too.
        assert (await lookup(b, "How can I reverse a list in Python?")).status == "semantic-hit"
        # And the other way round.
        await store(b, "What is the capital of France?", "Paris.")
        hit, took = await eventually(lambda: _status(a, "What is the capital of France?", "hit"), timeout=1.0)
        assert hit and took < 1.0
        assert a.stats()["redis"]["mirrored_in"] >= 1 and b.stats()["redis"]["mirrored_in"] >= 1
        # A flush on one worker reaches the other.
        assert await b.flush(None) >= 2
        gone, took = await eventually(lambda: a.stats()["entries"] == 0, timeout=1.0)
        assert gone and took < 1.0
        r = aioredis.Redis.from_url(redis_url)
        assert [k async for k in r.scan_iter(match=f"{redis_prefix}e:*")] == []
        await r.aclose()
    finally:
        await a.close()
        await b.close()


async def _status(cache, content, status, **kw):
    return (await lookup(cache, content, **kw)).status == status


CHILD = textwrap.dedent("""
    import asyncio, sys, time
    sys.path.insert(0, {root!r})
    from gateway.cache import Cache
    from tests.test_cache_helpers import config, lookup, store

    async def main():
        c = Cache(config(redis_prefix={prefix!r}), {url!r})
        await c.start()
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        t_go = float(line.split()[1])
        while (await lookup(c, "Question from the parent?")).status != "hit":
            if time.time() - t_go > 3:
                print("child-timeout", flush=True)
                return
            await asyncio.sleep(0.01)
        print("child-saw", time.time() - t_go, flush=True)
        await store(c, "Question from the child?", "child answer")
        print("stored", time.time(), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await c.close()

    asyncio.run(main())
""")


async def test_two_processes_converge_through_redis(redis_url, redis_prefix):
    """Two gateway workers as two OS processes on one Redis: each sees the other's entries within a second."""
    parent = Cache(config(redis_prefix=redis_prefix), redis_url)
    await parent.start()
    code = CHILD.format(root=ROOT, prefix=redis_prefix, url=redis_url)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=ROOT, stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE)
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        await store(parent, "Question from the parent?", "parent answer")
        proc.stdin.write(f"go {time.time()}\n".encode())
        await proc.stdin.drain()
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()
        assert line[0] == "child-saw", line
        assert float(line[1]) < 1.0
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()
        assert line[0] == "stored"
        t_stored = float(line[1])
        hit, _ = await eventually(lambda: _status(parent, "Question from the child?", "hit"), timeout=2.0)
        assert hit
        assert time.time() - t_stored < 1.0
        proc.stdin.write(b"bye\n")
        await proc.stdin.drain()
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await parent.close()


async def test_warm_start_loads_live_entries(redis_url, redis_prefix):
    a = Cache(config(redis_prefix=redis_prefix), redis_url)
    await a.start()
    for i in range(20):
        await store(a, f"Warm question {i}: what is {i} squared?", f"{i * i}")
    await store(a, "Expiring question?", "gone soon", headers={"x-gateway-cache-ttl": "1"})
    await a.close()
    await asyncio.sleep(1.1)
    b = Cache(config(redis_prefix=redis_prefix), redis_url)
    await b.start()  # a restarted worker: everything live is there when start() returns
    try:
        s = b.stats()
        assert s["redis"]["up"] and s["redis"]["loaded"] == 20 and s["entries"] == 20
        assert (await lookup(b, "Warm question 7: what is 7 squared?")).status == "hit"
        assert (await lookup(b, "Warm question 7: what's 7 squared?")).status == "semantic-hit"
        assert (await lookup(b, "Expiring question?")).status == "miss"
        # The lexical analyses of loaded entries are made in the background, not by lookups.
        for _ in range(100):
            if all(e.analysis is not None for e in b.entries.by_key.values() if e.text is not None):
                break
            await asyncio.sleep(0.02)
        assert all(e.analysis is not None for e in b.entries.by_key.values() if e.text is not None)
    finally:
        await b.close()


async def test_ttl_is_written_to_redis(redis_url, redis_prefix):
    c = Cache(config(redis_prefix=redis_prefix, ttl_seconds=120), redis_url)
    await c.start()
    r = aioredis.Redis.from_url(redis_url)
    try:
        await store(c, "Default TTL?", "yes")
        await store(c, "Header TTL?", "yes", headers={"x-gateway-cache-ttl": "1"})
        keys = {k: await r.ttl(k) async for k in r.scan_iter(match=f"{redis_prefix}e:*")}
        assert sorted(keys.values()) == [1, 120]
        await asyncio.sleep(1.3)
        assert len([k async for k in r.scan_iter(match=f"{redis_prefix}e:*")]) == 1
        assert (await lookup(c, "Header TTL?")).status == "miss"
        assert (await lookup(c, "Default TTL?")).status == "hit"
    finally:
        await r.aclose()
        await c.close()


async def test_entries_written_without_content_keys_still_hit_semantically(redis_url, redis_prefix):
    """An entry mirrored by a version that wrote no content key ('ck') is analysed when loaded."""
    import orjson

    a = Cache(config(redis_prefix=redis_prefix), redis_url)
    await a.start()
    r = aioredis.Redis.from_url(redis_url)
    try:
        await store(a, "How do I reverse a list in Python?", "reversed()")
        await a.close()
        keys = [k async for k in r.scan_iter(match=f"{redis_prefix}e:*")]
        assert len(keys) == 1
        meta = orjson.loads(await r.hget(keys[0], "m"))
        assert isinstance(meta.pop("ck"), int)
        await r.hset(keys[0], "m", orjson.dumps(meta))  # as the earlier format had it
        b = Cache(config(redis_prefix=redis_prefix), redis_url)
        await b.start()
        try:
            assert b.stats()["redis"]["loaded"] == 1
            assert (await lookup(b, "How can I reverse a list in Python?")).status == "semantic-hit"
        finally:
            await b.close()
    finally:
        await r.aclose()


async def test_redis_killed_and_restarted_mid_run():
    """Requests keep being served while Redis is gone; errors are counted; the mirror resumes and refills Redis."""
    with own_redis_server() as server:
        a = Cache(config(), server.url)
        b = Cache(config(), server.url)
        await a.start()
        await b.start()
        try:
            await store(a, "Before the outage?", "before")
            assert (await eventually(lambda: _status(b, "Before the outage?", "hit")))[0]
            server.stop()
            # Lookups and stores go on, locally, with no error for the caller.
            assert (await lookup(a, "Before the outage?")).status == "hit"
            assert (await lookup(a, "Before the outage, please?")).status == "semantic-hit"
            await store(a, "During the outage?", "during")
            assert (await lookup(a, "During the outage?")).status == "hit"
            down, _ = await eventually(lambda: not a.stats()["redis"]["up"], timeout=3)
            assert down
            s = a.stats()["redis"]
            assert s["errors"] >= 1 and s["last_error"]
            server.start()  # same port, empty (no persistence)
            up, took = await eventually(lambda: a.stats()["redis"]["up"] and b.stats()["redis"]["up"], timeout=5)
            assert up, a.stats()["redis"]
            # The mirror resumed: what a stored during the outage reaches b ...
            assert (await eventually(lambda: _status(b, "During the outage?", "hit"), timeout=2))[0]
            # ... and Redis holds the live entries again, for the next worker that starts.
            c = Cache(config(), server.url)
            await c.start()
            try:
                assert (await lookup(c, "During the outage?")).status == "hit"
                assert (await lookup(c, "Before the outage?")).status == "hit"
            finally:
                await c.close()
            # New entries flow again.
            await store(b, "After the outage?", "after")
            assert (await eventually(lambda: _status(a, "After the outage?", "hit")))[0]
        finally:
            await a.close()
            await b.close()


async def test_start_with_redis_down_degrades_then_connects():
    server = RedisServer()  # not started yet
    c = Cache(config(), server.url)
    t0 = time.monotonic()
    await c.start()
    try:
        assert time.monotonic() - t0 < 2
        assert not c.stats()["redis"]["up"]
        await store(c, "Local only?", "yes")
        assert (await lookup(c, "Local only?")).status == "hit"
        server.start()
        up, _ = await eventually(lambda: c.stats()["redis"]["up"], timeout=5)
        assert up
        r = aioredis.Redis.from_url(server.url)
        assert len([k async for k in r.scan_iter(match="gw:cache:e:*")]) == 1  # the backlog was written
        await r.aclose()
    finally:
        await c.close()
        server.stop()


@pytest.mark.parametrize("n", [300])
async def test_namespace_flush_in_redis(redis_url, redis_prefix, n):
    a, b = await _pair(redis_url, redis_prefix)
    try:
        for i in range(n):
            ns = "alpha" if i % 2 else "beta"
            req_headers = {"x-gateway-cache-namespace": ns}
            await store(a, f"Namespaced question {i}?", str(i), headers=req_headers)
        assert (await eventually(lambda: b.stats()["entries"] == n, timeout=2))[0]
        assert await a.flush("alpha") == n // 2
        assert (await eventually(lambda: b.stats()["entries"] == n // 2, timeout=1))[0]
        r = aioredis.Redis.from_url(redis_url)
        assert len([k async for k in r.scan_iter(match=f"{redis_prefix}e:beta:*")]) == n // 2
        assert [k async for k in r.scan_iter(match=f"{redis_prefix}e:alpha:*")] == []
        await r.aclose()
    finally:
        await a.close()
        await b.close()
