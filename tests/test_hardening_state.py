"""State keyed by names a client chooses stays bounded: unknown models get a 404 before any exists."""

from __future__ import annotations

import asyncio
import os
import random
import string

import orjson
import pytest

from gateway.config import load_settings
from gateway.errors import GatewayError
from gateway.pipeline.outcome import Outcome
from gateway.routing.resolve import catalogued
from gateway.routing.router import Router
from gateway.simulator import SimulatorProcess
from gateway.usage import MAX_ROWS, OTHER, Usage
from tests.harness import API_KEY, running_gateway, simulator_env

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _names(n: int, length: int, prefix: str = "gpt-4o-") -> list[str]:
    rnd = random.Random(9)
    return [prefix + "".join(rnd.choices(string.ascii_lowercase, k=length - len(prefix))) for _ in range(n)]


def test_catalogued_names_and_their_snapshots_only():
    for name in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "claude-3-5-haiku-20241022", "claude-3-5-haiku-latest",
                 "gemini-2.0-flash-001", "o3-mini"):
        assert catalogued(name), name
    for name in ("gpt-4o-minix", "gpt-4o-mini-2024", "claude-x", "gemini-2.0-flash-0010", "gpt-" + "a" * 200):
        assert not catalogued(name), name


async def test_unknown_models_get_a_404_and_leave_no_routing_state():
    router = Router(load_settings(simulator_env("http://127.0.0.1:9")))
    try:
        assert router.resolve("gpt-4o-mini-2024-07-18").deployments[0].model == "gpt-4o-mini-2024-07-18"
        health, implicit = len(router._health), len(router.state.implicit)
        for name in _names(2000, 200):
            with pytest.raises(GatewayError) as exc:
                router.resolve(name)
            assert exc.value.status == 404 and exc.value.code == "model_not_found"
        assert (len(router._health), len(router.state.implicit)) == (health, implicit)
    finally:
        await router.close()


def test_usage_rows_are_capped_and_the_rest_counted_under_other():
    usage = Usage()
    req = object()
    for i in range(MAX_ROWS + 500):
        out = Outcome(f"r{i}", 0.0)
        out.key_name, out.model, out.status, out.prompt_tokens = "k", f"m{i}", 200, 2
        usage.on_finish(req, out)
    assert len(usage.by_key) == MAX_ROWS + 1
    other = usage.by_key[("k", OTHER)]
    assert other.requests == 500 and other.prompt_tokens == 1000


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for t in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{t}/children") as f:
                kids = [int(x) for x in f.read().split()]
            out += kids
            todo += kids
    return out


def _worker_rss_kb(gw) -> int:
    """The largest VmRSS among the gateway's Granian workers."""
    best = 0
    for pid in _descendants(gw.proc.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"gateway.simulator" in f.read():
                    continue
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        best = max(best, rss)
    return best


async def test_10000_distinct_unknown_model_names_leave_memory_and_reports_bounded(http):
    with SimulatorProcess() as sim, running_gateway(simulator_env(sim.base_url) | {"GATEWAY_CACHE": "off"}) as gw:
        url = gw.url + "/v1/chat/completions"

        async def ask(model: str) -> int:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(url, data=orjson.dumps(body), headers=AUTH | {"content-type": "application/json"}) as r:
                assert r.status < 500
                await r.read()
                return r.status

        assert await ask("gpt-4o-mini") == 200
        before = _worker_rss_kb(gw)
        # Half 4 KB names (what the issue sent), half names of a valid length that no provider serves.
        names = _names(5000, 4096) + _names(5000, 200)
        sem = asyncio.Semaphore(32)

        async def one(name: str) -> int:
            async with sem:
                return await ask(name)

        statuses = await asyncio.gather(*(one(n) for n in names))
        after = _worker_rss_kb(gw)
        assert set(statuses[:5000]) == {400} and set(statuses[5000:]) == {404}
        async with http.get(gw.url + "/v1/usage", headers=AUTH) as r:
            rows = orjson.loads(await r.read())["data"]
        async with http.get(gw.url + "/v1/providers", headers=AUTH) as r:
            providers = await r.read()
    print(f"worker RSS {before} kB -> {after} kB after 10,000 distinct unknown model names")
    assert len(rows) == 1
    assert len(providers) < 20_000
    assert after - before < 10_000, (before, after)
