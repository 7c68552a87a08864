#!/usr/bin/env python
"""Gateway benchmark: the gateway against the provider simulator, and the simulator alone, in one run.

    python benchmarks/gateway_bench.py [--duration 10] [--quick] [--transport aiohttp|httpx|both] [--json out.json]

What it does, all on 127.0.0.1 and bounded in time (it stops by itself):

1. starts the simulator (``gateway.simulator.SimulatorProcess``) pinned to the load core, and one
   ``gateway serve`` per transport (``GATEWAY_TRANSPORT=aiohttp|httpx``), each one Granian worker
   pinned to the gateway core with ``taskset``;
2. runs wrk (``-t1``, pinned to the load core, with ``benchmarks/wrk/gateway_*.lua`` whose ``done()``
   prints P50/P95/P99) straight at the simulator ("direct") and through each gateway, interleaved:
   direct, aiohttp, httpx, then httpx, aiohttp, direct, ... so slow drift of this shared host
   cancels out. Each gateway run is paired with the direct run of its round; the table gives the
   median of the per-pair ratios and of the per-pair added latencies (gateway minus direct);
3. scenarios: non-streaming and streaming (30 one-token chunks) at 50 connections against an
   instant upstream; non-streaming at 10 connections against a 50 ms upstream (added latency);
   time to the first ``data:`` line of streams at 10 and at 1 connection against a 50 ms upstream,
   timed by a small aiohttp client in this process (pinned to the load core; at ~200 req/s it is
   not the bottleneck). At 10 connections the clients fall into step (all wait the same 50 ms), so
   a stream's first chunk also waits for the others' relaying: the 1-connection row shows the
   per-request floor;
4. reads VmRSS of the Granian worker process(es) from /proc during the non-streaming runs.

Goals (the issue's): non-streaming >= 5,000 req/s; streaming >= 2,000 req/s; added latency over a
50 ms upstream P50 < 1 ms and P99 < 2 ms; added time to first chunk < 1 ms; RSS < 120 MB per
worker. The goals apply to the default transport (aiohttp); httpx rows are reported for comparison.

Needs wrk (``apt-get install -y wrk``) and taskset (util-linux), and two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
WRK_DIR = ROOT / "benchmarks" / "wrk"
CHAT_LUA = WRK_DIR / "gateway_chat.lua"
STREAM_LUA = WRK_DIR / "gateway_stream.lua"
API_KEY = "test-key-123"
CHAT_PATH = "/v1/chat/completions"
PROMPT = [{"role": "user", "content": "Say hello to the benchmark in a few words"}]

sys.path.insert(0, str(ROOT))  # run from a checkout without installing

# Goals from the issue (aiohttp, the default transport).
GOAL_NONSTREAM_RPS = 5000
GOAL_STREAM_RPS = 2000
GOAL_ADDED_P50_MS = 1.0
GOAL_ADDED_P99_MS = 2.0
GOAL_TTFB_MS = 1.0
GOAL_RSS_MB = 120


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- /proc -----------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB (empty if the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


# --- processes under test --------------------------------------------------------------------


class GatewayProcess:
    """``gateway serve`` with one Granian worker, pinned to one core, against the simulator."""

    def __init__(self, transport: str, sim_base: str, cpu: int | None, workers: int = 1) -> None:
        self.transport = transport
        self.sim_base = sim_base
        self.cpu = cpu
        self.workers = workers
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.logfile = tempfile.NamedTemporaryFile(prefix=f"gateway-bench-{transport}-", suffix=".log", delete=False)
        self.rss_samples: list[int] = []  # kB, max over workers, sampled during non-streaming runs

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        # Only what the benchmark sets: a stray REDIS_URL or GATEWAY_CONFIG would change what is measured.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_", "ANTHROPIC_", "GOOGLE_", "REDIS_"))}
        env.update(
            API_URL=self.url,
            WORKER_PROCESSES=str(self.workers),
            GATEWAY_API_KEYS=API_KEY,
            GATEWAY_TRANSPORT=self.transport,
            LOG_LEVEL="WARNING",
            OPENAI_API_KEY="x",
            OPENAI_BASE_URL=self.sim_base + "/v1",
            ANTHROPIC_API_KEY="x",
            ANTHROPIC_BASE_URL=self.sim_base,
            GOOGLE_API_KEY="x",
            GOOGLE_BASE_URL=self.sim_base,
        )
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def start(self) -> GatewayProcess:
        cmd = [sys.executable, "-m", "gateway", "serve"]
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]  # set before exec: the workers inherit it
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=self.logfile, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway ({self.transport}) exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway ({self.transport}) did not answer /health within 30 s:\n{self.log_tail()}")
            time.sleep(0.1)
        check_chat(self.url, f"gateway ({self.transport})")
        return self

    def log_tail(self) -> str:
        try:
            return Path(self.logfile.name).read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        return descendants(self.proc.pid)

    def sample_rss(self) -> None:
        values = [proc_status(p).get("VmRSS", 0) for p in self.worker_pids()]
        if values:
            self.rss_samples.append(max(values))

    def memory(self) -> dict[str, Any]:
        workers = {p: proc_status(p) for p in self.worker_pids()}
        return {
            "workers": len(workers),
            "rss_kb_now": max((s.get("VmRSS", 0) for s in workers.values()), default=0),
            "hwm_kb": max((s.get("VmHWM", 0) for s in workers.values()), default=0),
            "rss_kb_max_sampled_nonstream": max(self.rss_samples, default=0),
            "main_rss_kb": proc_status(self.proc.pid).get("VmRSS", 0) if self.proc else 0,
        }

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        kids = descendants(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in kids:  # only our own gateway's workers, if Granian left any behind
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.logfile.close()
        try:
            os.unlink(self.logfile.name)
        except OSError:
            pass


def check_chat(base: str, what: str) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": PROMPT}).encode()
    req = urllib.request.Request(
        base + CHAT_PATH, body, {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            data = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{what}: chat completion failed with HTTP {exc.code}: {exc.read()[:300]!r}") from None
    if not data.get("choices"):
        raise RuntimeError(f"{what}: unexpected answer {data!r:.300}")


# --- load ------------------------------------------------------------------------------------


def run_wrk(
    url: str, script: Path, conns: int, seconds: int, cpu: int | None, during: Callable[[], None] | None = None
) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url + CHAT_PATH]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "BENCH_API_KEY": API_KEY}
    )
    deadline = time.monotonic() + seconds + 30
    if during is not None:
        time.sleep(min(1.0, seconds / 2))
        while proc.poll() is None and time.monotonic() < deadline:
            during()
            time.sleep(0.5)
    try:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"wrk did not finish: {err}") from None
    for line in out.splitlines():
        if line.startswith("WRK_RESULT "):
            r = json.loads(line[len("WRK_RESULT "):])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
            r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
            for p in ("p50", "p95", "p99"):
                r[f"{p}_ms"] = r[f"{p}_us"] / 1000.0
            return r
    raise RuntimeError(f"wrk printed no result (exit {proc.returncode}):\n{out}\n{err}")


async def _ttfb_load(url: str, conns: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": PROMPT}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    samples: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    connector = aiohttp.TCPConnector(limit=conns, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",)) as session:

        async def one_connection() -> None:
            nonlocal errors
            while loop.time() < end:
                t0 = time.perf_counter()
                try:
                    async with session.post(url + CHAT_PATH, data=body, headers=headers) as resp:
                        if resp.status != 200:
                            errors += 1
                            await resp.read()
                            continue
                        first = None
                        async for line in resp.content:
                            if line.startswith(b"data:"):
                                first = time.perf_counter() - t0
                                break
                        await resp.content.read()  # the rest of the stream, so the connection is reused
                        if first is None:
                            errors += 1
                        else:
                            samples.append(first)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    errors += 1

        await asyncio.gather(*(one_connection() for _ in range(conns)))
    samples.sort()
    n = len(samples)

    def pct(q: float) -> float:
        return samples[min(n - 1, int(q / 100 * n))] * 1000.0 if n else float("nan")

    return {
        "requests": n,
        "errors": errors,
        "rps": n / seconds,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "mean_ms": statistics.fmean(samples) * 1000.0 if n else float("nan"),
    }


def run_ttfb(url: str, conns: int, seconds: float) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(_ttfb_load(url, conns, seconds))
    except ImportError:
        return asyncio.run(_ttfb_load(url, conns, seconds))


# --- scenarios -------------------------------------------------------------------------------


def interleaved(
    name: str,
    targets: list[tuple[str, str]],
    measure: Callable[[str, str], dict[str, Any]],
    warm: Callable[[str, str], Any] | None,
    rounds: int,
) -> dict[str, list[dict[str, Any]]]:
    """Every target once per round; odd rounds in reverse order (A B C, C B A, ...)."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in targets}
    if warm is not None:
        for label, url in targets:
            warm(label, url)
    for r in range(rounds):
        order = targets if r % 2 == 0 else targets[::-1]
        for label, url in order:
            res = measure(label, url)
            runs[label].append(res)
            log(
                f"{name:<10} round {r + 1} {label:<8} {res['rps']:>9,.0f} req/s  "
                f"P50 {res['p50_ms']:.2f}  P95 {res['p95_ms']:.2f}  P99 {res['p99_ms']:.2f} ms  errors {res['errors']}"
            )
    return runs


def pair_stats(direct: list[dict], gateway: list[dict]) -> dict[str, Any]:
    pairs = list(zip(direct, gateway))
    ratios = [g["rps"] / d["rps"] if d["rps"] else float("nan") for d, g in pairs]
    added = {p: [g[f"{p}_ms"] - d[f"{p}_ms"] for d, g in pairs] for p in ("p50", "p95", "p99")}
    return {
        "direct_rps": statistics.median(d["rps"] for d in direct),
        "gateway_rps": statistics.median(g["rps"] for g in gateway),
        "direct_p": {p: statistics.median(d[f"{p}_ms"] for d in direct) for p in ("p50", "p95", "p99")},
        "gateway_p": {p: statistics.median(g[f"{p}_ms"] for g in gateway) for p in ("p50", "p95", "p99")},
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "added_pairs": added,
        "added": {p: statistics.median(v) for p, v in added.items()},
        "errors": sum(d["errors"] for d in direct) + sum(g["errors"] for g in gateway),
    }


# --- report ----------------------------------------------------------------------------------


def fmt_ratio(s: dict) -> str:
    pairs = " / ".join(f"{r:.3f}" for r in s["ratios"])
    return f"{s['ratio']:.3f}" + (f" ({pairs})" if len(s["ratios"]) > 1 else "")


def fmt_added(s: dict) -> str:
    a = s["added"]
    return f"{a['p50']:+.2f} / {a['p95']:+.2f} / {a['p99']:+.2f}"


def fmt_lat(p: dict) -> str:
    return f"P50 {p['p50']:.2f} / P99 {p['p99']:.2f} ms"


def build_rows(results: dict[str, Any], transports: list[str]) -> list[list[str]]:
    rows: list[list[str]] = []
    default = "aiohttp"
    cfg = results["config"]
    upstream_ms = cfg["upstream_ms"]

    def err_note(s: dict) -> str:
        return f" ⚠ {s['errors']} errors" if s["errors"] else ""

    for key, title, goal in (
        ("nonstream", f"non-streaming, {cfg['connections']} conns, 0 ms upstream", GOAL_NONSTREAM_RPS),
        ("stream", f"streaming 30 chunks, {cfg['connections']} conns, 0 ms upstream", GOAL_STREAM_RPS),
    ):
        if key not in results["scenarios"]:
            continue
        for t in transports:
            s = results["scenarios"][key]["pairs"][t]
            gated = t == default
            met = s["gateway_rps"] >= goal and not s["errors"]
            rows.append([
                f"{title} ({t})",
                f"{s['direct_rps']:,.0f} req/s",
                f"{s['gateway_rps']:,.0f} req/s{err_note(s)}",
                fmt_ratio(s),
                fmt_added(s),
                f"≥ {goal:,} req/s" if gated else "(report only)",
                ("yes" if met else "no") if gated else "–",
            ])
    if "latency" in results["scenarios"]:
        for t in transports:
            s = results["scenarios"]["latency"]["pairs"][t]
            gated = t == default
            met = s["added"]["p50"] < GOAL_ADDED_P50_MS and s["added"]["p99"] < GOAL_ADDED_P99_MS and not s["errors"]
            rows.append([
                f"added latency, non-streaming, {cfg['latency_connections']} conns, {upstream_ms:g} ms upstream ({t})",
                fmt_lat(s["direct_p"]),
                fmt_lat(s["gateway_p"]) + err_note(s),
                fmt_ratio(s),
                fmt_added(s),
                f"P50 < {GOAL_ADDED_P50_MS:g} ms, P99 < {GOAL_ADDED_P99_MS:g} ms" if gated else "(report only)",
                ("yes" if met else "no") if gated else "–",
            ])
    for key, sc in results["scenarios"].items():
        if not key.startswith("ttfb"):
            continue
        conns = sc["connections"]
        n_direct = min(r["requests"] for r in sc["runs"]["direct"])
        for t in transports:
            s = sc["pairs"][t]
            gated = t == default and key == "ttfb"
            met = s["added"]["p50"] < GOAL_TTFB_MS and not s["errors"]
            n_gw = min(r["requests"] for r in sc["runs"][t])
            rows.append([
                f"time to first chunk, streaming, {conns} conn{'s' if conns > 1 else ''}, {upstream_ms:g} ms upstream ({t})",
                fmt_lat(s["direct_p"]) + f" (n ≥ {n_direct}/run)",
                fmt_lat(s["gateway_p"]) + f" (n ≥ {n_gw}/run)" + err_note(s),
                fmt_ratio(s),
                fmt_added(s),
                f"added P50 < {GOAL_TTFB_MS:g} ms" if gated else "(report only)",
                ("yes" if met else "no") if gated else "–",
            ])
    for t in transports:
        m = results["memory"].get(t)
        if not m or not m["rss_kb_max_sampled_nonstream"]:
            continue  # sampled during the non-streaming runs only
        mb = m["rss_kb_max_sampled_nonstream"] / 1024
        gated = t == default
        rows.append([
            f"worker RSS under non-streaming load ({t})",
            "–",
            f"{mb:.0f} MB (peak {m['hwm_kb'] / 1024:.0f} MB, {m['workers']} worker)",
            "–",
            "–",
            f"< {GOAL_RSS_MB} MB" if gated else "(report only)",
            ("yes" if 0 < mb < GOAL_RSS_MB else "no") if gated else "–",
        ])
    return rows


def pair_details(results: dict[str, Any], transports: list[str]) -> str:
    """Each pair's ratio and added P50/P99, so the spread behind each median is visible."""
    out = ["Per pair (round: gateway/direct req/s, added P50 / P99 ms):"]
    for key, sc in results["scenarios"].items():
        for t in transports:
            s = sc["pairs"][t]
            a = s["added_pairs"]
            cells = [
                f"r{i + 1} {r:.3f}, {p50:+.2f} / {p99:+.2f}"
                for i, (r, p50, p99) in enumerate(zip(s["ratios"], a["p50"], a["p99"]))
            ]
            out.append(f"- {key} ({t}): " + "; ".join(cells))
    return "\n".join(out)


def markdown(rows: list[list[str]]) -> str:
    head = ["scenario", "direct", "gateway", "ratio gw/direct req/s: median (pairs)", "added P50 / P95 / P99 ms", "goal", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------


def preflight(gateway_cpu: int | None, load_cpu: int | None) -> None:
    if shutil.which("wrk") is None:
        sys.exit(
            "gateway_bench: wrk is not installed. Install it from the system's packages, e.g.\n"
            "    sudo apt-get install -y wrk      (Debian/Ubuntu)\n"
            "    sudo dnf install -y wrk          (Fedora)\n"
            "    brew install wrk                 (macOS)"
        )
    if (gateway_cpu is not None or load_cpu is not None) and shutil.which("taskset") is None:
        sys.exit("gateway_bench: taskset is not installed (util-linux); install it or pass --no-pin")
    if gateway_cpu is not None and load_cpu is not None:
        allowed = os.sched_getaffinity(0)
        if not {gateway_cpu, load_cpu} <= allowed or gateway_cpu == load_cpu:
            sys.exit(f"gateway_bench: needs two distinct usable cores (have {sorted(allowed)}); see --gateway-cpu/--load-cpu or --no-pin")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured run (default 10)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per scenario (default 2; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="3 s runs, one round, TTFB at 10 conns only: a smoke test under a minute")
    ap.add_argument("--transport", choices=("aiohttp", "httpx", "both"), default="both")
    ap.add_argument("--connections", type=int, default=50, help="connections for the throughput scenarios")
    ap.add_argument("--latency-connections", type=int, default=10)
    ap.add_argument(
        "--ttfb-connections",
        default=None,
        help="comma-separated concurrencies for time to first chunk (default 10,1; 10 with --quick); the goal is judged at the first",
    )
    ap.add_argument("--upstream-ms", type=float, default=50.0, help="upstream latency for the added-latency scenarios")
    ap.add_argument("--gateway-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1, help="wrk, the simulator and the TTFB client")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to cores (results are then not comparable)")
    ap.add_argument("--only", default="nonstream,stream,latency,ttfb", help="comma-separated scenarios to run")
    ap.add_argument("--json", dest="json_out", help="write all runs and the summary to this file")
    args = ap.parse_args(argv)

    duration = 3 if args.quick else args.duration
    rounds = args.rounds or (1 if args.quick else 2)
    warmup = 1 if args.quick else 2
    ttfb_seconds = max(2.0, duration / 2)
    gw_cpu = None if args.no_pin else args.gateway_cpu
    load_cpu = None if args.no_pin else args.load_cpu
    transports = ["aiohttp", "httpx"] if args.transport == "both" else [args.transport]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    ttfb_conns = [int(c) for c in (args.ttfb_connections or ("10" if args.quick else "10,1")).split(",") if c.strip()]
    preflight(gw_cpu, load_cpu)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # this process runs the TTFB client and samples /proc

    from gateway.simulator import SimulatorProcess

    import granian

    results: dict[str, Any] = {
        "config": {
            "duration_s": duration,
            "rounds": rounds,
            "warmup_s": warmup,
            "connections": args.connections,
            "latency_connections": args.latency_connections,
            "ttfb_connections": ttfb_conns,
            "upstream_ms": args.upstream_ms,
            "gateway_cpu": gw_cpu,
            "load_cpu": load_cpu,
            "transports": transports,
            "python": platform.python_version(),
            "granian": granian.__version__,
            "host": platform.node(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "scenarios": {},
        "memory": {},
    }
    t_start = time.monotonic()
    sim = SimulatorProcess({"*": {"latency_ms": 0, "response_tokens": 30, "chunk_tokens": 1}}, cpu=load_cpu)
    gateways: dict[str, GatewayProcess] = {}
    try:
        sim.start()
        check_chat(sim.openai_base_url.removesuffix("/v1"), "simulator")
        for t in transports:
            gateways[t] = GatewayProcess(t, sim.base_url, gw_cpu).start()
            log(f"gateway {t} on {gateways[t].url}, workers {gateways[t].worker_pids()}")
        targets = [("direct", sim.base_url)] + [(t, gateways[t].url) for t in transports]

        def wrk_scenario(key: str, script: Path, conns: int, rss: bool) -> None:
            def measure(label: str, url: str) -> dict[str, Any]:
                gw = gateways.get(label)
                during = gw.sample_rss if (rss and gw is not None) else None
                return run_wrk(url, script, conns, duration, load_cpu, during)

            def warm(label: str, url: str) -> None:
                run_wrk(url, script, conns, warmup, load_cpu)

            runs = interleaved(key, targets, measure, warm, rounds)
            results["scenarios"][key] = {
                "runs": runs,
                "pairs": {t: pair_stats(runs["direct"], runs[t]) for t in transports},
            }

        if "nonstream" in only:
            wrk_scenario("nonstream", CHAT_LUA, args.connections, rss=True)
        if "stream" in only:
            wrk_scenario("stream", STREAM_LUA, args.connections, rss=False)
        for t in transports:
            results["memory"][t] = gateways[t].memory()
        if only & {"latency", "ttfb"}:
            sim.configure("*", latency_ms=args.upstream_ms)
        if "latency" in only:
            wrk_scenario("latency", CHAT_LUA, args.latency_connections, rss=False)
        if "ttfb" in only:
            for i, conns in enumerate(ttfb_conns):
                key = "ttfb" if i == 0 else f"ttfb_c{conns}"
                runs = interleaved(
                    key,
                    targets,
                    lambda label, url: run_ttfb(url, conns, ttfb_seconds),
                    lambda label, url: run_ttfb(url, conns, 0.5 if args.quick else 1.0),
                    rounds,
                )
                results["scenarios"][key] = {
                    "connections": conns,
                    "runs": runs,
                    "pairs": {t: pair_stats(runs["direct"], runs[t]) for t in transports},
                }
        for t in transports:
            results["memory"][t]["hwm_kb_end"] = gateways[t].memory()["hwm_kb"]
    finally:
        for gw in gateways.values():
            gw.stop()
        sim.stop()
    results["elapsed_s"] = round(time.monotonic() - t_start, 1)

    if results["scenarios"]:
        rows = build_rows(results, transports)
        results["table"] = markdown(rows)
        cfg = results["config"]
        print(
            f"\nGateway benchmark, {time.strftime('%Y-%m-%d %H:%M')}: gateway on core {gw_cpu} (1 Granian worker), "
            f"wrk -t1 + simulator on core {load_cpu}; {duration} s runs, {rounds} interleaved round(s) "
            f"(direct/gateway pairs), Python {cfg['python']}, Granian {cfg['granian']}.\n"
        )
        print(results["table"])
        print()
        print(pair_details(results, transports))
        print(
            "\nratio: gateway req/s over direct req/s of the same round (median, then each pair); added: gateway "
            "minus direct of the same round, median over pairs. Latency scenarios: wrk percentiles; time to first "
            "chunk: an aiohttp client timing the first `data:` line."
        )
    print(f"\n(elapsed {results['elapsed_s']:.0f} s)", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
        log(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
