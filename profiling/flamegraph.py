#!/usr/bin/env python
"""Profile the gateway's non-streaming path with py-spy under wrk load.

    python profiling/flamegraph.py [--seconds 20] [--rate 200] [--transport aiohttp|httpx|reqwest] [--native] [--perf]
    python profiling/flamegraph.py --analyze profiling/flamegraph-nonstream.folded

Starts the provider simulator (core 1) and ``gateway serve`` with one Granian worker (core 0),
drives ``POST /v1/chat/completions`` (non-streaming, 50 connections, instant upstream) with wrk
on core 1, and samples the worker with ``py-spy record`` (also on core 1; it pauses the worker
for each sample, ~1 % at the default rate: ``--nonblocking`` stacks came out torn at this request
rate) twice under the same load:

- ``profiling/flamegraph-nonstream.svg``: the flamegraph;
- ``profiling/flamegraph-nonstream.folded``: the same stacks as text (py-spy ``raw``), which
  ``--analyze`` sums into the top costs by self time, by inclusive time and by package;
- with ``--perf``, ``profiling/perf-nonstream.txt``: Linux perf's view of the same worker (all its
  threads: kernel, Granian's Rust, the interpreter, GC), which a Python-level sampler cannot see.

py-spy samples wall time of the Python thread: on the shared core it also charges the moments the
thread waits for Granian's Rust threads to whatever line it was on, so small lines that make a
syscall (``os.urandom``) look costlier than they are; microbenchmark a line before optimising it.

Needs py-spy (``pip install py-spy``; a dev tool, not a dependency) and wrk (``apt-get install -y wrk``).
All load is on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "profiling"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import gateway_bench as gb  # noqa: E402  (the benchmark's process helpers)

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        sys.exit("flamegraph: py-spy is not installed; `pip install py-spy` (into this venv) and retry")
    return found


def record(
    spy: str, pid: int, fmt: str, out: Path, seconds: int, rate: int, native: bool, nonblocking: bool, cpu: int | None
) -> None:
    # Relative paths: py-spy writes its command line into the SVG's title, which is committed.
    spy, out = os.path.relpath(spy), os.path.relpath(out)
    cmd = [spy, "record", "--pid", str(pid), "--format", fmt, "--output", out, "--duration", str(seconds), "--rate", str(rate)]
    if native:
        cmd.append("--native")
    elif nonblocking:
        cmd.append("--nonblocking")
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=seconds + 60)


def perf_report(pid: int, seconds: int, out: Path, cpu: int | None) -> None:
    """CPU of all the worker's threads (the Python loop thread and Granian's tokio threads) by binary and symbol."""
    data = out.with_suffix(".data")
    cmd = ["perf", "record", "-e", "cpu-clock", "-F", "999", "-p", str(pid), "-o", str(data), "--", "sleep", str(seconds)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=seconds + 60)
    parts = []
    for title, sort, n in (
        ("CPU by thread and binary", "comm,dso", 20),
        ("Top native symbols (all threads)", "dso,sym", 40),
    ):
        rep = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "-g", "none", "--stdio"],
            capture_output=True, text=True, check=True,
        ).stdout
        rows = [line for line in rep.splitlines() if line.strip() and not line.startswith("#")][:n]
        parts.append(f"## {title} (perf, cpu-clock, {seconds} s)\n" + "\n".join(rows))
    out.write_text("\n\n".join(parts) + "\n")
    data.unlink(missing_ok=True)
    print(out.read_text())


def frame_key(frame: str, with_line: bool = False) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    return f"{m['func']} ({m['file']}:{m['line']})" if with_line and m["line"] else f"{m['func']} ({m['file']})"


def package(frame: str) -> str:
    m = _FRAME.match(frame)
    path = m["file"] if m else frame
    path = path.replace("\\", "/")
    if path.startswith("gateway/"):
        return "/".join(path.split("/")[:2]).removesuffix(".py")  # gateway/app, gateway/transport ...
    top = path.split("/", 1)[0].removesuffix(".py")
    return top or "?"


def analyze(folded: Path, top: int = 25) -> str:
    """Self, inclusive and per-package shares of a py-spy ``raw`` (collapsed stacks) file."""
    total = 0
    self_fn: Counter[str] = Counter()
    self_line: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg_self: Counter[str] = Counter()
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        # py-spy puts the process/thread name first; frames are "func (file:line)", root first.
        frames = [f for f in frames if _FRAME.match(f)]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_fn[frame_key(leaf)] += count
        self_line[frame_key(leaf, True)] += count
        pkg_self[package(leaf)] += count
        for f in set(frame_key(f) for f in frames):
            incl[f] += count
    if not total:
        return f"{folded}: no samples"

    def table(title: str, counter: Counter[str], n: int) -> list[str]:
        rows = [f"\n{title}", f"{'share':>7}  samples  frame"]
        for name, c in counter.most_common(n):
            rows.append(f"{100.0 * c / total:6.1f}%  {c:7d}  {name}")
        return rows

    out = [f"{folded}: {total} samples (busy samples of the worker's Python threads; idle excluded)"]
    out += table("Self time by package (leaf frame's file):", pkg_self, 20)
    out += table("Self time by function:", self_fn, top)
    out += table("Self time by line:", self_line, top)
    # Frames on (nearly) every stack are the process's start-up chain (runpy, granian, multiprocessing).
    incl = Counter({k: v for k, v in incl.items() if v < 0.98 * total})
    out += table("Inclusive time by function (start-up frames on every stack left out):", incl, top)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=20, help="seconds per py-spy recording (two recordings)")
    ap.add_argument("--rate", type=int, default=200, help="samples per second")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--transport", choices=("aiohttp", "httpx", "reqwest"), default="aiohttp")
    ap.add_argument("--native", action="store_true", help="include native frames (C/Cython/Rust) too")
    ap.add_argument(
        "--nonblocking",
        action="store_true",
        help="do not pause the worker per sample: less overhead, but at thousands of requests/s the stacks come out torn",
    )
    ap.add_argument("--svg", default=str(HERE / "flamegraph-nonstream.svg"))
    ap.add_argument("--folded", default=str(HERE / "flamegraph-nonstream.folded"))
    ap.add_argument("--gateway-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument(
        "--perf",
        nargs="?",
        const=str(HERE / "perf-nonstream.txt"),
        default=None,
        metavar="TXT",
        help="also record the worker with Linux perf (cpu-clock) under the same load and write CPU by thread/binary "
        "and the top native symbols to TXT (default profiling/perf-nonstream.txt): kernel, Rust and GC time py-spy cannot see",
    )
    ap.add_argument("--analyze", metavar="FOLDED", help="only summarise an existing raw/folded file")
    args = ap.parse_args(argv)

    if args.analyze:
        print(analyze(Path(args.analyze)))
        return 0
    spy = py_spy()
    if shutil.which("wrk") is None:
        sys.exit("flamegraph: wrk is not installed; `sudo apt-get install -y wrk`")
    gw_cpu, load_cpu = args.gateway_cpu, args.load_cpu
    os.sched_setaffinity(0, {load_cpu})

    from gateway.simulator import SimulatorProcess

    if args.perf and shutil.which("perf") is None:
        sys.exit("flamegraph: --perf needs Linux perf (`apt-get install -y linux-perf` or your distribution's perf package)")
    warm = 3
    perf_seconds = min(args.seconds, 12) if args.perf else 0
    load_seconds = warm + 2 * args.seconds + perf_seconds + 8  # the recordings plus the samplers' start-up
    sim = SimulatorProcess({"*": {"latency_ms": 0, "response_tokens": 30}}, cpu=load_cpu)
    gw = None
    wrk = None
    try:
        sim.start()
        gw = gb.GatewayProcess(args.transport, sim.base_url, gw_cpu).start()
        workers = gw.worker_pids()
        if len(workers) != 1:
            raise RuntimeError(f"expected one Granian worker, found {workers}")
        pid = workers[0]
        gb.log(f"gateway ({args.transport}) worker pid {pid}; wrk -c{args.connections} for {load_seconds} s")
        cmd = ["taskset", "-c", str(load_cpu), "wrk", "-t1", f"-c{args.connections}", f"-d{load_seconds}s",
               "-s", str(gb.CHAT_LUA), gw.url + gb.CHAT_PATH]
        wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "BENCH_API_KEY": gb.API_KEY})
        time.sleep(warm)
        gb.log(f"py-spy flamegraph -> {args.svg}")
        record(spy, pid, "flamegraph", Path(args.svg), args.seconds, args.rate, args.native, args.nonblocking, load_cpu)
        gb.log(f"py-spy raw -> {args.folded}")
        record(spy, pid, "raw", Path(args.folded), args.seconds, args.rate, args.native, args.nonblocking, load_cpu)
        if args.perf:
            gb.log(f"perf -> {args.perf}")
            perf_report(pid, perf_seconds, Path(args.perf), load_cpu)
        out, err = wrk.communicate(timeout=load_seconds + 30)
        wrk = None
        for line in out.splitlines():
            if line.startswith("WRK_RESULT"):
                gb.log("wrk (under profiling): " + line)
    finally:
        if wrk is not None:
            wrk.kill()
            wrk.wait()
        if gw is not None:
            gw.stop()
        sim.stop()
    print(analyze(Path(args.folded)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
