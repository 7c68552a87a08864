#!/usr/bin/env python
"""The response cache through the real gateway: cache hits, misses and the uncached path, in one run.

    python benchmarks/cache_gateway_bench.py [--duration 8] [--rounds 2] [--connections 50] [--quick] [--json out.json]

All on 127.0.0.1, bounded in time, reusing benchmarks/gateway_bench.py's processes and wrk runner:

1. the simulator (instant upstream by default, ``--upstream-ms``) pinned to the load core; three
   ``gateway serve`` (one Granian worker each, pinned to the gateway core with taskset): one with the
   cache on (defaults: MiniLM verifier, threshold 0.85, no Redis unless ``--redis-url``), one with
   the exact tier only (``GATEWAY_CONFIG`` = a TOML file with ``[cache] semantic = false``), one with
   ``GATEWAY_CACHE=off``;
2. a small Python client (sequential, one keep-alive connection, on the load core) stores prompt
   ``a`` of every paraphrase pair labelled "hit" in tests/data/cache_pairs*.jsonl, in
   ``--namespaces`` namespaces (each namespace is a fresh scope, so each pair gives one more
   first-time sample), then times, interleaved per pair, ``a`` through the cache-off gateway, with
   ``Cache-Control: no-store``, and as an exact hit; then the first-time lookup of each paraphrase
   ``b`` (a semantic hit when the guard + MiniLM accept it) followed by one more exact hit (see
   ``first_time_pass``); the misses that stored the ``a`` prompts are timed too;
3. for the first-time semantic row (below), 8 client threads then store the ``a`` prompt of every
   pair whose ``b`` was a semantic hit in step 2 into many fresh namespaces: enough that the
   (namespace, ``b``) items outlast every run of that row (the step-2 semantic-hit P50 gives the
   rate, times the wrk time, x2), at most ~50 s of storing;
4. wrk (-t1, load core) interleaved over rounds, one warm-up second per row first:
   * cache off, cache on + no-store, exact hit (one stored prompt);
   * a rotation over the paraphrases that were semantic hits in step 2. A semantic hit stores the
     paraphrase as an exact alias, so in that rotation every request after the first of each
     paraphrase is an *exact* hit on the alias: the row says so;
   * the miss path, "unique prompts": every request a prompt never sent before ("Tell me fact
     number <n> about the benchmark run <row>-<round>-<random id>", the script written per run, so
     no two runs or rounds share a prompt) against the cache-on gateway, the exact-only gateway and
     the cache-off gateway. On the cache-on gateway these prompts all share one semantic scope (the
     default namespace) and differ only in numbers and the run id, so every miss finds hashed-vector
     candidates and the lexical guard runs (and rejects them: "guard rejects" in the x-cache
     column) before the miss goes upstream and is stored; the scope's index grows by every miss
     (to tens of thousands of entries, HNSW past 128) over the rounds. Prompts with nothing alike
     stored would skip the guard: this is the heavier miss. Each miss is also a store (writer task);
   * first-time semantic hits: a rotation over the (namespace, ``b``) items of step 3, each sent
     once, a run resuming where the previous one stopped, so each request is an exact miss, a
     hashed-vector search, the guard and a MiniLM verification, then a semantic hit. Each namespace
     is its own semantic scope holding only the ~110 ``a`` prompts of step 3, so the index searched
     is tiny (the numpy matrix, not HNSW): this is the verifier's cost, not a large index's. It runs
     at ``--semantic-connections`` (default: the cache's ``max_pending_verifications``, 8) because a
     lookup that finds more verifications than that waiting answers miss ("shed") instead of
     queueing: at -c50 most requests would be shed misses. If the items ran out, the rotation
     wrapped around and its second pass is exact alias hits: the x-cache mix shows it and the row
     label says so;
5. the x-cache mix of every wrk run on the cache-on and exact-only gateways comes from
   ``GET /admin/cache`` before/after (hits, semantic hits, misses, bypasses; and shed verifications,
   guard rejects, dropped stores, evictions when there were any), and each worker's VmRSS is sampled
   from /proc: idle after step 2, under load, after the runs, and VmHWM.

Run time on the 2-core host: ~160 s by default, ~45 s with ``--quick``. Needs wrk and taskset, and two cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import threading
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
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


def worker_max(g: gb.GatewayProcess, field: str) -> int:
    """The largest /proc/<pid>/status ``field`` (kB) among a gateway's workers (0 if none); the shared
    verifier process is not a worker (benchmarks/memory_bench.py measures it)."""
    return max((gb.proc_status(p).get(field, 0) for p in g.worker_pids() if not _is_verifier(p)), default=0)


def _is_verifier(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"gateway.cache.verifier" in f.read()
    except OSError:
        return False


def unique_script(path: Path, run_id: str) -> Path:
    """A prompt never sent before on every request: ``run_id`` is new for every run (row, round and a
    random part), so runs and rounds do not share prompts (wrk seeds Lua's generator identically)."""
    assert run_id.replace("-", "").isalnum()
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {gb.API_KEY}"\n'
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        f'  return wrk.format("POST", "{gb.CHAT_PATH}", nil,\n'
        f"    '{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Tell me fact number ' .. n ..\n"
        f"    ' about the benchmark run {run_id}\"}}]}}')\n"
        "end\n" + _DONE
    )
    return path


def file_rotation_script(path: Path, data: Path, items: list[tuple[str, bytes]]) -> Path:
    """(namespace, body) items, one a line in ``data``, read in init() and sent in turn from the first."""
    with data.open("wb") as f:
        for ns, body in items:
            assert b"\n" not in body and b"\t" not in body and "\t" not in ns
            f.write(ns.encode() + b"\t" + body + b"\n")
    path.write_text(
        "local reqs = {}\n"
        "local n = 0\n"
        "init = function(args)\n"
        f"  for line in io.lines({lua_str(str(data))}) do\n"
        '    local tab = line:find("\\t", 1, true)\n'
        f'    local h = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {gb.API_KEY}",\n'
        '                ["x-gateway-cache-namespace"] = line:sub(1, tab - 1)}\n'
        f'    reqs[#reqs + 1] = wrk.format("POST", "{gb.CHAT_PATH}", h, line:sub(tab + 1))\n'
        "  end\n"
        "end\n"
        "request = function()\n"
        "  n = n + 1\n"
        "  return reqs[((n - 1) % #reqs) + 1]\n"
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


MIX = ("hits", "semantic_hits", "misses", "bypasses")
EXTRA = ("verify_shed", "guard_rejects", "store_dropped", "evictions", "verifications")


def cache_mix(before: dict, after: dict) -> dict[str, int]:
    m = {k: after[k] - before[k] for k in MIX + ("verify_shed", "store_dropped", "evictions", "verifications")}
    m["guard_rejects"] = sum(after["guard_rejects"].values()) - sum(before["guard_rejects"].values())
    return m


def sum_mixes(ms: list[dict[str, int]]) -> dict[str, int]:
    return {k: sum(m.get(k, 0) for m in ms) for k in MIX + EXTRA}


def fmt_mix(m: dict[str, int]) -> str:
    total = sum(m[k] for k in MIX) or 1
    parts = [f"{name} {m[k] / total:.1%}" for k, name in
             (("hits", "hit"), ("semantic_hits", "semantic"), ("misses", "miss"), ("bypasses", "bypass")) if m[k]]
    extra = [f"{name} {m[k]:,}" for k, name in
             (("verify_shed", "shed verifications"), ("guard_rejects", "guard rejects"),
              ("store_dropped", "dropped stores"), ("evictions", "evictions")) if m.get(k)]
    return (", ".join(parts) or "none") + (f" (of {total:,}; " + ", ".join(extra) + ")" if extra else "")


def store_namespaces(url: str, prompts: list[str], want: int, budget_s: float, threads: int = 8) -> tuple[list[str], float, int]:
    """Store every prompt in up to ``want`` fresh namespaces (``threads`` keep-alive connections),
    namespace after namespace, until ``budget_s`` is spent; returns the namespaces stored in full."""
    local = threading.local()

    clients: list[Client] = []

    def one(job: tuple[str, str]) -> bool:
        if not hasattr(local, "c"):
            local.c = Client(url)
            clients.append(local.c)
        ns, text = job
        _, status, h, _ = local.c.post(gb.CHAT_PATH, chat_body(text), {"x-gateway-cache-namespace": ns})
        return status == 200 and h.get("x-cache") == "miss"

    done: list[str] = []
    errors = 0
    t0 = time.monotonic()
    run = uuid.uuid4().hex[:6]
    with ThreadPoolExecutor(threads) as pool:
        for i in range(want):
            if time.monotonic() - t0 > budget_s:
                break
            ns = f"sem{i}-{run}"
            ok = list(pool.map(one, [(ns, a) for a in prompts]))
            errors += ok.count(False)
            if all(ok):
                done.append(ns)
    for c in clients:
        c.close()
    return done, time.monotonic() - t0, errors


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
    semantic_pairs: dict[tuple[str, str], None] = {}  # in order, each pair once
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
                    semantic_pairs.setdefault((a, b), None)
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
            "semantic_pairs": list(semantic_pairs),
            "verifications": stats["verifications"], "entries": stats["entries"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--semantic-connections", type=int, default=None,
                    help="wrk connections of the first-time semantic row (default: max_pending_verifications, 8)")
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

    from gateway.cache import CacheConfig
    from gateway.simulator import SimulatorProcess

    max_pending = CacheConfig().max_pending_verifications
    sem_conns = args.semantic_connections or min(args.connections, max_pending)
    tmp = Path(tempfile.mkdtemp(prefix="cache-gw-bench-"))
    on_env = {"GATEWAY_CACHE": "on"}
    prefix = None
    if args.redis_url:
        prefix = f"gwbench:{uuid.uuid4().hex[:8]}:"
        (tmp / "cache.toml").write_text(f'[cache]\nredis_prefix = "{prefix}"\n')
        on_env |= {"REDIS_URL": args.redis_url, "GATEWAY_CONFIG": str(tmp / "cache.toml")}
    (tmp / "exact.toml").write_text("[cache]\nsemantic = false\n")
    exact_env = {"GATEWAY_CACHE": "on", "GATEWAY_CONFIG": str(tmp / "exact.toml")}
    pairs = load_pairs()
    results: dict[str, Any] = {"config": {"duration_s": duration, "rounds": rounds, "connections": args.connections,
                                          "semantic_connections": sem_conns, "namespaces": namespaces,
                                          "pairs": len(pairs), "upstream_ms": args.upstream_ms,
                                          "redis": bool(args.redis_url), "gateway_cpu": gw_cpu, "load_cpu": load_cpu}}
    t0 = time.monotonic()
    sim = SimulatorProcess({"*": {"latency_ms": args.upstream_ms, "response_tokens": 30}}, cpu=load_cpu)
    on = off = exact_gw = None
    rss: dict[str, list[int]] = {"on": [], "exact": [], "off": []}
    sem: dict[str, Any] = {}
    try:
        sim.start()
        on = CacheGateway("cache on", sim.base_url, gw_cpu, on_env).start()
        exact_gw = CacheGateway("exact only", sim.base_url, gw_cpu, exact_env).start()
        off = CacheGateway("cache off", sim.base_url, gw_cpu, {"GATEWAY_CACHE": "off"}).start()
        gws = {"on": on, "exact": exact_gw, "off": off}
        gb.log(f"cache on: {on.url} workers {on.worker_pids()}; exact only: {exact_gw.url} workers "
               f"{exact_gw.worker_pids()}; cache off: {off.url} workers {off.worker_pids()}")
        c_exact = Client(exact_gw.url)
        st = c_exact.get("/admin/cache", ADMIN_KEY)
        if not st.get("enabled") or st.get("semantic") is not False:
            raise RuntimeError(f"exact-only gateway: cache not on with semantic = false: {st}")
        gb.log(f"first-time pass: {len(pairs)} paraphrase pairs x {namespaces} namespace(s)")
        ft = first_time_pass(on, off, pairs, namespaces)
        gb.log(f"paraphrases: {ft['paraphrase_x_cache']}, verifications {ft['verifications']}, errors {ft['errors']}")
        # Idle, after the first-time pass: the model is loaded and the entries are in.
        rss_idle = {k: worker_max(g, "VmRSS") for k, g in gws.items()}
        if not ft["alias_items"]:
            raise RuntimeError("no paraphrase was a semantic hit: nothing to rotate through")

        # --- first-time semantic row: the `a` of every accepted pair, in many fresh namespaces
        sem_pairs = ft["semantic_pairs"]
        lat = ft["latency_s"]
        sem_p50 = statistics.median(lat["semantic_hit"])
        miss_p50 = statistics.median(lat["miss_store"])
        # One verification at a time (one executor thread); above max_pending the rest are shed misses.
        rate_est = 1.0 / (sem_p50 if sem_conns <= max_pending else miss_p50)
        want_items = math.ceil(rate_est * (duration * rounds + 1) * 2)  # + the 1 s warm-up, x2 margin
        want_ns = max(1, math.ceil(want_items / len(sem_pairs)))
        gb.log(f"first-time semantic row: P50 {sem_p50 * 1e3:.1f} ms -> ~{rate_est:,.0f}/s, want {want_items:,} items: "
               f"{len(sem_pairs)} `a` prompts x {want_ns} namespaces")
        c = Client(on.url)
        before = c.get("/admin/cache", ADMIN_KEY)
        sem_ns, store_s, store_errors = store_namespaces(on.url, [a for a, _ in sem_pairs], want_ns, budget_s=50.0)
        stored = len(sem_ns) * len(sem_pairs)
        for _ in range(50):  # the writer task indexes them shortly after
            now = c.get("/admin/cache", ADMIN_KEY)
            if now["stores"] - before["stores"] >= stored:
                break
            time.sleep(0.1)
        sem_items = [(ns, chat_body(b)) for ns in sem_ns for _, b in sem_pairs]
        sem = {"namespaces": len(sem_ns), "wanted_namespaces": want_ns, "prompts_per_namespace": len(sem_pairs),
               "items": len(sem_items), "store_s": round(store_s, 1), "store_errors": store_errors,
               "stores_done": now["stores"] - before["stores"], "rate_est": round(rate_est), "connections": sem_conns,
               "cursor": 0, "wrapped": False}
        gb.log(f"stored {stored:,} in {store_s:.1f} s ({len(sem_ns)} namespaces, errors {store_errors}); "
               f"writer stores {sem['stores_done']:,}")
        if not sem_items:
            raise RuntimeError("no namespace stored for the first-time semantic row")

        exact = chat_body("Say hello to the benchmark in a few words")
        static = {
            "off.lua": static_script(tmp / "off.lua", exact, {}),
            "nostore.lua": static_script(tmp / "nostore.lua", exact, {"Cache-Control": "no-store"}),
            "exact.lua": static_script(tmp / "exact.lua", exact, {}),
            "alias.lua": rotation_script(tmp / "alias.lua", ft["alias_items"]),
        }
        runs_of: dict[str, int] = {}

        def unique(slug: str):
            def make(tag: str) -> Path:
                # Letters only: a hex id such as "7ed28a454c" made about half the runs' prompts neither
                # short nor long for the semantic tier (no static vectors: a cheaper miss), so the row
                # measured one path or the other by chance.
                run_id = f"{slug}-{tag}-" + "".join(chr(97 + int(h, 16)) for h in uuid.uuid4().hex[:10])
                return unique_script(tmp / f"unique-{slug}.lua", run_id)
            return make

        def semantic_rotation(tag: str) -> Path:
            rest = sem_items[sem["cursor"]:]
            if not rest:
                sem["wrapped"] = True
                rest = sem_items  # all used: these are exact alias hits now (the mix shows it)
            return file_rotation_script(tmp / "semantic.lua", tmp / "semantic.tsv", rest)

        # label -> (gateway key, connections, script maker)
        scripts: dict[str, tuple[str, int, Any]] = {
            "cache off": ("off", args.connections, lambda tag: static["off.lua"]),
            "no-store": ("on", args.connections, lambda tag: static["nostore.lua"]),
            "exact hit": ("on", args.connections, lambda tag: static["exact.lua"]),
            "alias rotation": ("on", args.connections, lambda tag: static["alias.lua"]),
            "unique on": ("on", args.connections, unique("on")),
            "unique exact": ("exact", args.connections, unique("exact")),
            "unique off": ("off", args.connections, unique("off")),
            "semantic 1st": ("on", sem_conns, semantic_rotation),
        }
        c.post(gb.CHAT_PATH, exact, {})  # stored (start()'s check_chat stored it already)
        took, status, h, _ = c.post(gb.CHAT_PATH, exact, {})
        assert status == 200 and h.get("x-cache") == "hit", h
        admin = {"on": c, "exact": c_exact}

        mixes: dict[str, list[dict]] = {k: [] for k in scripts}

        def run(label: str, url: str, seconds: int, tag: str, record: bool) -> dict[str, Any]:
            which, conns, make = scripts[label]
            script = make(tag)

            def sample() -> None:
                if gws[which].worker_pids():
                    rss[which].append(worker_max(gws[which], "VmRSS"))

            ac = admin.get(which)
            before = ac.get("/admin/cache", ADMIN_KEY) if ac else None
            res = gb.run_wrk(url, script, conns, seconds, load_cpu, sample if record else None)
            if label == "semantic 1st":
                sem["cursor"] += res["requests"] + conns  # sent but unanswered at the end count as used
            if ac is not None:
                time.sleep(0.2)  # the requests still in flight when wrk stopped
                mix = cache_mix(before, ac.get("/admin/cache", ADMIN_KEY))
                if record:
                    mixes[label].append(mix)
                else:
                    gb.log(f"warm-up {label}: {fmt_mix(mix)}")
            return res

        def measure(label: str, url: str) -> dict[str, Any]:
            runs_of[label] = runs_of.get(label, 0) + 1
            return run(label, url, duration, f"r{runs_of[label]}", True)

        def warm(label: str, url: str) -> None:
            run(label, url, 1, "warm", False)

        targets = [(label, gws[which].url) for label, (which, _, _) in scripts.items()]
        runs = gb.interleaved("cache", targets, measure, warm, rounds)
        end_stats = c.get("/admin/cache", ADMIN_KEY)
        c.close()
        c_exact.close()
        rss_end = {k: worker_max(g, "VmRSS") for k, g in gws.items()}
        hwm = {k: worker_max(g, "VmHWM") for k, g in gws.items()}
    finally:
        for s in (on, exact_gw, off):
            if s is not None:
                s.terminate()
        for s in (on, exact_gw, off):
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
        f"{', Redis mirror' if args.redis_url else ', no Redis'}); exact only = [cache] semantic = false.",
        "",
        "| target | req/s median (per round) | vs cache off | vs no-store | P50 / P99 ms | x-cache (admin stats) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    sem_mix = sum_mixes(mixes["semantic 1st"])
    sem_total = sum(sem_mix[k] for k in MIX) or 1
    sem_note = f"{sem['items']:,} (namespace, paraphrase) items = {sem['namespaces']} namespaces x {sem['prompts_per_namespace']}"
    if sem["wrapped"] or sem_mix["hits"]:
        sem_note += f"; ROTATION WRAPPED: {sem_mix['hits'] / sem_total:.0%} were exact alias hits"
    names = {
        "cache off": "uncached: GATEWAY_CACHE=off",
        "no-store": "uncached: cache on, Cache-Control: no-store",
        "exact hit": "exact hit (one stored prompt)",
        "alias rotation": f"paraphrases, rotating ({len(ft['alias_items'])}; exact hits on their aliases)",
        "unique on": "miss path, unique prompts: cache on (semantic tier: guard runs, then miss + store)",
        "unique exact": "miss path, unique prompts: exact tier only (miss + store)",
        "unique off": "unique prompts: GATEWAY_CACHE=off",
        "semantic 1st": f"first-time semantic hits, -c{sem_conns} ({sem_note})",
    }
    for k, rs in runs.items():
        per = " / ".join(f"{r['rps']:,.0f}" for r in rs)
        p50 = statistics.median(r["p50_ms"] for r in rs)
        p99 = statistics.median(r["p99_ms"] for r in rs)
        mix = "n/a (cache off)" if scripts[k][0] == "off" else fmt_mix(sum_mixes(mixes[k]))
        lines.append(
            f"| {names[k]} | {base[k]:,.0f} ({per}) | {base[k] / base['cache off']:.2f}x | {base[k] / base['no-store']:.2f}x "
            f"| {p50:.2f} / {p99:.2f} | {mix} | {sum(r['errors'] for r in rs)} |"
        )
    lines += [
        "",
        f"First-time semantic row: {sem['stores_done']:,} `a` prompts stored beforehand in {sem['store_s']} s "
        f"(8 threads; sized for ~{sem['rate_est']}/s x {duration * rounds + 1} s x 2 = {sem['wanted_namespaces']} "
        f"namespaces wanted, {sem['namespaces']} stored, store errors {sem['store_errors']}); "
        f"{min(sem['cursor'], sem['items']):,} items used. Each namespace is its own semantic scope of "
        f"{sem['prompts_per_namespace']} entries: a tiny index per lookup, the cost is the guard + MiniLM. "
        f"Cache-on worker at the end: {end_stats['entries']:,} entries, index {end_stats['index']}.",
    ]
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
        "| worker RSS | idle, after the first-time pass | max sampled under wrk load | after the runs | VmHWM at end |",
        "|---|---|---|---|---|",
    ]
    for k, name in (("on", f"cache on (minilm loaded, {end_stats['entries']:,} entries at end)"),
                    ("exact", "exact only (semantic = false)"), ("off", "cache off")):
        lines.append(f"| {name} | {mb(rss_idle[k])} | {mb(max(rss[k], default=0))} | {mb(rss_end[k])} | {mb(hwm[k])} |")
    lines += ["", f"Elapsed {results['elapsed_s']} s."]
    table = "\n".join(lines)
    print("\n" + table)
    results.update(runs=runs, mixes=mixes, first_time={k: v for k, v in ft.items() if k != "alias_items"},
                   semantic_row=sem, end_stats=end_stats,
                   rss_kb={"idle": rss_idle, "load_max": {k: max(v, default=0) for k, v in rss.items()},
                           "end": rss_end, "hwm": hwm},
                   table=table)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
