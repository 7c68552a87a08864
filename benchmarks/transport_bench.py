#!/usr/bin/env python
"""The upstream transports alone: gateway.transport's clients in one process, no server in front.

    python benchmarks/transport_bench.py [--seconds 4] [--rounds 3] [--concurrency 20] [--tls] [--pace TPS] [--slow MS] [--httpx]

Calls ``send()`` (non-streaming) and ``open()`` + ``chunks()`` (a 30-chunk stream) of each transport
against the simulator on 127.0.0.1, ``--concurrency`` calls in flight, for ``--seconds`` each,
interleaved (a b c, c b a, ...) so the shared host's drift cancels out, and prints calls/s per round.
This process runs on core 0 and the simulator (and nginx with ``--tls``) on core 1. ``reqwest-naive`` is
the pyreqwest transport with the stream loop it had first (one ``read_chunk()`` per piece, the idle
timer set and cleared around each): what the joined reads of the current loop change. With ``--slow``
each stream's consumer takes that many ms per piece (a busy relay), so events pile up between reads.
The simulator writes an unpaced stream (the default) whole, in one write: one piece per stream for
every transport. ``--pace TPS`` has it write each event on its own, TPS events a second, as providers
do; only then does a loop's per-event cost show. Bounded in time; stops by itself.
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


async def _naive_chunks(self):
    reader = self._resp.body_reader
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as deadline:
        while True:
            deadline.reschedule(loop.time() + self._idle)
            data = await reader.read_chunk()
            deadline.reschedule(None)
            if data is None:
                return
            yield bytes(data)


async def rate(t, url: str, stream: bool, seconds: float, concurrency: int, slow: float = 0.0) -> tuple[float, float]:
    """Calls per second, and pieces per stream."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}], "stream": stream}
    req = UpstreamRequest("POST", url + "/v1/chat/completions", HEADERS, orjson.dumps(body))
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    done = 0
    pieces = 0

    async def worker() -> None:
        nonlocal done, pieces
        while loop.time() < end:
            if stream:
                resp = await t.open(req, 10)
                async for _ in resp.chunks():
                    pieces += 1
                    if slow:
                        await asyncio.sleep(slow)
                await resp.close()
            else:
                status, _, _ = await t.send(req, 10)
                assert status == 200, status
            done += 1

    t0 = loop.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (loop.time() - t0), pieces / max(1, done)


async def main_async(args, url: str, ca: str | None) -> None:
    kinds = ["aiohttp", "httpx", "reqwest", "reqwest-naive"] if args.httpx else ["aiohttp", "reqwest", "reqwest-naive"]
    transports = {k: make_transport(k.split("-")[0], 1000, 30, ca) for k in kinds}
    current = _reqwest._ReqwestStream.chunks
    try:
        for stream in (False, True):
            results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
            slow = args.slow / 1000 if stream else 0.0
            for k in kinds:  # warm-up: connections, caches
                _reqwest._ReqwestStream.chunks = _naive_chunks if k == "reqwest-naive" else current
                await rate(transports[k], url, stream, 0.5, args.concurrency, slow)
            for r in range(args.rounds):
                for k in kinds if r % 2 == 0 else kinds[::-1]:
                    _reqwest._ReqwestStream.chunks = _naive_chunks if k == "reqwest-naive" else current
                    results[k].append(await rate(transports[k], url, stream, args.seconds, args.concurrency, slow))
            what = f"streaming (30 chunks, consumer {args.slow:g} ms a piece)" if stream else "non-streaming"
            print(f"\n{what}, {args.concurrency} in flight, calls/s (pieces per stream):")
            for k, xs in results.items():
                rates = [x for x, _ in xs]
                per = f"  ({statistics.median(p for _, p in xs):.1f} pieces)" if stream else ""
                print(f"  {k:<16} median {statistics.median(rates):8,.0f}{per}   rounds " + " / ".join(f"{x:,.0f}" for x in rates))
    finally:
        _reqwest._ReqwestStream.chunks = current
        for t in transports.values():
            await t.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--tls", action="store_true", help="through nginx (TLS + HTTP/2) in front of the simulator")
    ap.add_argument("--pace", type=float, default=0.0, help="stream events a second (0: the whole stream in one write)")
    ap.add_argument("--slow", type=float, default=0.0, help="ms the stream consumer spends on each piece")
    ap.add_argument("--httpx", action="store_true", help="include httpx (slow: 20-60x below the others here)")
    args = ap.parse_args()
    from gateway.simulator import SimulatorProcess

    import uvloop

    sim_settings = {"latency_ms": 0, "response_tokens": 30, "chunk_tokens": 1, "tokens_per_second": args.pace}
    with SimulatorProcess({"*": sim_settings}, cpu=1) as sim:
        os.sched_setaffinity(0, {0})
        print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}, tls={args.tls}, pace={args.pace:g}/s, slow={args.slow:g} ms")
        if args.tls:
            from benchmarks.tls_upstream import NginxTLS

            with NginxTLS(int(sim.base_url.rsplit(":", 1)[1]), 1) as nginx:
                uvloop.run(main_async(args, nginx.base_url, nginx.ca_file))
        else:
            uvloop.run(main_async(args, sim.base_url, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
