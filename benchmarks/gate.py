#!/usr/bin/env python
"""CI P95 gate: P95 through the gateway divided by P95 straight to the simulator, against a committed baseline.

    python benchmarks/gate.py [--short] [--rounds N] [--seconds S] [--tolerance T] [--json out.json]
    python benchmarks/gate.py --update-baseline     # after a change that is meant to move the ratio

A ratio, not a time, because CI machines (and this shared 2-core VM) are noisy: whatever slows the host
slows both sides of a round. One fixed scenario: non-streaming chat completions at ``--connections`` (4)
from this process's aiohttp clients, against a simulator that answers after ``--upstream-ms`` (5 ms), cache off so every request is
relayed. Interleaved at the request level: each client alternates a request straight to the simulator and
one through the gateway, so both sides meet the same moments of the host's load; the run is cut into
rounds and the gate takes the median of the per-round ratios, so a burst moves one round, not the verdict.

Exits 1 with the figures and a clear message when the median ratio exceeds baseline x (1 + tolerance),
2 when it could not measure (failed requests, no baseline), 3 when the ratio is over the limit but the
host's load average is above --max-load per core (too busy to tell a regression from the CPU queue);
0 otherwise, figures printed either way. The
tolerance and the baseline live in ``benchmarks/gate_baseline.json`` with the noise band they came from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import API_KEY, CHAT_PATH, PROMPT, GatewayProcess, log  # noqa: E402
from run import NO_LIMITS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "benchmarks" / "gate_baseline.json"
sys.path.insert(0, str(ROOT))


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def _paired(direct: str, gateway: str, conns: int, seconds: float) -> dict[str, list[float]]:
    """``conns`` clients, each alternating direct and gateway requests: the two sides share every moment
    of the host's noise, which back-to-back runs of a few seconds each do not (measured: see the README)."""
    import aiohttp

    body = json.dumps({"model": "gpt-4o-mini", "messages": PROMPT}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    lat: dict[str, list[float]] = {"direct": [], "gateway": [], "errors": []}
    stop = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        order = [("direct", direct), ("gateway", gateway)]
        if i % 2:
            order.reverse()
        while time.monotonic() < stop:
            for label, url in order:
                t0 = time.perf_counter()
                try:
                    async with session.post(url + CHAT_PATH, data=body, headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                lat[label if ok else "errors"].append((time.perf_counter() - t0) * 1000)
            order.reverse()  # neither side is always the one that goes first

    conn = aiohttp.TCPConnector(limit=2 * conns)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        await asyncio.gather(*(client(session, i) for i in range(conns)))
    return lat


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[94] if len(values) > 1 else float("nan")


def measure(rounds: int, seconds: float, conns: int, upstream_ms: float, transport: str, pin: bool) -> dict:
    """Rounds of paired load; each round's ratio is its gateway P95 over its direct P95."""
    from gateway.simulator import SimulatorProcess

    gw_cpu, load_cpu = (0, 1) if pin else (None, None)
    sim = SimulatorProcess({"*": {"latency_ms": upstream_ms, "response_tokens": 30}}, cpu=load_cpu)
    gw = None
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    rows = []
    try:
        sim.start()
        gw = GatewayProcess(transport, sim.base_url, gw_cpu, extra_env=NO_LIMITS).start()
        asyncio.run(_paired(sim.base_url, gw.url, conns, 1.0))  # warm-up: pools, caches, allocators
        for r in range(rounds):
            lat = asyncio.run(_paired(sim.base_url, gw.url, conns, seconds))
            row = {"direct_p95_ms": p95(lat["direct"]), "gateway_p95_ms": p95(lat["gateway"]),
                   "requests": len(lat["direct"]) + len(lat["gateway"]), "errors": len(lat["errors"]), "load": load_avg()}
            row["ratio"] = row["gateway_p95_ms"] / row["direct_p95_ms"]
            rows.append(row)
            log(f"gate round {r + 1}/{rounds}: direct P95 {row['direct_p95_ms']:.2f} ms, gateway P95 "
                f"{row['gateway_p95_ms']:.2f} ms, ratio {row['ratio']:.3f}, {row['requests']} requests (load {row['load']})")
    finally:
        if gw is not None:
            gw.stop()
        sim.stop()
    return {
        "ratio": statistics.median(r["ratio"] for r in rows),
        "ratios": [r["ratio"] for r in rows],
        "direct_p95_ms": statistics.median(r["direct_p95_ms"] for r in rows),
        "gateway_p95_ms": statistics.median(r["gateway_p95_ms"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "requests": sum(r["requests"] for r in rows),
        "load": load_avg(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="CI's mode: 8 rounds of 1.5 s (about 25 s with start-up)")
    ap.add_argument("--rounds", type=int, help="rounds (default 15; 8 with --short)")
    ap.add_argument("--seconds", type=float, help="seconds per round (default 2; 1.5 with --short)")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--upstream-ms", type=float, default=5.0)
    ap.add_argument("--transport", default="aiohttp")
    ap.add_argument("--pin", action="store_true", help="gateway on core 0, simulator and wrk on core 1 (taskset)")
    ap.add_argument("--tolerance", type=float, help="allowed rise of the ratio over the baseline (default: the baseline file's)")
    ap.add_argument("--baseline", type=Path, default=BASELINE)
    ap.add_argument("--update-baseline", action="store_true", help="write the measured ratio as the new baseline")
    ap.add_argument("--json", dest="json_out", type=Path, help="write the figures to this file")
    ap.add_argument(
        "--max-load", type=float, default=2.0,
        help="1-minute load average per core above which the host is too busy to judge (exit 3; default 2.0)",
    )
    args = ap.parse_args(argv)
    rounds = args.rounds or (8 if args.short else 15)
    seconds = args.seconds or (1.5 if args.short else 2.0)

    base = json.loads(args.baseline.read_text()) if args.baseline.exists() else None
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    m = measure(rounds, seconds, args.connections, args.upstream_ms, args.transport, args.pin)
    m.update(load_before=load_before, rounds=rounds, seconds=seconds, connections=args.connections, upstream_ms=args.upstream_ms,
             transport=args.transport, wall_s=round(time.monotonic() - t0, 1))
    print(f"P95 gate: direct {m['direct_p95_ms']:.2f} ms, gateway {m['gateway_p95_ms']:.2f} ms; "
          f"ratio {m['ratio']:.3f} (median of {' '.join(f'{r:.3f}' for r in m['ratios'])}); "
          f"{m['requests']:,} requests, {m['errors']} errors; load {m['load']}")
    if args.json_out:
        args.json_out.write_text(json.dumps(m, indent=2) + "\n")
    if m["errors"]:
        print(f"P95 gate: cannot judge: {m['errors']} requests failed", file=sys.stderr)
        return 2
    if args.update_baseline:
        tol = args.tolerance if args.tolerance is not None else (base or {}).get("tolerance", 0.25)
        keep = {k: v for k, v in (base or {}).items() if k.startswith("noise")}
        args.baseline.write_text(json.dumps({"ratio": round(m["ratio"], 4), "tolerance": tol, "measured": m, **keep}, indent=2) + "\n")
        print(f"P95 gate: baseline written to {args.baseline.name}: ratio {m['ratio']:.3f}, tolerance {tol:.0%}")
        return 0
    if base is None:
        print(f"P95 gate: no baseline at {args.baseline}; run with --update-baseline", file=sys.stderr)
        return 2
    tol = args.tolerance if args.tolerance is not None else base["tolerance"]
    limit = base["ratio"] * (1 + tol)
    busy = max(m["load_before"], os.getloadavg()[0]) / (os.cpu_count() or 1)
    if m["ratio"] > limit and busy > args.max_load:
        # Measured on this 2-core VM: at load 10-16 an unchanged tree gave ratios up to 2.1x the quiet
        # baseline, the CPU queue's doing, not the code's. Say so instead of blaming the change.
        print(
            f"P95 gate: NOT JUDGED: ratio {m['ratio']:.3f} is above the limit {limit:.3f}, but the host is too busy "
            f"to tell (load {busy:.1f} per core > {args.max_load:g}; other processes inflate the gateway's P95 more "
            "than the simulator's). Re-run on a quieter host.",
            file=sys.stderr,
        )
        return 3
    if m["ratio"] > limit:
        print(
            f"P95 gate: FAIL: P95 through the gateway is {m['ratio']:.3f}x the simulator's, above the limit "
            f"{limit:.3f} (baseline {base['ratio']:.3f} + {tol:.0%}). A change made the hot path slower; "
            "profile it (profiling/) or, if the cost is intended, run benchmarks/gate.py --update-baseline.",
            file=sys.stderr,
        )
        return 1
    print(f"P95 gate: OK: ratio {m['ratio']:.3f} <= limit {limit:.3f} (baseline {base['ratio']:.3f} + {tol:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
