#!/usr/bin/env python
"""Same-run A/B of the semantic tier's miss path (issue 16): unique prompts through three gateways.

    python benchmarks/cache_miss_ab.py --baseline ../checkout-of-the-commit-before [--rounds 4]

A cache-off gateway, this tree's cache-on gateway and ``--baseline``'s cache-on gateway (another
checkout with its own .venv), one Granian worker each pinned to core 0, wrk -t1 -c50 and the
simulator on core 1 (cache_gateway_bench.py's processes and its "unique prompts" script: a prompt
never sent before on every request, all in one semantic scope). The three are interleaved per round
(the order reversed every other round); it prints each cache-on gateway's rate over the same round's
cache-off rate, and this tree's over the baseline's.
"""
import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
import cache_gateway_bench as cb  # noqa: E402
import gateway_bench as gb  # noqa: E402
from gateway.simulator import SimulatorProcess  # noqa: E402
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--baseline", type=Path, required=True)
ap.add_argument("--rounds", type=int, default=4)
ap.add_argument("--seconds", type=int, default=8)
args = ap.parse_args()
rounds = args.rounds
os.sched_setaffinity(0, {1})
sim = SimulatorProcess({"*": {"latency_ms": 0, "response_tokens": 30}}, cpu=1)
sim.start()
gws = {}
try:
    gws["off"] = cb.CacheGateway("off", sim.base_url, 0, {"GATEWAY_CACHE": "off"})
    gws["on-new"] = cb.CacheGateway("on new", sim.base_url, 0, {"GATEWAY_CACHE": "on"})
    b = cb.CacheGateway("on base", sim.base_url, 0, {"GATEWAY_CACHE": "on"})
    b.tree = b.cwd = args.baseline.resolve()
    gws["on-base"] = b
    for g in gws.values():
        g.start()
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="cache-miss-ab-"))
    def tag():
        return "".join(chr(97 + int(h, 16)) for h in uuid.uuid4().hex[:8])
    for name, g in gws.items():
        gb.run_wrk(g.url, cb.unique_script(tmp / "w.lua", "warm" + tag()), 50, 3, 1)
    res = {k: [] for k in gws}
    for r in range(rounds):
        order = list(gws) if r % 2 == 0 else list(gws)[::-1]
        for name in order:
            w = gb.run_wrk(gws[name].url, cb.unique_script(tmp / "u.lua", "r" + tag()), 50, args.seconds, 1)
            rps = w["requests"] / (w["duration_us"] / 1e6)
            res[name].append(rps)
            print(f"[{time.strftime('%H:%M:%S')}] round {r + 1} {name:8} {rps:7.0f} req/s  load {os.getloadavg()[0]:.1f}", flush=True)
    for name in ("on-new", "on-base"):
        ratios = [a / o for a, o in zip(res[name], res["off"])]
        print(f"{name}: per-round ratio to cache off {', '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f}")
    nb = [a / o for a, o in zip(res["on-new"], res["on-base"])]
    print(f"on-new / on-base per round: {', '.join(f'{x:.3f}' for x in nb)}; median {statistics.median(nb):.3f}")
finally:
    for g in gws.values():
        try:
            g.stop()
        except Exception:  # noqa: BLE001
            pass
    sim.stop()
