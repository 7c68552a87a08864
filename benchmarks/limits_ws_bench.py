#!/usr/bin/env python
"""Limits and /ws figures: limit accuracy, the limiter's hot-path cost, WebSocket capacity and latency.

    python benchmarks/limits_ws_bench.py [--only accuracy,cost,ws,ttfd] [--ws-conns 5000] [--json out.json]

All on 127.0.0.1, bounded in time, stops by itself:

1. accuracy: one key at RPM 1200 / burst 40, offered at three times its limit for 10 s; per
   scenario (instances x workers, Redis or not, traffic skew) admitted vs burst + refill;
2. cost: non-streaming wrk -c50 through one pinned gateway worker with limits off, on (local
   buckets) and on (Redis leases), limits set so high nothing is refused, interleaved over rounds;
   the ratio on/off is per round (same run), the median reported; "micro": the limiter's own CPU
   per admitted request in this process (best of 5 x 50,000 calls), local and with Redis leases;
3. ws: one gateway worker holds N WebSocket connections (opened 200 at a time), idle, then every
   one streams one chat at once; errors counted; RSS per idle connection = growth / N;
4. ttfd: time to the first delta over /ws through the gateway vs the simulator's own first SSE
   chunk (same 50 ms upstream), at 1 and 100 concurrent clients, interleaved.

Quote the load (``uptime``) printed at the top and the bottom next to any figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_bench as gb  # noqa: E402  (the shared process, wrk and /proc helpers)

from gateway.simulator import SimulatorProcess  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from tests.test_ratelimit_e2e import offer  # noqa: E402

RPM, BURST = 1200, 40
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark in a few words"}]


class Gateway(gb.GatewayProcess):
    def __init__(self, name: str, sim_base: str, cpu: int | None, workers: int = 1, **extra: str) -> None:
        super().__init__("aiohttp", sim_base, cpu, workers)
        self.name = name
        self.extra = extra

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# --- 1. accuracy ----------------------------------------------------------------------


async def offer_load(urls: list[str], weights: list[float], seconds: float, per_second: int) -> dict:
    """The accuracy test's open-loop load (tests/test_ratelimit_e2e.py), counted by status."""
    counts: dict = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True)) as s:
        await offer(s, urls, weights, seconds, per_second, counts)
    return counts


def accuracy(sim_base: str) -> list[dict]:
    scenarios = [
        ("1 instance x 4 workers, Redis, even", 1, True, [1.0]),
        ("2 instances x 4 workers, Redis, 90/10", 2, True, [0.9, 0.1]),
        ("2 instances x 4 workers, Redis, 50/50", 2, True, [0.5, 0.5]),
        ("2 instances x 4 workers, no Redis, 90/10", 2, False, [0.9, 0.1]),
    ]
    out = []
    for name, instances, with_redis, weights in scenarios:
        redis = RedisServer()
        redis.start()
        extra = {"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_REQUESTS_PER_MINUTE": str(RPM), "RATE_LIMIT_BURST": str(BURST)}
        if with_redis:
            extra["REDIS_URL"] = redis.url
        gws = [Gateway(f"gw{i}", sim_base, None, workers=4, **extra) for i in range(instances)]
        try:
            for g in gws:
                g.start()
            seconds = 10.0
            counts = asyncio.run(offer_load([g.url for g in gws], weights, seconds, 60))
        finally:
            for g in gws:
                g.stop()
            redis.stop()
        allowed = BURST + RPM / 60 * seconds
        row = {"scenario": name, "admitted": counts.get(200, 0), "allowed": allowed, "refused": counts.get(429, 0),
               "other": {k: v for k, v in counts.items() if k not in (200, 429)},
               "error_pct": round(100 * (counts.get(200, 0) - allowed) / allowed, 1)}
        gb.log(f"accuracy: {row}")
        out.append(row)
    return out


# --- 2. cost --------------------------------------------------------------------------


def cost(sim_base: str, rounds: int, seconds: int) -> dict:
    redis = RedisServer()
    redis.start()
    huge = {"RATE_LIMIT_REQUESTS_PER_MINUTE": str(10**9), "RATE_LIMIT_BURST": str(10**9)}
    gws = {
        "off": Gateway("limits off", sim_base, 0, RATE_LIMIT_ENABLED="false"),
        "local": Gateway("limits on (local)", sim_base, 0, RATE_LIMIT_ENABLED="true", **huge),
        "redis": Gateway("limits on (Redis)", sim_base, 0, RATE_LIMIT_ENABLED="true", REDIS_URL=redis.url, **huge),
    }
    runs: dict[str, list[dict]] = {k: [] for k in gws}
    try:
        for g in gws.values():
            g.start()
        order = list(gws)
        for r in range(rounds):
            for k in (order if r % 2 == 0 else order[::-1]):
                res = gb.run_wrk(gws[k].url, gb.CHAT_LUA, 50, seconds, 1)
                runs[k].append(res)
                gb.log(f"cost round {r} {k}: {res['rps']:.0f} req/s, errors {res['errors']}")
    finally:
        for g in gws.values():
            g.stop()
        redis.stop()
    out = {k: {"rps": [round(x["rps"]) for x in v], "errors": sum(x["errors"] for x in v)} for k, v in runs.items()}
    for k in ("local", "redis"):
        out[k]["ratio_to_off_median"] = round(statistics.median(
            a["rps"] / b["rps"] for a, b in zip(runs[k], runs["off"])), 3)
    return out


def cost_micro(redis_url: str, calls: int = 50_000) -> dict:
    """CPU per admitted request inside the limiter (in this process: no HTTP noise), best of 5."""
    from gateway.config import load_settings
    from gateway.pipeline.outcome import Outcome
    from gateway.ratelimit import Limiter, connect
    from gateway.request import ChatRequest

    settings = load_settings({"GATEWAY_API_KEYS": gb.API_KEY, "GATEWAY_CACHE": "off",
                              "RATE_LIMIT_REQUESTS_PER_MINUTE": str(10**9), "RATE_LIMIT_BURST": str(10**9)})
    key = settings.api_keys[gb.API_KEY]
    body = {"model": "m", "messages": MESSAGES}

    def req() -> ChatRequest:
        return ChatRequest(body, "m", False, False, "r", key, {}, 0.0, 0.0, outcome=Outcome("r", 0.0))

    async def run(lim) -> float:
        for _ in range(1000):  # warm: leases in hand
            p = lim(req())
            if p is not None:
                await p
        best = float("inf")
        for _ in range(5):
            reqs = [req() for _ in range(calls)]
            t0 = time.perf_counter()
            for r in reqs:
                p = lim(r)
                if p is not None:
                    await p
            best = min(best, (time.perf_counter() - t0) / calls)
        return best

    async def both() -> dict:
        local = await run(Limiter(lambda: settings))
        shared = Limiter(lambda: settings, connect(redis_url, False, 2.0), timeout=2.0)
        remote = await run(shared)
        leases = shared.stats.redis_leases
        await shared.close()
        return {"local_us_per_request": round(local * 1e6, 2), "redis_us_per_request": round(remote * 1e6, 2),
                "redis_leases_for_calls": [leases, 1000 + 5 * calls]}

    return asyncio.run(both())


# --- 3. WebSocket capacity -------------------------------------------------------------


async def hold(ws_url: str, n: int, pid_of, sample) -> dict:
    before = sample()
    conns: list = []
    errors: list = []
    sem = asyncio.Semaphore(200)
    url = ws_url + f"?api_key={gb.API_KEY}"

    async def open_one() -> None:
        async with sem:
            try:
                conns.append(await websockets.connect(url, open_timeout=60, ping_interval=None))
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(repr(exc))

    t0 = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(n)))
    opened = time.monotonic() - t0
    await asyncio.sleep(2)
    idle = sample()

    async def chat(i: int, ws) -> None:
        try:
            await ws.send(orjson.dumps({"type": "chat", "id": str(i), "model": "gpt-4o-mini", "messages": MESSAGES}).decode())
            while True:
                m = orjson.loads(await asyncio.wait_for(ws.recv(), 120))
                if m["type"] == "done":
                    return
                if m["type"] == "error":
                    errors.append(m)
                    return
        except Exception as exc:  # noqa: BLE001 - counted
            errors.append(repr(exc))

    t0 = time.monotonic()
    await asyncio.gather(*(chat(i, ws) for i, ws in enumerate(conns)))
    streamed = time.monotonic() - t0
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    return {"connections": len(conns), "asked": n, "errors": len(errors), "first_errors": errors[:3],
            "open_seconds": round(opened, 1), "all_streamed_seconds": round(streamed, 1),
            "rss_kb_before": before, "rss_kb_idle": idle,
            "kb_per_idle_connection": round((idle - before) / max(1, len(conns)), 1)}


def ws_capacity(sim_base: str, n: int) -> dict:
    g = Gateway("ws", sim_base, 0, WORKER_CONNECTIONS=str(n + 100), RATE_LIMIT_ENABLED="false")
    g.start()
    try:
        def sample() -> int:
            return sum(gb.proc_status(p).get("VmRSS", 0) for p in g.worker_pids())
        return asyncio.run(hold(g.url.replace("http://", "ws://") + "/ws", n, g.worker_pids, sample))
    finally:
        g.stop()


# --- 4. time to first delta -------------------------------------------------------------


async def ttfd_ws(url: str, conns: int, seconds: float) -> list[float]:
    times: list[float] = []
    end = time.monotonic() + seconds

    async def client(c: int) -> None:
        async with websockets.connect(url + f"?api_key={gb.API_KEY}", ping_interval=None) as ws:
            i = 0
            while time.monotonic() < end:
                i += 1
                t0 = time.perf_counter()
                await ws.send(orjson.dumps({"type": "chat", "id": f"{c}-{i}", "model": "gpt-4o-mini", "messages": MESSAGES}).decode())
                first = None
                while True:
                    m = orjson.loads(await ws.recv())
                    if m["type"] == "delta" and first is None:
                        first = time.perf_counter() - t0
                    if m["type"] in ("done", "error"):
                        break
                if first is not None:
                    times.append(first)

    await asyncio.gather(*(client(c) for c in range(conns)))
    return times


async def ttfd_sse(url: str, conns: int, seconds: float) -> list[float]:
    times: list[float] = []
    end = time.monotonic() + seconds
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as s:

        async def client() -> None:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                async with s.post(url + gb.CHAT_PATH, json=body, headers={"authorization": "Bearer x"}) as r:
                    first = None
                    async for line in r.content:
                        if first is None and line.startswith(b"data: {"):
                            first = time.perf_counter() - t0
                if first is not None:
                    times.append(first)

        await asyncio.gather(*(client() for _ in range(conns)))
    return times


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000, 2) if xs else float("nan")


def ttfd(sim: SimulatorProcess, rounds: int, seconds: float) -> list[dict]:
    g = Gateway("ws", sim.base_url, 0, RATE_LIMIT_ENABLED="false")
    g.start()
    out = []
    try:
        ws_url = g.url.replace("http://", "ws://") + "/ws"
        for conns in (1, 100):
            direct: list[float] = []
            via: list[float] = []
            for r in range(rounds):
                direct += asyncio.run(ttfd_sse(sim.base_url, conns, seconds))
                via += asyncio.run(ttfd_ws(ws_url, conns, seconds))
            row = {"connections": conns, "simulator_sse_p50_ms": pct(direct, 50), "simulator_sse_p99_ms": pct(direct, 99),
                   "gateway_ws_p50_ms": pct(via, 50), "gateway_ws_p99_ms": pct(via, 99),
                   "added_p50_ms": round(pct(via, 50) - pct(direct, 50), 2), "samples": [len(direct), len(via)]}
            gb.log(f"ttfd: {row}")
            out.append(row)
    finally:
        g.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="accuracy,cost,micro,ws,ttfd")
    ap.add_argument("--ws-conns", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    results: dict = {"load_before": uptime()}
    gb.log(results["load_before"])
    with SimulatorProcess({"*": {"latency_ms": 0, "response_tokens": 30, "chunk_tokens": 1}}, cpu=1) as sim:
        if "accuracy" in parts:
            results["accuracy"] = accuracy(sim.base_url)
        if "cost" in parts:
            results["cost"] = cost(sim.base_url, args.rounds, args.seconds)
        if "micro" in parts:
            redis = RedisServer()
            redis.start()
            try:
                results["cost_micro"] = cost_micro(redis.url)
            finally:
                redis.stop()
            gb.log(f"micro: {results['cost_micro']}")
        if "ws" in parts:
            sim.configure("*", tokens_per_second=100, response_tokens=20)
            results["ws"] = ws_capacity(sim.base_url, args.ws_conns)
            gb.log(f"ws: {results['ws']}")
        if "ttfd" in parts:
            sim.configure("*", latency_ms=50, tokens_per_second=0, response_tokens=30)
            results["ttfd"] = ttfd(sim, args.rounds, 4.0)
    results["load_after"] = uptime()
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
