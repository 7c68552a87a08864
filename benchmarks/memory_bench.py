#!/usr/bin/env python
"""Resident memory of ``gateway serve`` with the cache and its verifier on: RSS, PSS and USS per process.

    python benchmarks/memory_bench.py [--workers 1,4] [--load-seconds 10] [--baseline ../old-checkout]

For each worker count (and each tree: this one, ``--baseline`` another checkout with its own ``.venv``)
it starts ``gateway serve`` against the simulator with the cache on at its defaults (semantic tier,
MiniLM verifier), waits until every worker reports the verifier ready (``/admin/cache``), reads
``/proc/PID/smaps_rollup`` of the main process, every worker and any other child (the shared verifier),
then sends ``--load-seconds`` of traffic through wrk (unique prompts, each then asked again, so misses,
stores, exact hits and the verifier all run) and reads them again.

RSS counts a page shared between processes (library code, a file mapped by all of them, pages a fork
left shared) in every process; PSS divides it among them, so the PSS of all processes adds up to what the
machine spends. USS is the pages of that process alone. The total of PSS over the process tree is the
honest figure for "N workers in all".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import benchmarks.gateway_bench as gb  # noqa: E402
from gateway.simulator import SimulatorProcess  # noqa: E402

ADMIN_KEY = "memory-bench-admin"


def rollup(pid: int) -> dict[str, int]:
    """Rss, Pss and USS (Private_Clean + Private_Dirty) in kB from /proc/PID/smaps_rollup."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                    out[name] = int(rest.split()[0])
    except OSError:
        return {}
    return {"rss": out.get("Rss", 0), "pss": out.get("Pss", 0),
            "uss": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)}


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def role(pid: int, main: int, g: gb.GatewayProcess) -> str:
    if pid == main:
        return "main"
    cmd = cmdline(pid)
    if "gateway.cache.verifier" in cmd:
        return "verifier"
    return "worker" if _parent(pid) == main else "other"


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def snapshot(g: gb.GatewayProcess) -> list[dict]:
    main = g.proc.pid
    rows = []
    for pid in [main, *gb.descendants(main)]:
        m = rollup(pid)
        if m:
            rows.append({"pid": pid, "role": role(pid, main, g), **m})
    return rows


def admin_cache(url: str) -> dict:
    req = urllib.request.Request(url + "/admin/cache", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_verifier(url: str, workers: int, timeout: float = 180.0) -> None:
    """Until every worker (each answers some /admin/cache calls) has said its verifier is ready."""
    ready: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = admin_cache(url)
        v = st.get("verifier") or {}
        if v.get("ready"):
            ready.add(st["worker"])
            if len(ready) >= workers:
                return
        time.sleep(0.05)
    raise RuntimeError(f"verifier not ready in {len(ready)} of {workers} workers after {timeout:g} s")


def load_script(path: Path, run_id: str) -> Path:
    """A new prompt on every odd request, the previous one again on every even one (an exact hit)."""
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {gb.API_KEY}"\n'
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        "  local k = math.floor((n + 1) / 2)\n"
        f'  return wrk.format("POST", "{gb.CHAT_PATH}", nil,\n'
        "    '{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"What is fact number ' .. k ..\n"
        f"    ' about the memory run {run_id}?\"}}]}}')\n"
        "end\n"
        + "done = " + gb.CHAT_LUA.read_text().split("done = ", 1)[1]  # its WRK_RESULT line
    )
    return path


def fmt(rows: list[dict]) -> list[str]:
    out = []
    for r in sorted(rows, key=lambda r: ("main", "verifier", "worker", "other").index(r["role"])):
        out.append(f"  {r['role']:8} pid {r['pid']:>7}: RSS {r['rss'] / 1024:6.1f}  PSS {r['pss'] / 1024:6.1f}  "
                   f"USS {r['uss'] / 1024:6.1f} MB")
    workers = [r for r in rows if r["role"] == "worker"]
    tot = {k: sum(r[k] for r in rows) / 1024 for k in ("rss", "pss", "uss")}
    if workers:
        out.append(f"  worker max RSS {max(r['rss'] for r in workers) / 1024:.1f} MB, max PSS "
                   f"{max(r['pss'] for r in workers) / 1024:.1f} MB; tree total PSS {tot['pss']:.1f} MB "
                   f"(RSS summed {tot['rss']:.1f}, USS summed {tot['uss']:.1f})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,4", help="comma-separated worker counts")
    ap.add_argument("--load-seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--baseline", type=Path, help="another checkout (with its own .venv)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    sim = SimulatorProcess({"*": {"latency_ms": 0}}, startup_timeout=60.0)
    sim.start()
    tmp = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    results = []
    trees = [("this", None)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    try:
        for n in (int(x) for x in args.workers.split(",")):
            for name, tree in trees:
                env = {"GATEWAY_CACHE": "true", "GATEWAY_ADMIN_KEYS": ADMIN_KEY, "DATABASE_URL": "off",
                       "OPENBLAS_NUM_THREADS": "1"}
                g = gb.GatewayProcess("aiohttp", sim.base_url, None, workers=n, extra_env=env, tree=tree)
                g.start(timeout=180)
                try:
                    t0 = time.monotonic()
                    wait_verifier(g.url, n)
                    time.sleep(2)  # let start-up garbage settle (malloc_trim, the rewrite child gone)
                    idle = snapshot(g)
                    print(f"{name}, {n} worker(s), idle (verifier ready after {time.monotonic() - t0:.1f} s), "
                          f"load {os.getloadavg()[0]:.2f}:", flush=True)
                    print("\n".join(fmt(idle)), flush=True)
                    script = load_script(tmp / "load.lua", uuid.uuid4().hex[:10])
                    res = gb.run_wrk(g.url, script, args.connections, args.load_seconds, None)
                    time.sleep(1)
                    st = admin_cache(g.url)
                    after = snapshot(g)
                    print(f"{name}, {n} worker(s), after {args.load_seconds} s of load ({res['requests']} requests, "
                          f"{res['errors']} errors; one worker's cache: {st['entries']} entries, "
                          f"{st.get('verifications')} verifications), load {os.getloadavg()[0]:.2f}:", flush=True)
                    print("\n".join(fmt(after)), flush=True)
                    results.append({"tree": name, "workers": n, "idle": idle, "after": after,
                                    "requests": res["requests"], "errors": res["errors"]})
                finally:
                    g.stop()
    finally:
        sim.stop()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
