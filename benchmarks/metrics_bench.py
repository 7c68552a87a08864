#!/usr/bin/env python
"""What recording costs: requests/s of the gateway with metrics on vs off, as a same-run ratio.

    python benchmarks/metrics_bench.py [--rounds 20] [--duration 2] [--connections 50]
        [--scenarios nonstream,stream] [--log] [--direct] [--json out.json]

Two ``gateway serve`` processes (one Granian worker each, cache off so every request is relayed),
``GATEWAY_METRICS=on`` and ``off``, both pinned with taskset to the gateway core; the simulator
(instant upstream, 30 one-token chunks for streams) and wrk pinned to the other core. wrk runs
them interleaved, many short rounds (on off, off on, on off, ...), so the slow drift of this
shared host hits both alike; each round gives one on/off ratio of requests/s, and the report is
the median of those ratios with its spread: quartiles, range and the distribution-free 95 %
confidence interval of the median. A cost is resolved when that interval lies below 1.0.
The same again over the quiet rounds only: those in which no other process used more than
``--max-foreign`` % (default 10) of the gateway core during either run of the pair.
The same is given for the gateway worker's CPU time per request (utime + stime from /proc over
each run / its requests), which other tenants of the host disturb less than requests/s.

``--log`` adds a third gateway (metrics on + the access log to a file) and its ratio to "on";
``--direct`` adds wrk straight at the simulator as a fourth target. All on 127.0.0.1; it stops
by itself (20 rounds of 2 s: about 3 minutes for both scenarios). Needs wrk and taskset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gateway_bench import (  # noqa: E402
    CHAT_LUA, STREAM_LUA, GatewayProcess, check_chat, fmt_spread, interleaved, log, proc_ticks, ratio_spreads, run_wrk,
)

TICK = os.sysconf("SC_CLK_TCK")
SCRIPTS = {"nonstream": CHAT_LUA, "stream": STREAM_LUA}


class Variant(GatewayProcess):
    def __init__(self, label: str, extra: dict[str, str], sim_base: str, cpu: int | None) -> None:
        self.extra = extra
        super().__init__("aiohttp", sim_base, cpu)
        self.name = f"gateway ({label})"

    def env(self) -> dict[str, str]:
        return super().env() | self.extra


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--duration", type=int, default=2, help="seconds of each wrk run")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--scenarios", default="nonstream,stream")
    p.add_argument("--log", action="store_true", help="also metrics on + the access log to a file")
    p.add_argument("--direct", action="store_true", help="also wrk straight at the simulator")
    p.add_argument("--gateway-cpu", type=int, default=1)
    p.add_argument("--load-cpu", type=int, default=0)
    p.add_argument("--max-foreign", type=float, default=10.0,
                   help="%% of the gateway core other processes may use in a run of a quiet round")
    p.add_argument("--json")
    args = p.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    if unknown := set(scenarios) - set(SCRIPTS):
        p.error(f"unknown scenario {sorted(unknown)[0]!r} (nonstream, stream)")
    gw_cpu, load_cpu = (args.gateway_cpu, args.load_cpu) if (os.cpu_count() or 1) >= 2 else (None, None)
    from gateway.simulator import SimulatorProcess

    variants = {"on": {"GATEWAY_METRICS": "on"}, "off": {"GATEWAY_METRICS": "off"}}
    log_file = None
    if args.log:
        log_file = tempfile.NamedTemporaryFile(prefix="access-", suffix=".log", delete=False).name
        variants["on+log"] = {"GATEWAY_METRICS": "on", "LOG_LEVEL": "INFO", "GATEWAY_ACCESS_LOG": log_file}
    load_start = os.getloadavg()
    sim = SimulatorProcess({"*": {"latency_ms": 0, "response_tokens": 30, "chunk_tokens": 1}}, cpu=load_cpu)
    gateways: dict[str, Variant] = {}
    results: dict[str, dict] = {}
    try:
        sim.start()
        check_chat(sim.openai_base_url.removesuffix("/v1"), "simulator")
        for label, extra in variants.items():
            gateways[label] = Variant(label, extra, sim.base_url, gw_cpu).start()
        targets = [(label, g.url) for label, g in gateways.items()]
        if args.direct:
            targets.append(("direct", sim.base_url))
        pids = [pid for g in gateways.values() for pid in (g.proc.pid, *g.worker_pids())]

        for name in scenarios:
            script = SCRIPTS[name]

            def measure(label: str, url: str) -> dict:
                workers = gateways[label].worker_pids() if label in gateways else []
                t0 = proc_ticks(workers)
                r = run_wrk(url, script, args.connections, args.duration, load_cpu)
                r["cpu_us"] = (proc_ticks(workers) - t0) / TICK / r["requests"] * 1e6 if workers and r["requests"] else None
                return r

            def warm(label: str, url: str) -> None:  # a first second after start-up was seen at 22 req/s
                run_wrk(url, script, args.connections, 2, load_cpu)

            runs = interleaved(name, targets, measure, warm, args.rounds, gw_cpu, lambda: pids)
            res = results[name] = {"runs": runs}
            quiet = args.max_foreign if gw_cpu is not None else None
            for label, num, den in (("on/off", "on", "off"), ("on+log/on", "on+log", "on")):
                if num in runs:
                    for field, unit in (("rps", "rps"), ("cpu_us", "cpu")):
                        for which, s in ratio_spreads(runs[num], runs[den], field, quiet).items():
                            res[f"{label} {unit} ({which})"] = s
            log(f"{name}: on/off req/s per round " + " / ".join(
                f"{a['rps'] / b['rps']:.3f}" for a, b in zip(runs["on"], runs["off"])))
        load_end = os.getloadavg()
    finally:
        for g in gateways.values():
            g.stop()
        sim.stop()

    print(f"\nload average (1/5/15 min) at start {' / '.join(f'{x:.2f}' for x in load_start)}, "
          f"at end {' / '.join(f'{x:.2f}' for x in load_end)}; {os.cpu_count()} cores, gateway on core {gw_cpu}, "
          f"wrk + simulator on core {load_cpu}; {args.rounds} interleaved rounds of {args.duration} s, "
          f"{args.connections} connections; quiet rounds: <= {args.max_foreign:g} % of the gateway core used by others")
    for name, res in results.items():
        runs = res["runs"]
        print(f"\n{name}:")
        for label, rs in runs.items():
            cpu = [r["cpu_us"] for r in rs if r.get("cpu_us")]
            print(f"  {label:<7} req/s median {statistics.median(r['rps'] for r in rs):9,.0f} "
                  f"(range {min(r['rps'] for r in rs):,.0f}-{max(r['rps'] for r in rs):,.0f}), "
                  f"P99 median {statistics.median(r['p99_ms'] for r in rs):.2f} ms, errors {sum(r['errors'] for r in rs)}"
                  + (f", CPU {statistics.median(cpu):.0f} us/request" if cpu else ""))
        for what, s in res.items():
            if what != "runs":
                print(f"  {what:<22} {fmt_spread(s)}")
    if log_file is not None:
        print(f"\naccess log lines written by the on+log gateway: {sum(1 for _ in open(log_file, 'rb')):,}")
        os.unlink(log_file)
    if args.json:
        Path(args.json).write_text(json.dumps({"load_start": load_start, "load_end": load_end, "results": results},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
