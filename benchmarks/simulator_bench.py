"""How fast is the provider simulator? It must never be what limits a gateway benchmark.

Starts the simulator pinned to one core and drives it with wrk pinned to
another, one scenario per script in ``benchmarks/wrk/``:

    .venv/bin/python benchmarks/simulator_bench.py            # all scenarios, 10 s each
    .venv/bin/python benchmarks/simulator_bench.py openai_chat openai_stream -d 5

Besides wrk's requests/s and latency percentiles it reports the simulator's own
CPU time per request (from /proc): on a shared machine wrk's figure moves with
whatever else runs, while ``capacity`` = requests per second of CPU on the
simulator's core is what it could serve with that core to itself.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.simulator import SimulatorProcess  # noqa: E402

WRK_DIR = Path(__file__).resolve().parent / "wrk"
SCENARIOS = ["openai_chat", "openai_stream", "anthropic_messages", "anthropic_stream", "google_generate", "google_stream"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_wrk(out: str) -> dict:
    result: dict = {"percentiles": {}}
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        result["percentiles"][int(pct)] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s)", out)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    result["socket_errors"] = m.group(1) if m else ""
    return result


def run_scenario(sim: SimulatorProcess, name: str, args: argparse.Namespace) -> dict:
    script = WRK_DIR / f"{name}.lua"
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "-s", str(script), sim.base_url]
    if args.wrk_cpu is not None:
        cmd = ["taskset", "-c", str(args.wrk_cpu), *cmd]
    sim.reset()
    assert sim.proc is not None
    cpu0 = cpu_seconds(sim.proc.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(sim.proc.pid) - cpu0
    result = parse_wrk(out)
    served = sim.stats()["total"]["requests"]
    result["cpu_us_per_request"] = cpu / served * 1e6 if served else 0.0
    result["capacity"] = served / cpu if cpu else 0.0
    result["core_busy"] = cpu / args.duration
    result["raw"] = out
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", default=SCENARIOS, help=f"any of {', '.join(SCENARIOS)}")
    parser.add_argument("-d", "--duration", type=int, default=10, help="seconds per scenario")
    parser.add_argument("-c", "--connections", type=int, default=50)
    parser.add_argument("-t", "--threads", type=int, default=1)
    parser.add_argument("--sim-cpu", type=int, default=0, help="core for the simulator (-1: not pinned)")
    parser.add_argument("--wrk-cpu", type=int, default=1, help="core for wrk (-1: not pinned)")
    parser.add_argument("--response-tokens", type=int, default=30, help="tokens per answer (= chunks per stream)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print wrk's own output too")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 1
    args.wrk_cpu = None if args.wrk_cpu < 0 else args.wrk_cpu
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")

    config = {"*": {"response_tokens": args.response_tokens, "chunk_tokens": 1, "tokens_per_second": 0, "latency_ms": 0}}
    cpu = None if args.sim_cpu < 0 else args.sim_cpu
    print(
        f"simulator on core {cpu}, wrk on core {args.wrk_cpu}: wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"{args.response_tokens} tokens per answer, streams unpaced (tokens_per_second 0)"
    )
    print(f"{'scenario':<20} {'req/s':>9} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'cpu us/req':>10} {'capacity/s':>10} {'core busy':>9}  errors")
    with SimulatorProcess(config, cpu=cpu) as sim:
        for name in args.scenarios:
            r = run_scenario(sim, name, args)
            p = r["percentiles"]
            errors = f"non-2xx {r['non_2xx']}" if r["non_2xx"] else ""
            errors += f" socket {r['socket_errors']}" if r["socket_errors"] else ""
            print(
                f"{name:<20} {r['rps']:>9.0f} {p.get(50, 0):>7.2f} {p.get(90, 0):>7.2f} {p.get(99, 0):>7.2f} "
                f"{r['cpu_us_per_request']:>10.1f} {r['capacity']:>10.0f} {r['core_busy']:>8.0%}  {errors or '-'}",
                flush=True,
            )
            if args.verbose:
                print(r["raw"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
