#!/usr/bin/env python
"""Gateway benchmark: the gateway against the provider simulator, and the simulator alone, in one run.

    python benchmarks/gateway_bench.py [--duration 10] [--quick] [--transport aiohttp,httpx,reqwest|both|all]
        [--bare-clients aiohttp,reqwest] [--floors-everywhere] [--tls] [--no-bare] [--json out.json]

Issue 16's rows (every transport beside the same run's direct, constant-JSON and bare-forwarder rows),
over plain HTTP/1.1 and then over TLS + HTTP/2 (nginx in front of the simulator):

    python benchmarks/gateway_bench.py --transport all --bare-clients aiohttp,reqwest --floors-everywhere \
        --duration 8 --latency-connections 10 --ttfb-connections 10 [--tls]

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
   instant upstream; non-streaming at 10 and at 1 connection against a 50 ms upstream (added
   latency; ``--latency-duration`` s runs); time to the first ``data:`` line of streams at 10 and at
   1 connection against a 50 ms upstream, timed by a small aiohttp client in this process (pinned
   to the load core; at ~200 req/s it is not the bottleneck). At 10 connections the clients fall
   into step (all wait the same 50 ms), so a stream's first chunk also waits for the others'
   relaying: the 1-connection rows show the per-request floor;
4. ``--bare`` (the default): in the added-latency and time-to-first-chunk scenarios, also a bare
   Granian + aiohttp forwarder with no gateway logic (``benchmarks/bare_forwarder.py``; ASGI and
   RSGI, one Granian worker each, pinned to the gateway core like the gateway; streams relayed as
   their bytes arrive, ASGI only) is one more target of the same interleaving. Its rows are the
   floor that Granian + aiohttp set on this host; "gateway minus bare ASGI floor" is the median of
   the per-round differences between the gateway and that forwarder;
5. reads VmRSS of the Granian worker process(es) from /proc during the non-streaming runs.

Goals (the issue's): non-streaming >= 5,000 req/s; streaming >= 2,000 req/s; added latency over a
50 ms upstream P50 < 1 ms and P99 < 2 ms; added time to first chunk < 1 ms; RSS < 120 MB per
worker. The goals apply to the default transport (aiohttp); httpx rows are reported for comparison.

Run time on the 2-core host: 346 s by default (both transports), 254 s with ``--transport aiohttp``,
58 s with ``--quick`` (both transports).

Needs wrk (``apt-get install -y wrk``) and taskset (util-linux), and two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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


def task_ids(pid: int) -> list[str]:
    """The thread ids of a process ([] once it is gone)."""
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for t in task_ids(p):
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


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def core_ticks(cpu: int) -> tuple[int, int]:
    """(user + nice + system, steal) clock ticks of one core so far (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    v = [int(x) for x in line.split()[1:9]]
                    return v[0] + v[1] + v[2], v[7]
    except OSError:
        pass
    return 0, 0


def proc_ticks(pids: list[int]) -> int:
    """utime + stime of these processes (all their threads) so far."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


class CoreWatch:
    """During one run, the share of the gateway core used by processes other than the servers under
    test (this host is shared), and the hypervisor's steal time on it, in % of the run's wall time."""

    def __init__(self, cpu: int | None, pids: Callable[[], list[int]]) -> None:
        self.cpu = cpu
        self.pids = pids
        self.foreign_pct = self.steal_pct = 0.0

    def __enter__(self) -> CoreWatch:
        if self.cpu is not None:
            self._pids = self.pids()
            self._t = time.monotonic()
            self._busy, self._steal = core_ticks(self.cpu)
            self._ours = proc_ticks(self._pids)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cpu is None:
            return
        wall = (time.monotonic() - self._t) * _TICK
        busy, steal = core_ticks(self.cpu)
        ours = proc_ticks(self._pids) - self._ours
        self.foreign_pct = max(0.0, (busy - self._busy - ours) / wall * 100) if wall else 0.0
        self.steal_pct = (steal - self._steal) / wall * 100 if wall else 0.0


# --- processes under test --------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    # Only what the benchmark sets: a stray REDIS_URL or GATEWAY_CONFIG would change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_", "ANTHROPIC_", "GOOGLE_", "REDIS_"))}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class ServerProcess:
    """A Granian server (main process + worker(s)) pinned to one core, on a free port."""

    name = "server"

    def __init__(self, cpu: int | None) -> None:
        self.cpu = cpu
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        slug = "".join(c if c.isalnum() else "-" for c in self.name)
        self.logfile = tempfile.NamedTemporaryFile(prefix=f"gateway-bench-{slug}-", suffix=".log", delete=False)
        self.rss_samples: list[int] = []  # kB, max over workers, sampled during non-streaming runs

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return _clean_env()

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0):
        cmd = self.command()
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]  # set before exec: the workers inherit it
        self.proc = subprocess.Popen(
            cmd, env=self.env(), stdout=self.logfile, stderr=subprocess.STDOUT, cwd=getattr(self, "cwd", ROOT)
        )
        try:
            deadline = time.monotonic() + timeout  # a loaded shared host can take tens of seconds
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if self.ready():
                        break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer within {timeout:g} s:\n{self.log_tail()}")
                time.sleep(0.1)
            check_chat(self.url, self.name)
        except BaseException:
            self.stop()  # never leave a half-started server (and its workers) behind
            raise
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

    def terminate(self) -> None:
        """SIGTERM without waiting, so several servers shut down at once; stop() then waits."""
        if self.proc is not None and self.proc.poll() is None:
            self._kids = descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        kids = getattr(self, "_kids", None) or descendants(proc.pid)
        t0 = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if time.monotonic() - t0 > 2:
            log(f"{self.name} took {time.monotonic() - t0:.1f} s to stop")
        for pid in kids:  # only our own server's workers, if Granian left any behind
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.logfile.close()
        try:
            os.unlink(self.logfile.name)
        except OSError:
            pass


class GatewayProcess(ServerProcess):
    """``gateway serve`` with one Granian worker, pinned to one core, against the simulator."""

    def __init__(
        self, transport: str, sim_base: str, cpu: int | None, workers: int = 1, extra_env: dict[str, str] | None = None,
        tree: Path | None = None,
    ) -> None:
        self.name = f"gateway ({transport})" if tree is None else f"gateway ({transport}, {tree.name})"
        self.transport = transport
        # --baseline: another checkout of the gateway (e.g. the commit before a change), run from its own
        # tree with its own virtualenv, so old and new code are measured in one interleaved run.
        self.tree = tree
        if tree is not None:
            self.cwd = tree
        self.sim_base = sim_base
        self.workers = workers
        self.extra_env = extra_env or {}
        super().__init__(cpu)

    def command(self) -> list[str]:
        if self.tree is not None:
            venv = self.tree / ".venv" / "bin" / "python"
            return [str(venv if venv.exists() else sys.executable), "-m", "gateway", "serve"]
        return [sys.executable, "-m", "gateway", "serve"]

    def env(self) -> dict[str, str]:
        env = _clean_env()
        env.update(
            API_URL=self.url,
            WORKER_PROCESSES=str(self.workers),
            GATEWAY_API_KEYS=API_KEY,
            GATEWAY_TRANSPORT=self.transport,
            # Every request here repeats one prompt: with the response cache on (its default), all but
            # the first would be cache hits and no relaying would be measured.
            GATEWAY_CACHE="false",
            # One key sends everything: the spec's 60 requests a minute would refuse all but the first 100.
            RATE_LIMIT_ENABLED="false",
            LOG_LEVEL="WARNING",
            OPENAI_API_KEY="x",
            OPENAI_BASE_URL=self.sim_base + "/v1",
            ANTHROPIC_API_KEY="x",
            ANTHROPIC_BASE_URL=self.sim_base,
            GOOGLE_API_KEY="x",
            GOOGLE_BASE_URL=self.sim_base,
        )
        env.update(self.extra_env)
        return env

    def ready(self) -> bool:
        with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
            return r.status == 200


class BareProcess(ServerProcess):
    """``benchmarks/bare_forwarder.py`` under the Granian CLI: one worker, the gateway's loop,
    backlog and backpressure (``gateway serve`` passes WORKER_CONNECTIONS=1000 for both).
    ``client`` is its upstream client; ``app="const"``: the constant-JSON app (no upstream)."""

    def __init__(
        self, interface: str, sim_base: str, cpu: int | None, client: str = "aiohttp", app: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = bare_label(interface, client) if app is None else app
        self.interface = interface
        self.client = client
        self.app = app or f"{interface}_app"
        self.upstream = sim_base + CHAT_PATH
        self.extra_env = extra_env or {}
        super().__init__(cpu)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "granian", "--interface", self.interface, "--loop", "uvloop", "--workers", "1",
            "--host", "127.0.0.1", "--port", str(self.port), "--backlog", "1000", "--backpressure", "1000",
            "--log-level", "warning", "--no-access-log", f"benchmarks.bare_forwarder:{self.app}",
        ]

    def env(self) -> dict[str, str]:
        return {**_clean_env(), "UPSTREAM": self.upstream, "CLIENT": self.client, **self.extra_env}

    def ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True  # start() then sends a chat completion through it


def bare_label(interface: str, client: str) -> str:
    return f"bare-{interface}" + ("" if client == "aiohttp" else f"-{client}")


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
    import ssl

    import aiohttp

    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": PROMPT}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    samples: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    ca = os.environ.get("BENCH_CA_FILE")  # the TLS upstream's CA, for the direct https row
    connector = aiohttp.TCPConnector(limit=conns, limit_per_host=0, ssl=ssl.create_default_context(cafile=ca) if ca else True)
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
    watch_cpu: int | None = None,
    watch_pids: Callable[[], list[int]] = list,
) -> dict[str, list[dict[str, Any]]]:
    """Every target once per round; odd rounds in reverse order (A B C, C B A, ...).

    With ``watch_cpu``, each run also records how much of that core other processes than
    ``watch_pids()`` used meanwhile (``foreign_cpu_pct``), and the steal time (``steal_pct``)."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in targets}
    if warm is not None:
        for label, url in targets:
            warm(label, url)
    for r in range(rounds):
        order = targets if r % 2 == 0 else targets[::-1]
        for label, url in order:
            with CoreWatch(watch_cpu, watch_pids) as w:
                res = measure(label, url)
            if watch_cpu is not None:
                res["foreign_cpu_pct"], res["steal_pct"] = round(w.foreign_pct, 1), round(w.steal_pct, 1)
            runs[label].append(res)
            log(
                f"{name:<10} round {r + 1} {label:<9} {res['rps']:>9,.0f} req/s  "
                f"P50 {res['p50_ms']:.2f}  P95 {res['p95_ms']:.2f}  P99 {res['p99_ms']:.2f} ms  errors {res['errors']}"
                + (f"  other CPU on core {watch_cpu}: {w.foreign_pct:.0f}%, steal {w.steal_pct:.0f}%" if watch_cpu is not None else "")
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


def spread(values: list[float]) -> dict[str, Any]:
    """Median of per-round values with their spread: quartiles, range, and the distribution-free 95 %
    confidence interval of the median (order statistics k and n-k+1 of the binomial(n, 1/2) rule),
    so a same-run ratio says whether it is resolved (the interval excludes 1.0) or not."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return {"n": 0}
    q = statistics.quantiles(xs, n=4, method="inclusive") if n > 1 else [xs[0]] * 3
    k = 0  # largest k with P(Binomial(n, 1/2) < k) <= 2.5 %
    while k < n // 2 and sum(math.comb(n, i) for i in range(k + 1)) / 2**n <= 0.025:
        k += 1
    ci = (xs[k - 1], xs[n - k]) if k >= 1 else (xs[0], xs[-1])
    return {"n": n, "median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": xs[0], "max": xs[-1],
            "ci95": ci, "ci_exact": k >= 1}


def ratio_spreads(num: list[dict], den: list[dict], field: str, max_foreign: float | None) -> dict[str, dict]:
    """Per-round ``num[field] / den[field]`` over all rounds, and over the quiet ones only: rounds where
    neither run saw more than ``max_foreign`` % of the gateway core used by other processes
    (``interleaved``'s ``foreign_cpu_pct``; this host's other tenants)."""
    pairs = [(a, b) for a, b in zip(num, den) if a.get(field) and b.get(field)]
    out = {"all": spread([a[field] / b[field] for a, b in pairs])}
    if max_foreign is not None:
        out["quiet"] = spread([a[field] / b[field] for a, b in pairs
                               if max(a.get("foreign_cpu_pct", 0.0), b.get("foreign_cpu_pct", 0.0)) <= max_foreign])
    return out


def fmt_spread(s: dict[str, Any], digits: int = 3) -> str:
    if not s.get("n"):
        return "no rounds"
    f = f"{{:.{digits}f}}".format
    ci = "" if s["ci_exact"] else " (too few rounds for a 95 % interval: range)"
    return (f"median {f(s['median'])}, 95 % CI of the median {f(s['ci95'][0])}-{f(s['ci95'][1])}{ci}, "
            f"IQR {f(s['q1'])}-{f(s['q3'])}, range {f(s['min'])}-{f(s['max'])}, {s['n']} rounds")


# --- report ----------------------------------------------------------------------------------


def fmt_ratio(s: dict) -> str:
    pairs = " / ".join(f"{r:.3f}" for r in s["ratios"])
    return f"{s['ratio']:.3f}" + (f" ({pairs})" if len(s["ratios"]) > 1 else "")


def fmt_added(s: dict) -> str:
    a = s["added"]
    return f"{a['p50']:+.2f} / {a['p95']:+.2f} / {a['p99']:+.2f}"


def fmt_lat(p: dict) -> str:
    return f"P50 {p['p50']:.2f} / P99 {p['p99']:.2f} ms"


def bare_name(label: str) -> str | None:
    """The report's name of a floor target (``bare-asgi``, ``bare-rsgi-reqwest``, ``const``), else None."""
    if label == "const":
        return "Granian constant JSON (ASGI, no upstream)"
    if not label.startswith("bare-"):
        return None
    _, interface, *client = label.split("-")
    return f"bare Granian+{client[0] if client else 'aiohttp'} forwarder ({interface.upper()})"


FLOOR = "bare-asgi"  # what "gateway minus floor" subtracts: the same interface as the gateway


def build_rows(results: dict[str, Any], transports: list[str]) -> list[list[str]]:
    rows: list[list[str]] = []
    default = "aiohttp"
    cfg = results["config"]
    upstream_ms = cfg["upstream_ms"]

    def err_note(s: dict) -> str:
        return f" ⚠ {s['errors']} errors" if s["errors"] else ""

    def n_note(runs: list[dict]) -> str:
        return f" (n ≥ {min(r['requests'] for r in runs)}/run)"

    def plural(conns: int) -> str:
        return f"{conns} conn{'s' if conns > 1 else ''}"

    def floor_rows(sc: dict, title: str, throughput: bool = False) -> None:
        """The bare forwarders' rows, then each gateway minus the bare ASGI forwarder."""
        n_direct = n_note(sc["runs"]["direct"])
        for label in sc["pairs"]:
            name = bare_name(label)
            if name is None:
                continue
            s = sc["pairs"][label]
            rows.append([
                f"{title}: {name}",
                f"{s['direct_rps']:,.0f} req/s" if throughput else fmt_lat(s["direct_p"]) + n_direct,
                (f"{s['gateway_rps']:,.0f} req/s" if throughput else fmt_lat(s["gateway_p"]) + n_note(sc["runs"][label]))
                + err_note(s),
                fmt_ratio(s),
                fmt_added(s),
                "(floor: no gateway logic)",
                "–",
            ])
        for t in transports:
            f = sc.get("floor", {}).get(t)
            if f is None:
                continue
            rows.append([
                f"{title}: gateway ({t}) minus bare ASGI floor",
                "bare ASGI " + fmt_lat(f["direct_p"]),
                "gateway " + fmt_lat(f["gateway_p"]),
                fmt_ratio(f),
                fmt_added(f),
                "(report only)",
                "–",
            ])

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
        floor_rows(results["scenarios"][key], title, throughput=True)
    for key, sc in results["scenarios"].items():
        if not key.startswith("latency"):
            continue
        title = f"added latency, non-streaming, {plural(sc['connections'])}, {upstream_ms:g} ms upstream"
        n_direct = n_note(sc["runs"]["direct"])
        for t in transports:
            s = sc["pairs"][t]
            gated = t == default and key == "latency"  # the goal is at the first concurrency (10)
            met = s["added"]["p50"] < GOAL_ADDED_P50_MS and s["added"]["p99"] < GOAL_ADDED_P99_MS and not s["errors"]
            rows.append([
                f"{title} ({t})",
                fmt_lat(s["direct_p"]) + n_direct,
                fmt_lat(s["gateway_p"]) + n_note(sc["runs"][t]) + err_note(s),
                fmt_ratio(s),
                fmt_added(s),
                f"P50 < {GOAL_ADDED_P50_MS:g} ms, P99 < {GOAL_ADDED_P99_MS:g} ms" if gated else "(report only)",
                ("yes" if met else "no") if gated else "–",
            ])
        floor_rows(sc, title)
    for key, sc in results["scenarios"].items():
        if not key.startswith("ttfb"):
            continue
        title = f"time to first chunk, streaming, {plural(sc['connections'])}, {upstream_ms:g} ms upstream"
        n_direct = n_note(sc["runs"]["direct"])
        for t in transports:
            s = sc["pairs"][t]
            gated = t == default and key == "ttfb"
            met = s["added"]["p50"] < GOAL_TTFB_MS and not s["errors"]
            rows.append([
                f"{title} ({t})",
                fmt_lat(s["direct_p"]) + n_direct,
                fmt_lat(s["gateway_p"]) + n_note(sc["runs"][t]) + err_note(s),
                fmt_ratio(s),
                fmt_added(s),
                f"added P50 < {GOAL_TTFB_MS:g} ms" if gated else "(report only)",
                ("yes" if met else "no") if gated else "–",
            ])
        floor_rows(sc, title)
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
    out = ["Per pair (round: target/direct req/s, added P50 / P99 ms; \"minus bare-asgi\": gateway/bare, gateway minus bare):"]

    def line(name: str, s: dict) -> str:
        a = s["added_pairs"]
        cells = [
            f"r{i + 1} {r:.3f}, {p50:+.2f} / {p99:+.2f}"
            for i, (r, p50, p99) in enumerate(zip(s["ratios"], a["p50"], a["p99"]))
        ]
        return f"- {name}: " + "; ".join(cells)

    for key, sc in results["scenarios"].items():
        for label, s in sc["pairs"].items():
            out.append(line(f"{key} ({label})", s))
        for t, f in sc.get("floor", {}).items():
            out.append(line(f"{key} ({t} minus {FLOOR})", f))
    return "\n".join(out)


NOISY_PCT = 5.0


def host_noise(results: dict[str, Any]) -> str:
    """Runs during which other processes used the gateway core (or the hypervisor stole it)."""
    runs = [
        (key, i + 1, label, r)
        for key, sc in results["scenarios"].items()
        for label, rs in sc["runs"].items()
        for i, r in enumerate(rs)
        if "foreign_cpu_pct" in r
    ]
    noisy = [x for x in runs if x[3]["foreign_cpu_pct"] > NOISY_PCT or x[3]["steal_pct"] > NOISY_PCT]
    if not runs:
        return ""
    cpu = results["config"]["gateway_cpu"]
    if not noisy:
        top = max(max(r["foreign_cpu_pct"], r["steal_pct"]) for *_, r in runs)
        return f"Host noise: other processes and steal stayed ≤ {top:.0f}% of core {cpu} in every run."
    cells = [f"{key} r{rnd} {label} {r['foreign_cpu_pct']:.0f}%/{r['steal_pct']:.0f}%" for key, rnd, label, r in noisy]
    return (
        f"⚠ Host noise: in {len(noisy)} of {len(runs)} runs other processes (or steal) used more than "
        f"{NOISY_PCT:g}% of core {cpu} (other/steal): " + "; ".join(cells)
    )


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
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured throughput run (default 10)")
    ap.add_argument(
        "--latency-duration", type=int, default=None, help="seconds per measured added-latency run (default 6; 3 with --quick)"
    )
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per scenario (default 2; 1 with --quick)")
    ap.add_argument(
        "--quick", action="store_true", help="3 s runs, one round, latency and TTFB at 10 conns only: a smoke test of about a minute"
    )
    ap.add_argument(
        "--transport", default="both",
        help="comma-separated gateway transports (aiohttp, httpx, reqwest); 'both': aiohttp,httpx; 'all': the three",
    )
    ap.add_argument(
        "--bare-clients", default="aiohttp",
        help="comma-separated upstream clients of the bare forwarders (aiohttp, reqwest, httpx): an ASGI forwarder "
        "each, and an RSGI one for aiohttp and reqwest (default aiohttp)",
    )
    ap.add_argument(
        "--floors-everywhere", action="store_true",
        help="the bare forwarders in the throughput scenarios too, and a constant-JSON Granian app in the non-streaming one",
    )
    ap.add_argument(
        "--tls", action="store_true",
        help="upstream over TLS + HTTP/2: nginx (benchmarks/tls_upstream.py) in front of the simulator, its CA "
        "trusted through UPSTREAM_CA_BUNDLE; the direct rows go through nginx too",
    )
    ap.add_argument("--connections", type=int, default=50, help="connections for the throughput scenarios")
    ap.add_argument(
        "--latency-connections",
        default=None,
        help="comma-separated concurrencies for added latency (default 10,1; 10 with --quick); the goal is judged at the first",
    )
    ap.add_argument(
        "--ttfb-connections",
        default=None,
        help="comma-separated concurrencies for time to first chunk (default 10,1; 10 with --quick); the goal is judged at the first",
    )
    ap.add_argument(
        "--bare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure bare Granian+aiohttp forwarders (benchmarks/bare_forwarder.py) in the latency and TTFB "
        "scenarios, as the floor (default on; --no-bare to skip)",
    )
    ap.add_argument("--upstream-ms", type=float, default=50.0, help="upstream latency for the added-latency scenarios")
    ap.add_argument("--gateway-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1, help="wrk, the simulator and the TTFB client")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to cores (results are then not comparable)")
    ap.add_argument("--only", default="nonstream,stream,latency,ttfb", help="comma-separated scenarios to run")
    ap.add_argument("--json", dest="json_out", help="write all runs and the summary to this file")
    ap.add_argument(
        "--variant", action="append", default=[], metavar="NAME:K=V,...",
        help="this tree once more with these settings (repeatable), e.g. lean:GATEWAY_METRICS=false,DATABASE_URL=off",
    )
    ap.add_argument(
        "--baseline", type=Path, default=None,
        help="another checkout of the gateway (with its own .venv): measured as one more target, 'baseline', "
        "in the same interleaved run (old commit vs this tree)",
    )
    args = ap.parse_args(argv)

    duration = 3 if args.quick else args.duration
    lat_duration = args.latency_duration or (3 if args.quick else 6)
    rounds = args.rounds or (1 if args.quick else 2)
    warmup = 1 if args.quick else 2
    # The latency/TTFB scenarios come after the throughput ones: only the bare forwarders are cold (a
    # 1 s warm-up in the first latency scenario); a scenario's first round runs right after the warm-ups.
    lat_warmup = 1
    ttfb_seconds = max(2.0, duration / 2)
    gw_cpu = None if args.no_pin else args.gateway_cpu
    load_cpu = None if args.no_pin else args.load_cpu
    named = {"both": "aiohttp,httpx", "all": "aiohttp,httpx,reqwest"}.get(args.transport, args.transport)
    transports = [t.strip() for t in named.split(",") if t.strip()]
    bare_clients = [c.strip() for c in args.bare_clients.split(",") if c.strip()]
    for t in transports + bare_clients:
        if t not in ("aiohttp", "httpx", "reqwest"):
            ap.error(f"unknown transport/client {t!r}")
    only = {s.strip() for s in args.only.split(",") if s.strip()}

    def conns_list(given: str | None) -> list[int]:
        return [int(c) for c in (given or ("10" if args.quick else "10,1")).split(",") if c.strip()]

    lat_conns = conns_list(args.latency_connections)
    ttfb_conns = conns_list(args.ttfb_connections)
    bare = args.bare and (bool(only & {"latency", "ttfb"}) or args.floors_everywhere)
    preflight(gw_cpu, load_cpu)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # this process runs the TTFB client and samples /proc

    from gateway.simulator import SimulatorProcess

    import granian

    results: dict[str, Any] = {
        "config": {
            "duration_s": duration,
            "latency_duration_s": lat_duration,
            "rounds": rounds,
            "warmup_s": warmup,
            "connections": args.connections,
            "latency_connections": lat_conns,
            "ttfb_connections": ttfb_conns,
            "bare": bare,
            "upstream_ms": args.upstream_ms,
            "gateway_cpu": gw_cpu,
            "load_cpu": load_cpu,
            "transports": transports,
            "bare_clients": bare_clients,
            "tls": args.tls,
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
    bares: dict[str, BareProcess] = {}
    const: BareProcess | None = None
    nginx = None
    try:
        sim.start()
        check_chat(sim.openai_base_url.removesuffix("/v1"), "simulator")
        upstream, trust = sim.base_url, {}
        if args.tls:
            from benchmarks.tls_upstream import NginxTLS

            nginx = NginxTLS(int(sim.base_url.rsplit(":", 1)[1]), load_cpu).start()
            upstream = nginx.base_url
            # SSL_CERT_FILE as well: until the router passes settings.upstream_ca_bundle to make_transport(),
            # the gateway's clients find the CA through their default trust stores (all three read it).
            trust = {"UPSTREAM_CA_BUNDLE": nginx.ca_file, "SSL_CERT_FILE": nginx.ca_file}
            os.environ["BENCH_CA_FILE"] = nginx.ca_file
            log(f"nginx TLS + HTTP/2 on {upstream} in front of the simulator")
        for t in transports:
            gateways[t] = GatewayProcess(t, upstream, gw_cpu, extra_env=trust).start()
            log(f"gateway {t} on {gateways[t].url}, workers {gateways[t].worker_pids()}")
        if args.baseline is not None:
            gateways["baseline"] = GatewayProcess(
                "aiohttp", upstream, gw_cpu, extra_env=trust, tree=args.baseline.resolve()
            ).start()
            transports.append("baseline")
            log(f"baseline gateway ({args.baseline}) on {gateways['baseline'].url}")
        for spec in args.variant:
            # --variant NAME:K=V,K=V: this tree once more with some settings changed (e.g. the later
            # issues' listeners off), one more target of the same interleaving.
            name, _, assigns = spec.partition(":")
            env = dict(trust, **dict(a.split("=", 1) for a in assigns.split(",") if a))
            gateways[name] = GatewayProcess("aiohttp", upstream, gw_cpu, extra_env=env).start()
            transports.append(name)
            log(f"variant {name} ({assigns}) on {gateways[name].url}")
        if bare:
            for client in bare_clients:
                for interface in ("asgi", "rsgi") if client != "httpx" else ("asgi",):
                    label = bare_label(interface, client)
                    b = bares[label] = BareProcess(interface, upstream, gw_cpu, client, extra_env=trust).start()
                    log(f"bare forwarder {label} on {b.url}, workers {b.worker_pids()}")
        if args.floors_everywhere:
            const = BareProcess("asgi", upstream, gw_cpu, app="const_app").start()
            const.name = "const"
        direct = upstream if args.tls else sim.base_url
        targets = [("direct", direct)] + [(t, gateways[t].url) for t in transports]
        servers = [*gateways.values(), *bares.values(), *([const] if const else [])]
        our_pids = [pid for srv in servers if srv.proc is not None for pid in (srv.proc.pid, *srv.worker_pids())]
        # Latency: both forwarders. Time to first chunk: the ASGI one (the gateway's interface) as the floor.
        lat_targets = targets + [(label, b.url) for label, b in bares.items()]
        ttfb_targets = targets + [(label, b.url) for label, b in bares.items() if label == FLOOR or args.floors_everywhere]
        floors = [(label, b.url) for label, b in bares.items()] if args.floors_everywhere else []

        def summarize(runs: dict[str, list[dict]], conns: int | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "runs": runs,
                "pairs": {label: pair_stats(runs["direct"], r) for label, r in runs.items() if label != "direct"},
            }
            if conns is not None:
                out["connections"] = conns
            if FLOOR in runs:
                out["floor"] = {t: pair_stats(runs[FLOOR], runs[t]) for t in transports}
            return out

        def wrk_scenario(
            key: str, script: Path, conns: int, rss: bool, tgts: list[tuple[str, str]], seconds: int, warm_s: float
        ) -> dict[str, list[dict]]:
            def measure(label: str, url: str) -> dict[str, Any]:
                gw = gateways.get(label)
                during = gw.sample_rss if (rss and gw is not None) else None
                return run_wrk(url, script, conns, seconds, load_cpu, during)

            def warm(label: str, url: str) -> None:
                run_wrk(url, script, conns, warm_s, load_cpu)

            return interleaved(key, tgts, measure, warm if warm_s > 0 else None, rounds, gw_cpu, lambda: our_pids)

        if "nonstream" in only:
            tgts = targets + floors + ([("const", const.url)] if const else [])
            runs = wrk_scenario("nonstream", CHAT_LUA, args.connections, True, tgts, duration, warmup)
            results["scenarios"]["nonstream"] = summarize(runs)
        if "stream" in only:
            runs = wrk_scenario("stream", STREAM_LUA, args.connections, False, targets + floors, duration, warmup)
            results["scenarios"]["stream"] = summarize(runs)
        for t in transports:
            results["memory"][t] = gateways[t].memory()
        if only & {"latency", "ttfb"}:
            sim.configure("*", latency_ms=args.upstream_ms)
        if "latency" in only:
            for i, conns in enumerate(lat_conns):
                key = "latency" if i == 0 else f"latency_c{conns}"
                runs = wrk_scenario(key, CHAT_LUA, conns, False, lat_targets, lat_duration, lat_warmup if i == 0 else 0)
                results["scenarios"][key] = summarize(runs, conns)
        if "ttfb" in only:
            for i, conns in enumerate(ttfb_conns):
                key = "ttfb" if i == 0 else f"ttfb_c{conns}"
                runs = interleaved(
                    key,
                    ttfb_targets,
                    lambda label, url: run_ttfb(url, conns, ttfb_seconds),
                    lambda label, url: run_ttfb(url, conns, 0.5),
                    rounds,
                    gw_cpu,
                    lambda: our_pids,
                )
                results["scenarios"][key] = summarize(runs, conns)
        for t in transports:
            results["memory"][t]["hwm_kb_end"] = gateways[t].memory()["hwm_kb"]
        for label, b in bares.items():
            results["memory"][label] = b.memory()
    finally:
        servers = [*gateways.values(), *bares.values(), *([const] if const else [])]
        for server in servers:
            server.terminate()
        for server in servers:
            server.stop()
        if nginx is not None:
            nginx.stop()
        sim.stop()
    results["elapsed_s"] = round(time.monotonic() - t_start, 1)

    if results["scenarios"]:
        rows = build_rows(results, transports)
        results["table"] = markdown(rows)
        cfg = results["config"]
        print(
            f"\nGateway benchmark, {time.strftime('%Y-%m-%d %H:%M')}: gateway on core {gw_cpu} (1 Granian worker), "
            f"wrk -t1 + simulator on core {load_cpu}; {duration} s throughput runs, {lat_duration} s latency runs, "
            f"{ttfb_seconds:g} s time-to-first-chunk runs, {rounds} interleaved round(s) (direct/gateway pairs), "
            f"Python {cfg['python']}, Granian {cfg['granian']}.\n"
        )
        print(results["table"])
        print()
        print(pair_details(results, transports))
        noise = host_noise(results)
        if noise:
            print("\n" + noise)
        print(
            "\nratio: gateway req/s over direct req/s of the same round (median, then each pair); added: gateway "
            "minus direct of the same round, median over pairs. Latency scenarios: wrk percentiles; time to first "
            "chunk: an aiohttp client timing the first `data:` line. n: requests (or streams) per run; at 1 "
            "connection a run has ~20 per second of a 50 ms upstream, so its P99 is one of its few slowest."
            + (
                " Bare forwarder rows: benchmarks/bare_forwarder.py (no auth, validation, routing or translation; "
                "same Granian worker, loop and core as the gateway), in the same interleaving: the added latency "
                "any Granian + aiohttp proxy pays on this host. \"minus bare ASGI floor\": gateway minus that "
                "forwarder in the same round, median over rounds (the gateway's own cost)."
                if bare
                else ""
            )
        )
    print(f"\n(elapsed {results['elapsed_s']:.0f} s)", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
        log(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
