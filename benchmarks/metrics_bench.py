#!/usr/bin/env python
"""What recording costs: the gateway with metrics on, off, and on with the access log, in one run.

    python benchmarks/metrics_bench.py [--duration 5] [--rounds 3] [--connections 50]

Three ``gateway serve`` processes (one Granian worker each, pinned to the gateway core; cache off
so every request is relayed) and the simulator straight (pinned to the load core with wrk), run
interleaved round by round (direct, on, off, on+log, then reversed), non-streaming and streaming
(30 one-token chunks). Reported: the median per-round ratio of each gateway's requests/s to the
direct run of its round, and of "metrics on" to "metrics off" (the recording's cost); and the
gateway worker's CPU time per request (utime + stime from /proc over the run / requests), which
other tenants of a shared host disturb much less than requests/s. All on
127.0.0.1; it stops by itself. Needs wrk and taskset (see gateway_bench.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gateway_bench import (  # noqa: E402
    CHAT_LUA, STREAM_LUA, GatewayProcess, check_chat, interleaved, log, proc_ticks, run_wrk,
)

TICK = os.sysconf("SC_CLK_TCK")

VARIANTS = {
    "on": {"GATEWAY_METRICS": "on"},
    "off": {"GATEWAY_METRICS": "off"},
    "on+log": {"GATEWAY_METRICS": "on", "LOG_LEVEL": "INFO"},  # GATEWAY_ACCESS_LOG set to a file below
}


class Variant(GatewayProcess):
    def __init__(self, label: str, extra: dict[str, str], sim_base: str, cpu: int | None) -> None:
        self.extra = extra
        super().__init__("aiohttp", sim_base, cpu)
        self.name = f"gateway ({label})"

    def env(self) -> dict[str, str]:
        return super().env() | self.extra


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=50)
    args = p.parse_args(argv)
    gw_cpu, load_cpu = (1, 0) if (os.cpu_count() or 1) >= 2 else (None, None)
    from gateway.simulator import SimulatorProcess

    log_file = tempfile.NamedTemporaryFile(prefix="access-", suffix=".log", delete=False).name
    VARIANTS["on+log"]["GATEWAY_ACCESS_LOG"] = log_file
    sim = SimulatorProcess({"*": {"latency_ms": 0, "response_tokens": 30, "chunk_tokens": 1}}, cpu=load_cpu)
    gateways: dict[str, Variant] = {}
    try:
        sim.start()
        check_chat(sim.openai_base_url.removesuffix("/v1"), "simulator")
        for label, extra in VARIANTS.items():
            gateways[label] = Variant(label, extra, sim.base_url, gw_cpu).start()
        targets = [("direct", sim.base_url)] + [(label, g.url) for label, g in gateways.items()]
        pids = [pid for g in gateways.values() for pid in (g.proc.pid, *g.worker_pids())]
        rows = []
        cpu_rows = []

        def measure(label: str, url: str, script: Path) -> dict:
            workers = gateways[label].worker_pids() if label in gateways else []
            t0 = proc_ticks(workers)
            r = run_wrk(url, script, args.connections, args.duration, load_cpu)
            r["cpu_us"] = (proc_ticks(workers) - t0) / TICK / r["requests"] * 1e6 if workers else None
            return r

        for name, script in (("nonstream", CHAT_LUA), ("stream", STREAM_LUA)):
            runs = interleaved(
                name, targets, lambda label, url: measure(label, url, script),
                lambda label, url: run_wrk(url, script, args.connections, 1, load_cpu), args.rounds, gw_cpu, lambda: pids)
            for label in VARIANTS:
                cpu = [r["cpu_us"] for r in runs[label]]
                cpu_rows.append((name, label, statistics.median(cpu), cpu))
            direct = runs["direct"]
            for label in VARIANTS:
                ratios = [g["rps"] / d["rps"] for d, g in zip(direct, runs[label])]
                rows.append((name, label, statistics.median(g["rps"] for g in runs[label]), statistics.median(ratios),
                             statistics.median(g["p99_ms"] for g in runs[label])))
            on_off = [a["rps"] / b["rps"] for a, b in zip(runs["on"], runs["off"])]
            log_on = [a["rps"] / b["rps"] for a, b in zip(runs["on+log"], runs["on"])]
            rows.append((name, "on / off", None, statistics.median(on_off), None))
            rows.append((name, "on+log / on", None, statistics.median(log_on), None))
            log(f"{name}: on/off per round " + " / ".join(f"{r:.3f}" for r in on_off))
        print(f"\nload: {os.getloadavg()[0]:.2f} (1 min), {args.rounds} rounds of {args.duration} s, {args.connections} connections")
        print(f"{'scenario':<10} {'gateway':<12} {'req/s':>9} {'ratio':>7} {'P99 ms':>7}")
        for name, label, rps, ratio, p99 in rows:
            print(f"{name:<10} {label:<12} {'' if rps is None else f'{rps:9,.0f}':>9} {ratio:7.3f} "
                  f"{'' if p99 is None else f'{p99:7.2f}':>7}")
        print(f"\n{'scenario':<10} {'gateway':<12} {'CPU us/request (median; per round)'}")
        for name, label, med, cpu in cpu_rows:
            print(f"{name:<10} {label:<12} {med:7.1f}  ({' / '.join(f'{c:.0f}' for c in cpu)})")
        lines = sum(1 for _ in open(log_file, "rb"))
        print(f"access log lines written by the on+log gateway: {lines:,}")
    finally:
        for g in gateways.values():
            g.stop()
        sim.stop()
        os.unlink(log_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
