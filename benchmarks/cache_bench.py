"""Cache figures that need no HTTP gateway (issue 4). Prints what it measures.

    python benchmarks/cache_bench.py pairs                 # labelled pairs (held-out split): paraphrase hits / false hits vs threshold
    python benchmarks/cache_bench.py hitrate --n 20000     # spec-mix traffic: hit rate (and false hits) vs threshold
    python benchmarks/cache_bench.py latency --fill 100000 # lookup latency of misses at 100k entries, embedding included
    python benchmarks/cache_bench.py recall --fill 100000  # the labelled paraphrases still found behind 100k entries
    python benchmarks/cache_bench.py ops                   # lookups/s of exact and semantic hits (cache only)
    python benchmarks/cache_bench.py examples              # issue 15's quoted pairs (in no labelled set)
    python benchmarks/cache_bench.py memory --fill 0       # RSS with the verifier and static vectors loaded

Everything runs in one process, in memory (no Redis: the mirror is off the
request path). Use --embedder hash|minilm to compare verifiers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from gateway.cache import Cache, CacheConfig  # noqa: E402
from gateway.request import ChatRequest  # noqa: E402

from cache_prompts import generate, unique_prompts  # noqa: E402
from tests.test_cache_helpers import FRESH2_PAIRS, FRESH_PAIRS, PAIRS, labelled_pairs  # noqa: E402

DATA = ROOT / "tests" / "data"


def req(messages: list[dict], model: str = "gpt-4o-mini", headers: dict | None = None) -> ChatRequest:
    return ChatRequest(body={"model": model, "messages": messages}, model=model, stream=False, include_usage=False,
                       request_id="bench", key=None, headers=headers or {}, started=0.0, deadline=0.0)


def answer(tag: str) -> dict:
    return {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": tag}, "finish_reason": "stop"}]}


def cache_config(args, **kw) -> CacheConfig:
    base = {"embedder": args.embedder, "max_entries": max(getattr(args, "fill", 0) + 10_000, 100_000)}
    if getattr(args, "candidates", None):
        base["candidates"] = args.candidates
    if getattr(args, "margin", None) is not None:
        base["narrow_margin"] = args.margin
    return CacheConfig.from_mapping({**base, **kw})


def pct(xs, q) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


# ----------------------------------------------------------------------------- pairs

async def run_labelled(cache: Cache, ps: list[dict], cold: bool = False) -> list[tuple[dict, str, float | None, float]]:
    """Each pair in a namespace of its own: store ``a``, look up ``b``; (pair, status, similarity, seconds).

    Each lookup of ``b`` is a first-time one: the query is embedded by the verifier then. ``a`` was
    embedded in the background after it was stored (as it is in traffic where the paraphrase comes
    later than a few ms), unless ``cold``: then it is embedded during the lookup too.
    """
    for i, p in enumerate(ps):
        r = req([{"role": "user", "content": p["a"]}], headers={"x-gateway-cache-namespace": f"p{i}"})
        await cache.lookup(r)
        cache.store(r, answer(str(i)))
    await cache.drain()
    if not cold:
        await cache.semantic.settled()  # the verifier embeds stored short prompts when idle (~3-10 ms each)
    out = []
    for i, p in enumerate(ps):
        r = req([{"role": "user", "content": p["b"]}], headers={"x-gateway-cache-namespace": f"p{i}"})
        c0, t0 = time.process_time(), time.perf_counter()
        res = await cache.lookup(r)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.append((p, res.status, res.similarity, dt))
        CPU_TIMES.append((res.status, cpu))
    return out


CPU_TIMES: list[tuple[str, float]] = []  # (status, CPU seconds of the whole process during the lookup)


async def bench_pairs(args) -> None:
    if args.legacy:
        files = ["cache_pairs.jsonl", "cache_pairs_holdout.jsonl"]
        sets = {f: [json.loads(x) for x in (DATA / f).read_text().splitlines() if x.strip()] for f in files}
    else:
        files = {"old": PAIRS, "fresh": FRESH_PAIRS, "fresh2": FRESH2_PAIRS}
        sets = {f"{d}:{s}": labelled_pairs(s, files[d]) for d in args.data for s in args.splits}
    print(f"labelled pairs, embedder={args.embedder} (the whole semantic tier: candidates, vetoes, verifier)")
    print(f"{'threshold':>9} | " + " | ".join(f"{f:<40}" for f in sets))
    for t in args.thresholds:
        row = []
        for name, ps in sets.items():
            cache = Cache(cache_config(args, semantic_threshold=t), None)
            if args.guard_only:  # the baseline: every prompt through the guard, candidates by content key
                cache.semantic.static = None
            await cache.start()
            await asyncio.sleep(0.5)  # model warm
            CPU_TIMES.clear()
            results = await run_labelled(cache, ps, cold=args.cold)
            await cache.close()
            hit = sum(st != "miss" for p, st, _, _ in results if p["label"] == "hit")
            false = sum(st != "miss" for p, st, _, _ in results if p["label"] == "miss")
            lat = [dt for _, st, _, dt in results if st == "semantic-hit"]
            if args.latency:
                print(f"    {name} {t:.2f}: first-time semantic hits n={len(lat)} p50 {pct(lat, 50) * 1e3:.2f} ms "
                      f"p99 {pct(lat, 99) * 1e3:.2f} ms; misses p50 "
                      f"{pct([dt for _, st, _, dt in results if st == 'miss'], 50) * 1e3:.2f} ms; CPU time of a "
                      f"semantic hit p50 {pct([c for st, c in CPU_TIMES if st == 'semantic-hit'], 50) * 1e3:.2f} ms "
                      f"p99 {pct([c for st, c in CPU_TIMES if st == 'semantic-hit'], 99) * 1e3:.2f} ms; "
                      f"load {os.getloadavg()[0]:.1f}")
            nh = sum(p["label"] == "hit" for p in ps)
            nm = len(ps) - nh
            share = false / (hit + false) if hit + false else 0.0
            row.append(f"paraphrases {hit:>3}/{nh} ({hit / nh:4.0%})  false {false:>2}/{nm} ({share:4.1%} of hits)")
            if args.show and name == args.show:
                for p, st, sim, _ in results:
                    if (st != "miss") != (p["label"] == "hit"):
                        print(f"    {name} {t:.2f} {p['label']:>4} {p['kind']:>5} {st:>12} {sim}  {p['a']!r} / {p['b']!r}")
        print(f"{t:>9.2f} | " + " | ".join(f"{x:<40}" for x in row))


# ----------------------------------------------------------------------------- hit rate

async def bench_hitrate(args) -> None:
    prompts = generate(args.n, seed=args.seed)
    print(f"spec-mix traffic: {args.n} requests (seed {args.seed}), embedder={args.embedder}; "
          "each miss is answered and stored")
    print(f"{'threshold':>9} {'hit rate':>8} {'exact':>7} {'semantic':>8} {'false sem.':>10} {'of sem.':>7} "
          f"{'sem. opportunities taken':>24} {'lookup p50/p99 ms':>18}")
    for t in [None] + list(args.thresholds):
        cfg = cache_config(args, semantic_threshold=t or 0.85, semantic=t is not None)
        cache = Cache(cfg, None)
        await cache.start()
        exact = sem = false = opportunities = taken = 0
        seen_exact: set = set()
        seen_intent: set = set()
        lat = []
        for p in prompts:
            r = req(p["messages"])
            t0 = time.perf_counter()
            res = await cache.lookup(r)
            lat.append(time.perf_counter() - t0)
            key = (p["intent"], p["phrasing"])
            paraphrase_opportunity = key not in seen_exact and p["intent"] in seen_intent
            opportunities += paraphrase_opportunity
            if res.status == "hit":
                exact += 1
            elif res.status == "semantic-hit":
                sem += 1
                if res.response["choices"][0]["message"]["content"] != str(p["intent"]):
                    false += 1
                else:
                    taken += paraphrase_opportunity
            else:
                cache.store(r, answer(str(p["intent"])))
                await cache.drain()
            seen_exact.add(key)
            seen_intent.add(p["intent"])
        await cache.close()
        n = len(prompts)
        label = "exact" if t is None else f"{t:.2f}"
        share = false / sem if sem else 0.0
        print(f"{label:>9} {(exact + sem) / n:>8.1%} {exact / n:>7.1%} {sem / n:>8.1%} {false:>10} {share:>7.1%} "
              f"{taken:>11}/{opportunities:<12} {pct(lat, 50) * 1e3:>8.3f}/{pct(lat, 99) * 1e3:.3f}")


# ----------------------------------------------------------------------------- latency

async def bench_latency(args) -> None:
    fill = unique_prompts(args.fill + args.queries, seed=args.seed)
    queries, fill = fill[args.fill:], fill[:args.fill]
    cache = Cache(cache_config(args), None)
    await cache.start()
    t0 = time.perf_counter()
    for i, p in enumerate(fill):
        r = req(p["messages"])
        cache.store(r, answer(str(i)))
        if i % 1000 == 999:
            await cache.drain()
    await cache.drain()
    print(f"filled {len(fill)} entries in {time.perf_counter() - t0:.1f}s "
          f"({cache.stats()['index']}); embedder={args.embedder}")
    await asyncio.sleep(0.5)  # model warm
    await cache.semantic.settled()  # the background embedding of stored prompts is done: not measured here
    print(f"load average before the lookups: {os.getloadavg()[0]:.2f}")
    # Warm the code paths.
    for p in queries[:50]:
        await cache.lookup(req(p["messages"]))
    queries = queries[50:]
    for label in ("first time: each query asked once", "again: the same lookups a second time"):
        print(f"-- {label}")
        CPU_TIMES.clear()
        _report_latency(await _time_lookups(cache, queries), len(fill))
        cpu = [c for st, c in CPU_TIMES if st == "miss"]
        # CPU time of the process: what a busy host (other runs on the same cores) does not inflate.
        print(f"miss CPU time of the process: p50 {pct(cpu, 50) * 1e3:.3f} ms  p99 {pct(cpu, 99) * 1e3:.3f} ms; "
              f"load {os.getloadavg()[0]:.2f}")
    await cache.close()


async def _time_lookups(cache, queries) -> list:
    rows = []
    for p in queries:
        before = dict(cache.stats()["guard_rejects"]), cache.stats()["verifications"]
        r = req(p["messages"])
        c0, t0 = time.process_time(), time.perf_counter()
        res = await cache.lookup(r)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        CPU_TIMES.append((res.status, cpu))
        s = cache.stats()
        verified = s["verifications"] > before[1]
        guarded = sum(s["guard_rejects"].values()) > sum(before[0].values())
        rows.append((p["bucket"], res.status, dt, verified, guarded))
        if res.status == "semantic-hit" and sum(r[1] == "semantic-hit" for r in rows) <= 10:
            print(f"   semantic hit on a new intent (similarity {res.similarity}): {p['messages'][0]['content'][:160]!r}"
                  f" -> {res.response['choices'][0]['message']['content']!r}")
    return rows


def _report_latency(rows: list, fill: int) -> None:
    miss = [r for r in rows if r[1] == "miss"]
    lat = [r[2] for r in miss]
    print(f"{len(rows)} fresh prompts at {fill} entries: {len(miss)} misses, "
          f"{sum(r[1] == 'semantic-hit' for r in rows)} semantic hits (false: they are all new intents)")
    print(f"miss latency, embedding included: p50 {pct(lat, 50) * 1e3:.3f} ms  p90 {pct(lat, 90) * 1e3:.3f} ms  "
          f"p99 {pct(lat, 99) * 1e3:.3f} ms  max {max(lat) * 1e3:.3f} ms")
    for b in ("short", "medium", "long"):
        x = [r[2] for r in miss if r[0] == b]
        print(f"  {b:>6}: n={len(x):>5}  p50 {pct(x, 50) * 1e3:.3f} ms  p99 {pct(x, 99) * 1e3:.3f} ms")
    paths = {"no candidate (content key, index)": [r[2] for r in miss if not r[3] and not r[4]],
             "candidates, all rejected by the guard": [r[2] for r in miss if not r[3] and r[4]],
             "verifier ran (model embedding)": [r[2] for r in miss if r[3]]}
    for name, x in paths.items():
        print(f"  {name:>38}: {len(x) / max(len(miss), 1):6.1%}  p50 {pct(x, 50) * 1e3:.3f} ms  "
              f"p99 {pct(x, 99) * 1e3:.3f} ms")


# ----------------------------------------------------------------------------- recall

async def bench_recall(args) -> None:
    """The labelled paraphrases, stored in one scope behind --fill entries of the spec mix: how many still hit."""
    pairs = []
    for name in ("cache_pairs.jsonl", "cache_pairs_holdout.jsonl"):
        for line in (DATA / name).read_text().splitlines():
            if line.strip() and json.loads(line)["label"] == "hit":
                pairs.append(json.loads(line))
    for fill in sorted({0, args.fill}):
        cache = Cache(cache_config(args), None)
        await cache.start()
        for i, p in enumerate(unique_prompts(fill, seed=5)):
            cache.store(req(p["messages"]), answer(f"filler {i}"))
            if i % 1000 == 999:
                await cache.drain()
        for i, p in enumerate(pairs):
            cache.store(req([{"role": "user", "content": p["a"]}]), answer(f"pair {i}"))
        await cache.drain()
        await asyncio.sleep(0.5)  # model warm
        own = other = 0
        for i, p in enumerate(pairs):
            r = await cache.lookup(req([{"role": "user", "content": p["b"]}]))
            if r.status == "semantic-hit":
                if r.response["choices"][0]["message"]["content"] == f"pair {i}":
                    own += 1
                else:
                    other += 1
                    print(f"   served another entry: {p['b']!r} -> {r.response['choices'][0]['message']['content']!r}")
        print(f"{fill:>7} filler entries: {own}/{len(pairs)} paraphrases hit their original, {other} another entry; "
              f"index {cache.stats()['index']}")
        await cache.close()


# ----------------------------------------------------------------------------- ops

async def bench_ops(args) -> None:
    """Lookups/s of one cache (one event loop, one core): exact hits, first-time semantic hits, misses."""
    cache = Cache(cache_config(args), None)
    await cache.start()
    n_sem = 300
    base = "How do I reverse a list in Python?"
    for i in range(n_sem):  # one entry per namespace, so each paraphrase lookup is a first-time semantic hit
        r = req([{"role": "user", "content": base}], headers={"x-gateway-cache-namespace": f"ns{i}"})
        cache.store(r, answer("reversed()"))
    for i, p in enumerate(unique_prompts(2000, seed=3)):
        cache.store(req(p["messages"]), answer(str(i)))
    await cache.drain()
    await asyncio.sleep(1.0)  # the model loads
    cases = [
        ("exact hit", args.ops, lambda i: req([{"role": "user", "content": base}], headers={"x-gateway-cache-namespace": "ns0"})),
        ("semantic hit (first)", n_sem, lambda i: req([{"role": "user", "content": "How can I reverse a list in Python?"}],
                                                      headers={"x-gateway-cache-namespace": f"ns{i}"})),
        ("semantic hit (again)", args.ops, lambda i: req([{"role": "user", "content": "How can I reverse a list in Python?"}],
                                                         headers={"x-gateway-cache-namespace": "ns0"})),
        ("miss, guard rejects", max(2000, args.ops // 20), lambda i: req([{"role": "user", "content": "How do I sort a list in Python?"}],
                                                                        headers={"x-gateway-cache-namespace": "ns1"})),
        ("miss, no candidate", args.ops, lambda i: req([{"role": "user", "content": "Zebra quantum marmalade"}])),
    ]
    for name, n, make in cases:
        reqs = [make(i) for i in range(n)]
        statuses = set()
        t0 = time.perf_counter()
        for r in reqs:
            statuses.add((await cache.lookup(r)).status)
        dt = time.perf_counter() - t0
        print(f"{name:>22}: {n / dt:>9.0f} lookups/s  ({dt / n * 1e6:8.1f} µs each; {'/'.join(sorted(statuses))})")
    await cache.close()


# ----------------------------------------------------------------------------- issue 15's examples

async def bench_examples(args) -> None:
    """Issue 15's quoted pairs: misses when it was filed, in no labelled set, never tuned on (kept with their test)."""
    from gateway.cache.text import analyse, veto
    from tests.test_cache_contrasts import ISSUE_EXAMPLES  # here: the other commands need no pytest import

    cache = Cache(cache_config(args), None)
    await cache.start()
    await asyncio.sleep(0.5)
    rows = [{"label": "hit", "kind": "issue", "a": a, "b": b} for a, b in ISSUE_EXAMPLES]
    results = await run_labelled(cache, rows, cold=args.cold)
    await cache.close()
    print(f"issue 15's examples, embedder={args.embedder}, threshold {cache.config.semantic_threshold}")
    for p, status, sim, dt in results:
        print(f"  {status:>12}  similarity {sim}  {dt * 1e3:6.2f} ms  veto {veto(analyse(p['a']), analyse(p['b']))}"
              f"  {p['a']!r} -> {p['b']!r}")
    print(f"{sum(st != 'miss' for _, st, _, _ in results)}/{len(results)} hit")


# ----------------------------------------------------------------------------- memory

def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bench_memory(args) -> None:
    """RSS of one process (a worker's cache): after import, with the verifier and static vectors loaded,
    after semantic lookups, and with --fill entries of the spec mix."""
    print(f"after import: {_rss_mb():.0f} MB")
    cache = Cache(cache_config(args), None)
    print(f"Cache() (static MiniLM vectors loaded): {_rss_mb():.0f} MB")
    await cache.start()
    while cache.semantic.verifier is not None and not cache.semantic.verifier.ready:
        await asyncio.sleep(0.1)
    print(f"verifier warm: {_rss_mb():.0f} MB")
    for i in range(200):
        r = req([{"role": "user", "content": f"How do I sort a list of {i} numbers in Python?"}],
                headers={"x-gateway-cache-namespace": f"m{i}"})
        await cache.lookup(r)
        cache.store(r, answer("sorted()"))
    await cache.drain()
    for i in range(200):
        await cache.lookup(req([{"role": "user", "content": f"How can I sort a list of {i} numbers in Python?"}],
                               headers={"x-gateway-cache-namespace": f"m{i}"}))
    await cache.semantic.settled()
    print(f"after 200 stores and 200 semantic lookups: {_rss_mb():.0f} MB "
          f"({cache.stats()['semantic_hits']} semantic hits)")
    if args.fill:
        for i, p in enumerate(unique_prompts(args.fill, seed=args.seed)):
            cache.store(req(p["messages"]), answer(str(i)))
            if i % 1000 == 999:
                await cache.drain()
        await cache.drain()
        await cache.semantic.settled()
        print(f"with {args.fill} more entries of the spec mix: {_rss_mb():.0f} MB ({cache.stats()['index']})")
    await cache.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["pairs", "hitrate", "latency", "recall", "ops", "examples", "memory"])
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "hash"])
    ap.add_argument("--thresholds", type=float, nargs="*", default=[0.75, 0.8, 0.85, 0.9, 0.95])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--fill", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2_000)
    ap.add_argument("--ops", type=int, default=50_000)
    ap.add_argument("--splits", nargs="*", default=["heldout"], choices=["tune", "heldout", "all"],
                    help="pairs: which split of each labelled set (tune on tune, report heldout)")
    ap.add_argument("--data", nargs="*", default=["fresh2"], choices=["fresh2", "fresh", "old"],
                    help="pairs: tests/data/paraphrase_pairs_fresh2.jsonl (written last, heldout untouched until "
                         "the third pass reports), paraphrase_pairs_fresh.jsonl (its heldout half was reported "
                         "on in the second pass) and/or paraphrase_pairs.jsonl (old: heldout reported on before)")
    ap.add_argument("--guard-only", action="store_true",
                    help="pairs: the lexical guard for every prompt, no static candidates (the design before issue 15)")
    ap.add_argument("--cold", action="store_true", help="pairs: do not let the verifier embed stored prompts before the lookups")
    ap.add_argument("--legacy", action="store_true", help="pairs: the issue-4 sets (tests/data/cache_pairs*.jsonl)")
    ap.add_argument("--latency", action="store_true", help="pairs: also the first-time semantic-hit latency")
    ap.add_argument("--show", help="pairs: print the wrong decisions of this set:split, e.g. fresh:tune (never the "
                                   "split you report on while tuning)")
    ap.add_argument("--margin", type=float, help="narrow_margin (default: the config's)")
    ap.add_argument("--candidates", type=int, help="top-k candidates taken from the index (default: the config's)")
    args = ap.parse_args()
    import platform

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    asyncio.run({"pairs": bench_pairs, "hitrate": bench_hitrate, "latency": bench_latency, "recall": bench_recall,
                 "ops": bench_ops, "examples": bench_examples, "memory": bench_memory}[args.what](args))


if __name__ == "__main__":
    main()
