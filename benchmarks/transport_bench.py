#!/usr/bin/env python
"""The upstream transports alone: gateway.transport's clients in one process, no server in front.

    python benchmarks/transport_bench.py [--seconds 4] [--rounds 3] [--concurrency 20] [--tls]

Calls ``send()`` (non-streaming) and ``open()`` + ``chunks()`` (a 30-chunk stream) of each transport
against the simulator on 127.0.0.1, ``--concurrency`` calls in flight, for ``--seconds`` each,
interleaved (a b c, c b a, ...) so the shared host's drift cancels out, and prints calls/s per round.
This process runs on core 0 and the simulator (and nginx with ``--tls``) on core 1. ``reqwest-untimed``
is the pyreqwest transport with its per-read idle timer taken out of the stream loop: what the timer
costs. Bounded in time; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from gateway.providers.base import UpstreamRequest  # noqa: E402
from gateway.transport import _reqwest, make_transport  # noqa: E402

HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}


async def _untimed_chunks(self):
    reader = self._resp.body_reader
    while (data := await reader.read_chunk()) is not None:
        yield bytes(data)


async def rate(t, url: str, stream: bool, seconds: float, concurrency: int) -> float:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}], "stream": stream}
    req = UpstreamRequest("POST", url + "/v1/chat/completions", HEADERS, orjson.dumps(body))
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while loop.time() < end:
            if stream:
                resp = await t.open(req, 10)
                async for _ in resp.chunks():
                    pass
                await resp.close()
            else:
                status, _, _ = await t.send(req, 10)
                assert status == 200, status
            done += 1

    t0 = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (loop.time() - t0)


async def main_async(args, url: str, ca: str | None) -> None:
    kinds = ["aiohttp", "httpx", "reqwest", "reqwest-untimed"]
    transports = {k: make_transport(k.split("-")[0], 1000, 30, ca) for k in kinds}
    timed = _reqwest._ReqwestStream.chunks
    try:
        for stream in (False, True):
            results: dict[str, list[float]] = {k: [] for k in kinds}
            for k in kinds:  # warm-up: connections, caches
                _reqwest._ReqwestStream.chunks = _untimed_chunks if k == "reqwest-untimed" else timed
                await rate(transports[k], url, stream, 0.5, args.concurrency)
            for r in range(args.rounds):
                for k in kinds if r % 2 == 0 else kinds[::-1]:
                    _reqwest._ReqwestStream.chunks = _untimed_chunks if k == "reqwest-untimed" else timed
                    results[k].append(await rate(transports[k], url, stream, args.seconds, args.concurrency))
            print(f"\n{'streaming (30 chunks)' if stream else 'non-streaming'}, {args.concurrency} in flight, calls/s:")
            for k, xs in results.items():
                print(f"  {k:<16} median {statistics.median(xs):8,.0f}   rounds " + " / ".join(f"{x:,.0f}" for x in xs))
    finally:
        _reqwest._ReqwestStream.chunks = timed
        for t in transports.values():
            await t.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--tls", action="store_true", help="through nginx (TLS + HTTP/2) in front of the simulator")
    args = ap.parse_args()
    from gateway.simulator import SimulatorProcess

    import uvloop

    with SimulatorProcess({"*": {"latency_ms": 0, "response_tokens": 30, "chunk_tokens": 1}}, cpu=1) as sim:
        os.sched_setaffinity(0, {0})
        print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}, tls={args.tls}")
        if args.tls:
            from benchmarks.tls_upstream import NginxTLS

            with NginxTLS(int(sim.base_url.rsplit(":", 1)[1]), 1) as nginx:
                uvloop.run(main_async(args, nginx.base_url, nginx.ca_file))
        else:
            uvloop.run(main_async(args, sim.base_url, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
