#!/usr/bin/env python
"""CPU instructions per request of a gateway worker, counted by valgrind: an A/B that a busy host cannot blur.

    python benchmarks/instr_bench.py [--baseline ../old-checkout] [--variant NAME[@TREE]:K=V,...] \
        [--scenario nonstream|stream|unique] [--seconds 20] [--connections 10] [--repeat 2]

Requests per second on this shared 2-core machine move by 10-40 % from one run to the next with the other
engineers' load, so a 3 % hot-path regression cannot be seen in them. An instruction count can: each
target (this tree, ``--baseline`` another checkout with its own ``.venv``, each ``--variant`` this tree with
some settings changed) runs ``gateway serve`` (one Granian worker, cache and rate limits off) under
``valgrind --tool=callgrind``; after a warm-up the worker's counters are zeroed, wrk sends the scenario's
requests for ``--seconds``, the counters are dumped, and the worker's instructions (all its threads:
Granian's Rust runtime, the loop, aiohttp, our code) are divided by the requests wrk completed. The same
target measured twice here gave 628.8k and 626.8k per request (0.3 %).

``--scenario unique`` sends a prompt never sent before on every request (non-streaming): with the cache on
(``--variant on:GATEWAY_CACHE=true``) every request is a miss and a store, the semantic tier's miss path.
Other processes of a target (the shared verifier that ``gateway serve`` starts) are counted apart and
printed beside the worker: the worker's count is the critical path, theirs is work moved off it.

Blind to load only while requests stay fast under valgrind: past 0.1 s of latency (a busy host, many
connections) every plain request also starts its lazy client watch and the count rises (seen: 696k at
load 1, 727-823k at load 10-16 for one tree); a warning says so, and ``--connections 2`` keeps latency down.

What it does not see: kernel time (system calls, the loopback stack), cache misses and stalls, and
parallelism across threads. It is a measure of work done, to put beside the interleaved throughput of
``gateway_bench.py``, not a replacement for it.

Needs valgrind (callgrind_control comes with it) and wrk; the simulator runs outside valgrind, on loopback.
Each target takes ~1-2 minutes to start under valgrind; everything stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gateway_bench import free_port  # noqa: E402
from gateway.simulator import SimulatorProcess  # noqa: E402

LUA = {"nonstream": ROOT / "benchmarks" / "wrk" / "gateway_chat.lua", "stream": ROOT / "benchmarks" / "wrk" / "gateway_stream.lua",
       "unique": None}  # unique: a script written for each wrk run (unique_script)
API_KEY = "test-key-123"


class Target:
    def __init__(self, name: str, tree: Path, extra: dict[str, str], sim_base: str, outdir: Path) -> None:
        self.name, self.tree, self.extra, self.sim_base, self.outdir = name, tree, extra, sim_base, outdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        python = self.tree / ".venv" / "bin" / "python"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_", "ANTHROPIC_", "GOOGLE_", "REDIS_"))}
        env.update(
            API_URL=f"http://127.0.0.1:{self.port}", WORKER_PROCESSES="1", GATEWAY_API_KEYS=API_KEY,
            GATEWAY_CACHE="false", RATE_LIMIT_ENABLED="false", LOG_LEVEL="WARNING",
            # numpy's OpenBLAS threads spin after any BLAS call; their spinning is not the request's work.
            OPENBLAS_NUM_THREADS="1",
            OPENAI_API_KEY="x", OPENAI_BASE_URL=self.sim_base + "/v1", ANTHROPIC_API_KEY="x",
            ANTHROPIC_BASE_URL=self.sim_base, GOOGLE_API_KEY="x", GOOGLE_BASE_URL=self.sim_base,
            PYTHONPATH=str(self.tree),
        )
        env.update(self.extra)
        out = self.outdir / f"{self.name}.%p.out"
        cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}",
               str(python if python.exists() else sys.executable), "-m", "gateway", "serve"]
        self.proc = subprocess.Popen(cmd, cwd=self.tree, env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.outdir / f"{self.name}.log", "w"), start_new_session=True)

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.outdir / (self.name + '.log')}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(2)
        raise RuntimeError(f"{self.name} did not start within {timeout:g} s")

    def worker(self) -> int:
        # Granian forks its worker from the main process: the valgrind process that is a child of ours' child.
        kids = [k for k in subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                          text=True).stdout.split() if "gateway.cache.verifier" not in _cmdline(k)]
        return int(kids[-1]) if kids else self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def wrk(port: int, lua: Path, seconds: int, conns: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "20s", "-s", str(lua), f"http://127.0.0.1:{port}/v1/chat/completions"],
        capture_output=True, text=True, env={**os.environ, "BENCH_API_KEY": API_KEY},
    ).stdout
    m = re.search(r"WRK_RESULT (\{.*\})", out)
    if not m:
        raise RuntimeError("wrk printed no result:\n" + out)
    return json.loads(m.group(1))


def unique_script(outdir: Path, tag: str) -> Path:
    """Non-streaming, a prompt never sent before on every request (the cache's miss path): ``tag`` is new
    for every wrk run, since each run's counter starts again at 1."""
    path = outdir / f"unique-{tag}.lua"
    done = LUA["nonstream"].read_text().split("done = ", 1)[1]
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_API_KEY") or "test-key-123")\n'
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        '  return wrk.format("POST", "/v1/chat/completions", nil,\n'
        "    '{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Tell me fact number ' .. n ..\n"
        f"    ' about the benchmark run {tag}\"}}]}}')\n"
        "end\n"
        "done = " + done
    )
    return path


def script(t: Target, scenario: str, label: str) -> Path:
    if scenario != "unique":
        return LUA[scenario]
    # Letters only (cache_gateway_bench.py: a hex id can change how the semantic tier classifies the prompt).
    tag = f"{t.name}{label}".replace("-", "").replace("_", "") + "".join(chr(97 + int(h, 16)) for h in uuid.uuid4().hex[:8])
    return unique_script(t.outdir, tag)


def others(t: Target, worker: int) -> list[int]:
    """The valgrind processes of this target besides its main process and the worker (the shared verifier)."""
    kids = subprocess.run(["pgrep", "-P", str(t.proc.pid)], capture_output=True, text=True).stdout.split()
    return [int(k) for k in kids if int(k) != worker]


def total_of(t: Target, pid: int) -> int | None:
    dumps = sorted(t.outdir.glob(f"{t.name}.{pid}.out.*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        return None
    for line in dumps[-1].read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return None


def measure(t: Target, scenario: str, seconds: int, conns: int, label: str) -> dict:
    w = t.worker()
    extra = others(t, w)
    wrk(t.port, script(t, scenario, "warm" + label), 4, conns)  # warm: connections, pools, lazily built objects
    for p in [w, *extra]:
        subprocess.run(["callgrind_control", "-z", str(p)], capture_output=True, check=True)
    res = wrk(t.port, script(t, scenario, label), seconds, conns)
    for p in extra:
        subprocess.run(["callgrind_control", "-d", label, str(p)], capture_output=True)
    subprocess.run(["callgrind_control", "-d", label, str(w)], capture_output=True, check=True)
    time.sleep(2)
    total = total_of(t, w)
    side = sum(total_of(t, p) or 0 for p in extra)
    bad = res["status"] + res["timeout"] + res["connect"] + res["read"] + res["write"]
    n = max(1, res["requests"])
    if res["mean_us"] > 80_000:
        # Past relay.LAZY_WATCH_SECONDS (0.1 s) every plain request also starts its client watch: more work
        # per request than a quiet run's, so such figures compare only with each other.
        print(f"  warning: {t.name}'s mean latency under valgrind was {res['mean_us'] / 1000:.0f} ms (> 80 ms): "
              "per-request timers fired; use fewer --connections on a busy host", flush=True)
    return {"requests": res["requests"], "errors": bad, "instructions": total, "per_request": total / n,
            "other_processes": len(extra), "other_per_request": side / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", type=Path, help="another checkout (with its own .venv), e.g. the commit before a change")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME[@TREE]:K=V,...",
                    help="this tree (or TREE, another checkout with its own .venv) with these settings")
    ap.add_argument("--scenario", choices=sorted(LUA), default="nonstream")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1, help="measurements per target (they should agree within ~1 %%)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"instr_bench: {tool} not found (apt-get install -y valgrind wrk)")
    outdir = Path(tempfile.mkdtemp(prefix="instr-bench-"))
    sim = SimulatorProcess({"*": {"latency_ms": 0, "response_tokens": 30, "chunk_tokens": 1}}, startup_timeout=60.0)
    targets: list[Target] = []
    try:
        sim.start()
        specs = [("this", ROOT, {})]
        if args.baseline:
            specs.append(("baseline", args.baseline.resolve(), {}))
        for v in args.variant:
            name, _, assigns = v.partition(":")
            name, _, tree = name.partition("@")  # NAME@../other-checkout: that tree with these settings
            specs.append((name, Path(tree).resolve() if tree else ROOT, dict(a.split("=", 1) for a in assigns.split(",") if a)))
        targets = [Target(n, tree, extra, sim.base_url, outdir) for n, tree, extra in specs]
        for t in targets:
            t.start()
        for t in targets:
            t.wait_ready()
            print(f"{t.name} ready on {t.port}", flush=True)
        results: dict[str, list[dict]] = {t.name: [] for t in targets}
        for r in range(args.repeat):
            for t in targets if r % 2 == 0 else targets[::-1]:
                m = measure(t, args.scenario, args.seconds, args.connections, f"{t.name}-{r}")
                results[t.name].append(m)
                side = (f"; other processes (the shared verifier): {m['other_per_request'] / 1000:.1f}k"
                        if m["other_processes"] else "")
                print(f"  {t.name} #{r + 1}: {m['per_request'] / 1000:.1f}k instructions/request "
                      f"({m['requests']} requests, {m['errors']} errors{side})", flush=True)
        ref = statistics.median(m["per_request"] for m in results["this"])
        print(f"\n{args.scenario}, {args.connections} connections, {args.seconds} s per measurement")
        print("| target | worker instructions / request (median) | vs this tree | other processes / request |\n"
              "|---|---|---|---|")
        for name, ms in results.items():
            med = statistics.median(m["per_request"] for m in ms)
            side = statistics.median(m["other_per_request"] for m in ms)
            print(f"| {name} | {med / 1000:.1f}k | {med / ref:.3f} | {side / 1000:.1f}k |")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=2))
    finally:
        for t in targets:
            t.stop()
        sim.stop()


if __name__ == "__main__":
    main()
