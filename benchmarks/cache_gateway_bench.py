#!/usr/bin/env python
"""The response cache through the real gateway: cache hits versus the uncached path, in one run.

    python benchmarks/cache_gateway_bench.py [--duration 8] [--rounds 2] [--connections 50] [--quick] [--json out.json]

All on 127.0.0.1, bounded in time, reusing benchmarks/gateway_bench.py's processes and wrk runner:

1. the simulator (instant upstream by default, ``--upstream-ms``) pinned to the load core; two
   ``gateway serve`` (one Granian worker each, pinned to the gateway core with taskset): one with the
   cache on (defaults: MiniLM verifier, threshold 0.85, no Redis unless ``--redis-url``), one with
   ``GATEWAY_CACHE=off``;
2. a small Python client (sequential, one keep-alive connection, on the load core) stores prompt
   ``a`` of every paraphrase pair labelled "hit" in tests/data/cache_pairs*.jsonl, in
   ``--namespaces`` namespaces (each namespace is a fresh scope, so each pair gives one more
   first-time sample), then times, interleaved per pair, ``a`` through the cache-off gateway, with
   ``Cache-Control: no-store``, and as an exact hit; then the first-time lookup of each paraphrase
   ``b`` (a semantic hit when the guard + MiniLM accept it) followed by one more exact hit (see
   ``first_time_pass``); the misses that stored the ``a`` prompts are timed too;
3. wrk (-t1, load core) interleaved over rounds: cache off, cache on + no-store, exact hit (one
   stored prompt), and a rotation over the paraphrases that were semantic hits in step 2. A
   semantic hit stores the paraphrase as an exact alias, so in that rotation every request after
   the first of each paraphrase is an *exact* hit on the alias: the row says so, and the first-time
   semantic cost is the step-2 latency, not a wrk row;
4. the x-cache mix of every wrk run on the cache-on gateway comes from ``GET /admin/cache``
   before/after (hits, semantic hits, misses, bypasses), and the worker's VmRSS is sampled from
   /proc under load (cache on with MiniLM loaded, and cache off for comparison).

Needs wrk and taskset, and two cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gateway_bench as gb  # noqa: E402  (its processes, wrk runner, interleaving)

ADMIN_KEY = "bench-admin-key"
DATA = ROOT / "tests" / "data"
MODEL = "gpt-4o-mini"

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max))
end
"""


def lua_str(s: str) -> str:
    level = "=" * 4
    assert f"]{level}]" not in s
    return f"[{level}[{s}]{level}]"


def static_script(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    lines = [
        'wrk.method = "POST"',
        f'wrk.path = "{gb.CHAT_PATH}"',
        'wrk.headers["Content-Type"] = "application/json"',
        f'wrk.headers["Authorization"] = "Bearer {gb.API_KEY}"',
    ]
    lines += [f'wrk.headers["{k}"] = {lua_str(v)}' for k, v in headers.items()]
    lines.append(f"wrk.body = {lua_str(body.decode())}")
    path.write_text("\n".join(lines) + "\n" + _DONE)
    return path


def rotation_script(path: Path, items: list[tuple[bytes, dict[str, str]]]) -> Path:
    """Requests built once in init(), sent in turn (one lua call per request)."""
    rows = []
    for body, headers in items:
        h = ", ".join(f"[ {lua_str(k)} ] = {lua_str(v)}" for k, v in headers.items())  # "[ [" : not a long bracket
        rows.append(f"  {{{lua_str(body.decode())}, {{{h}}}}},")
    path.write_text(
        "local items = {\n" + "\n".join(rows) + "\n}\n"
        "local reqs = {}\n"
        "local n = 0\n"
        "init = function(args)\n"
        "  for i, it in ipairs(items) do\n"
        f'    local h = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {gb.API_KEY}"}}\n'
        "    for k, v in pairs(it[2]) do h[k] = v end\n"
        f'    reqs[i] = wrk.format("POST", "{gb.CHAT_PATH}", h, it[1])\n'
        "  end\n"
        "end\n"
        "request = function()\n"
        "  n = n + 1\n"
        "  return reqs[(n % #reqs) + 1]\n"
        "end\n" + _DONE
    )
    return path


class CacheGateway(gb.GatewayProcess):
    """``gateway serve`` (aiohttp transport, one worker) with extra environment and an admin key."""

    def __init__(self, label: str, sim_base: str, cpu: int | None, extra: dict[str, str]) -> None:
        self.extra = extra
        super().__init__("aiohttp", sim_base, cpu)
        self.name = f"gateway ({label})"

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(self.extra)
        env["GATEWAY_ADMIN_KEYS"] = ADMIN_KEY
        return env


class Client:
    """One keep-alive HTTP/1.1 connection; timed requests."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.addr = (host, int(port))
        self.conn = http.client.HTTPConnection(*self.addr, timeout=30)

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]):
        for attempt in (1, 2):  # the server may have closed the idle keep-alive connection (during a wrk run)
            try:
                t0 = time.perf_counter()
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                return time.perf_counter() - t0, r, data
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(*self.addr, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[float, int, dict[str, str], bytes]:
        h = {"content-type": "application/json", "authorization": f"Bearer {gb.API_KEY}", **headers}
        took, r, data = self._send("POST", path, body, h)
        return took, r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def get(self, path: str, key: str) -> dict:
        _, r, data = self._send("GET", path, None, {"authorization": f"Bearer {key}"})
        if r.status != 200:
            raise RuntimeError(f"GET {path}: {r.status} {data[:200]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()


def chat_body(text: str) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode()


def load_pairs() -> list[tuple[str, str]]:
    out = []
    for name in ("cache_pairs.jsonl", "cache_pairs_holdout.jsonl"):
        for line in (DATA / name).read_text().splitlines():
            if line.strip():
                p = json.loads(line)
                if p["label"] == "hit":
                    out.append((p["a"], p["b"]))
    return out


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] * 1000.0


def cache_mix(before: dict, after: dict) -> dict[str, int]:
    return {k: after[k] - before[k] for k in ("hits", "semantic_hits", "misses", "bypasses")}


def fmt_mix(m: dict[str, int]) -> str:
    total = sum(m.values()) or 1
    parts = [f"{name} {m[k] / total:.1%}" for k, name in
             (("hits", "hit"), ("semantic_hits", "semantic"), ("misses", "miss"), ("bypasses", "bypass")) if m[k]]
    return ", ".join(parts) or "none"


def first_time_pass(on: CacheGateway, off: CacheGateway, pairs: list[tuple[str, str]], namespaces: int) -> dict:
    """Sequential, one keep-alive connection per gateway, per namespace:

    1. store every ``a`` (timed: a miss, looked up then stored);
    2. per pair, interleaved: ``a`` through the cache-off gateway, ``a`` with no-store, ``a`` again (exact hit);
    3. per pair: the paraphrase ``b`` for the first time (semantic hit, or a miss when not accepted), then
       ``a`` once more: an exact hit right after a MiniLM verification ran on the worker.

    Step 3 is separate because a request right after a verification is slower (step 3's exact hits show by
    how much): interleaving it with step 2 would charge that to the uncached rows.
    """
    c_on, c_off = Client(on.url), Client(off.url)
    kinds = {k: [] for k in ("miss_store", "cache_off", "no_store", "exact_hit", "semantic_hit", "paraphrase_miss",
                             "exact_after_verify")}
    seen: dict[str, int] = {}
    alias_items: list[tuple[bytes, dict[str, str]]] = []
    errors = 0
    try:
        for n in range(namespaces):
            ns = {"x-gateway-cache-namespace": f"bench{n}-{uuid.uuid4().hex[:6]}"}
            for a, _b in pairs:
                took, status, h, _ = c_on.post(gb.CHAT_PATH, chat_body(a), ns)
                errors += status != 200
                if h.get("x-cache") == "miss":
                    kinds["miss_store"].append(took)
            time.sleep(0.2)  # the writer task has indexed them long before this
            for a, _b in pairs:
                took, status, _, _ = c_off.post(gb.CHAT_PATH, chat_body(a), {})
                errors += status != 200
                kinds["cache_off"].append(took)
                took, status, h, _ = c_on.post(gb.CHAT_PATH, chat_body(a), {**ns, "cache-control": "no-store"})
                errors += status != 200 or h.get("x-cache") != "bypass"
                kinds["no_store"].append(took)
                took, status, h, _ = c_on.post(gb.CHAT_PATH, chat_body(a), ns)
                errors += status != 200
                if h.get("x-cache") == "hit":
                    kinds["exact_hit"].append(took)
            for a, b in pairs:
                took, status, h, _ = c_on.post(gb.CHAT_PATH, chat_body(b), ns)
                errors += status != 200
                x = h.get("x-cache", "?")
                seen[x] = seen.get(x, 0) + 1
                if x == "semantic-hit":
                    kinds["semantic_hit"].append(took)
                    alias_items.append((chat_body(b), dict(ns)))
                    took, status, h, _ = c_on.post(gb.CHAT_PATH, chat_body(a), ns)
                    errors += status != 200
                    if h.get("x-cache") == "hit":
                        kinds["exact_after_verify"].append(took)
                else:
                    kinds["paraphrase_miss"].append(took)
        stats = c_on.get("/admin/cache", ADMIN_KEY)
    finally:
        c_on.close()
        c_off.close()
    return {"latency_s": kinds, "paraphrase_x_cache": seen, "alias_items": alias_items, "errors": errors,
            "verifications": stats["verifications"], "entries": stats["entries"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--namespaces", type=int, default=3, help="copies of the pair set for first-time semantic samples")
    ap.add_argument("--upstream-ms", type=float, default=0.0, help="simulator latency (default 0: instant upstream)")
    ap.add_argument("--redis-url", default=None, help="mirror the cache-on gateway to this Redis (unique key prefix)")
    ap.add_argument("--quick", action="store_true", help="3 s runs, one round, one namespace")
    ap.add_argument("--gateway-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1, help="wrk, the simulator and the Python client")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    duration = 3 if args.quick else args.duration
    rounds = 1 if args.quick else args.rounds
    namespaces = 1 if args.quick else args.namespaces
    gw_cpu, load_cpu = args.gateway_cpu, args.load_cpu
    gb.preflight(gw_cpu, load_cpu)
    os.sched_setaffinity(0, {load_cpu})

    from gateway.simulator import SimulatorProcess

    tmp = Path(tempfile.mkdtemp(prefix="cache-gw-bench-"))
    on_env = {"GATEWAY_CACHE": "on"}
    prefix = None
    if args.redis_url:
        prefix = f"gwbench:{uuid.uuid4().hex[:8]}:"
        (tmp / "cache.toml").write_text(f'[cache]\nredis_prefix = "{prefix}"\n')
        on_env |= {"REDIS_URL": args.redis_url, "GATEWAY_CONFIG": str(tmp / "cache.toml")}
    pairs = load_pairs()
    results: dict[str, Any] = {"config": {"duration_s": duration, "rounds": rounds, "connections": args.connections,
                                          "namespaces": namespaces, "pairs": len(pairs), "upstream_ms": args.upstream_ms,
                                          "redis": bool(args.redis_url), "gateway_cpu": gw_cpu, "load_cpu": load_cpu}}
    t0 = time.monotonic()
    sim = SimulatorProcess({"*": {"latency_ms": args.upstream_ms, "response_tokens": 30}}, cpu=load_cpu)
    on = off = None
    rss: dict[str, list[int]] = {"on": [], "off": []}
    try:
        sim.start()
        on = CacheGateway("cache on", sim.base_url, gw_cpu, on_env).start()
        off = CacheGateway("cache off", sim.base_url, gw_cpu, {"GATEWAY_CACHE": "off"}).start()
        gb.log(f"cache on: {on.url} workers {on.worker_pids()}; cache off: {off.url} workers {off.worker_pids()}")
        gb.log(f"first-time pass: {len(pairs)} paraphrase pairs x {namespaces} namespace(s)")
        ft = first_time_pass(on, off, pairs, namespaces)
        gb.log(f"paraphrases: {ft['paraphrase_x_cache']}, verifications {ft['verifications']}, errors {ft['errors']}")
        # Idle, after the first-time pass: the model is loaded and the entries are in.
        rss_idle = {"on": max(gb.proc_status(p).get("VmRSS", 0) for p in on.worker_pids()),
                    "off": max(gb.proc_status(p).get("VmRSS", 0) for p in off.worker_pids())}
        if not ft["alias_items"]:
            raise RuntimeError("no paraphrase was a semantic hit: nothing to rotate through")

        exact = chat_body("Say hello to the benchmark in a few words")
        scripts = {
            "cache off": (off, static_script(tmp / "off.lua", exact, {})),
            "no-store": (on, static_script(tmp / "nostore.lua", exact, {"Cache-Control": "no-store"})),
            "exact hit": (on, static_script(tmp / "exact.lua", exact, {})),
            "alias rotation": (on, rotation_script(tmp / "alias.lua", ft["alias_items"])),
        }
        c = Client(on.url)
        c.post(gb.CHAT_PATH, exact, {})  # stored (start()'s check_chat stored it already)
        took, status, h, _ = c.post(gb.CHAT_PATH, exact, {})
        assert status == 200 and h.get("x-cache") == "hit", h

        mixes: dict[str, list[dict]] = {k: [] for k in scripts}

        def measure(label: str, url: str) -> dict[str, Any]:
            gw, script = scripts[label]
            which = "on" if gw is on else "off"

            def sample() -> None:
                vals = [gb.proc_status(p).get("VmRSS", 0) for p in gw.worker_pids()]
                if vals:
                    rss[which].append(max(vals))

            before = c.get("/admin/cache", ADMIN_KEY) if gw is on else None
            res = gb.run_wrk(url, script, args.connections, duration, load_cpu, sample)
            if before is not None:
                mixes[label].append(cache_mix(before, c.get("/admin/cache", ADMIN_KEY)))
            return res

        def warm(label: str, url: str) -> None:
            gb.run_wrk(url, scripts[label][1], args.connections, 1, load_cpu)

        targets = [(label, gw.url) for label, (gw, _) in scripts.items()]
        runs = gb.interleaved("cache", targets, measure, warm, rounds)
        c.close()
        hwm = {"on": max(gb.proc_status(p).get("VmHWM", 0) for p in on.worker_pids()),
               "off": max(gb.proc_status(p).get("VmHWM", 0) for p in off.worker_pids())}
    finally:
        for s in (on, off):
            if s is not None:
                s.stop()
        sim.stop()
        if prefix:
            import redis

            r = redis.Redis.from_url(args.redis_url)
            keys = list(r.scan_iter(match=prefix + "*", count=1000))
            if keys:
                r.unlink(*keys)
            r.close()
    results["elapsed_s"] = round(time.monotonic() - t0, 1)

    # --- report ----------------------------------------------------------------------------------
    base = {k: statistics.median(r["rps"] for r in runs[k]) for k in runs}
    lines = [
        f"Cache through the gateway, {time.strftime('%Y-%m-%d %H:%M')}: gateway on core {gw_cpu} (1 Granian worker "
        f"each), wrk -t1 -c{args.connections} + simulator (upstream {args.upstream_ms:g} ms) on core {load_cpu}; "
        f"{duration} s runs, {rounds} interleaved round(s); cache on = defaults (minilm, 0.85"
        f"{', Redis mirror' if args.redis_url else ', no Redis'}).",
        "",
        "| target | req/s median (per round) | vs cache off | vs no-store | P50 / P99 ms | x-cache (admin stats) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {
        "cache off": "uncached: GATEWAY_CACHE=off",
        "no-store": "uncached: cache on, Cache-Control: no-store",
        "exact hit": "exact hit (one stored prompt)",
        "alias rotation": f"paraphrases, rotating ({len(ft['alias_items'])}; exact hits on their aliases)",
    }
    for k, rs in runs.items():
        per = " / ".join(f"{r['rps']:,.0f}" for r in rs)
        p50 = statistics.median(r["p50_ms"] for r in rs)
        p99 = statistics.median(r["p99_ms"] for r in rs)
        mix = "n/a (cache off)" if k == "cache off" else fmt_mix(
            {m: sum(x[m] for x in mixes[k]) for m in ("hits", "semantic_hits", "misses", "bypasses")})
        lines.append(
            f"| {names[k]} | {base[k]:,.0f} ({per}) | {base[k] / base['cache off']:.2f}x | {base[k] / base['no-store']:.2f}x "
            f"| {p50:.2f} / {p99:.2f} | {mix} | {sum(r['errors'] for r in rs)} |"
        )
    lat = ft["latency_s"]
    lines += [
        "",
        f"First-time lookups, one sequential client on one keep-alive connection ({len(pairs)} labelled paraphrase "
        f"pairs x {namespaces} namespace(s)); paraphrase outcomes: "
        + ", ".join(f"{k} {v}" for k, v in sorted(ft["paraphrase_x_cache"].items())) + ":",
        "",
        "| request | n | P50 ms | P90 ms | P99 ms |",
        "|---|---|---|---|---|",
    ]
    lat_names = {
        "cache_off": "uncached, GATEWAY_CACHE=off gateway",
        "no_store": "uncached, cache on + no-store",
        "miss_store": "miss (cache on; looked up, then stored)",
        "exact_hit": "exact hit",
        "semantic_hit": "first-time semantic hit (guard + MiniLM)",
        "paraphrase_miss": "paraphrase not accepted (miss, upstream)",
        "exact_after_verify": "exact hit right after a first-time semantic hit",
    }
    for k, name in lat_names.items():
        xs = lat[k]
        lines.append(f"| {name} | {len(xs)} | {pct(xs, 50):.2f} | {pct(xs, 90):.2f} | {pct(xs, 99):.2f} |")
    mb = lambda kb: f"{kb / 1024:.1f} MB"  # noqa: E731
    lines += [
        "",
        "| worker RSS | idle, after the first-time pass | max sampled under wrk load | VmHWM at end |",
        "|---|---|---|---|",
        f"| cache on (minilm loaded, {ft['entries']} entries) | {mb(rss_idle['on'])} | {mb(max(rss['on'], default=0))} | {mb(hwm['on'])} |",
        f"| cache off | {mb(rss_idle['off'])} | {mb(max(rss['off'], default=0))} | {mb(hwm['off'])} |",
        "",
        f"Elapsed {results['elapsed_s']} s.",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    results.update(runs=runs, mixes=mixes, first_time={k: v for k, v in ft.items() if k != "alias_items"},
                   rss_kb={"idle": rss_idle, "load_max": {k: max(v, default=0) for k, v in rss.items()}, "hwm": hwm},
                   table=table)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
