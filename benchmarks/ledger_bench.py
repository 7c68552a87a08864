#!/usr/bin/env python
"""The usage ledger's cost: non-streaming req/s with the ledger on (SQLite, PostgreSQL) vs off, in one run.

    python benchmarks/ledger_bench.py [--rounds 20] [--duration 2] [--connections 50] [--pg-url URL] [--baseline ../old-checkout]
        [--aa] [--variant NAME:K=V,...] [--keep-processes] [--json out.json]

All on 127.0.0.1, bounded in time, reusing benchmarks/gateway_bench.py's processes and wrk runner:
the simulator (instant upstream) and wrk pinned to the load core, three ``gateway serve`` (one
Granian worker each, cache off, pinned to the gateway core): ``DATABASE_URL=off``, a SQLite file
in a temporary directory, and a throwaway database on the PostgreSQL of ``--pg-url``. wrk runs
interleaved over many short rounds (A B C, C B A, ...) so each round's on/off ratio is taken
within seconds on this shared host, each round with new gateway processes (``--keep-processes``: the
same ones throughout), since one process can run a few % faster than another of the same code for
its whole life (``--aa`` adds a second ledger-off gateway to show that bias and the noise); the report is the median of the per-round ratios with its
spread (quartiles, range, the distribution-free 95 % confidence interval of the median: the
cost is resolved when that interval excludes 1.0), in req/s and in the worker's CPU time per
request (utime + stime from /proc, less disturbed by other tenants); and the same over the quiet
rounds only (no other process above ``--max-foreign`` % of the gateway core). Then it counts the ledger rows each database holds against the requests the gateway
answered (rows lost: goal 0), and measures the writer alone: rows/s of ``LedgerWriter`` into each
database and its CPU time a row (50,000 rows, flushed every 400 as a worker at ~1,600 req/s writes them).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gateway_bench import (  # noqa: E402
    CHAT_LUA, GatewayProcess, check_chat, fmt_spread, interleaved, proc_ticks, ratio_spreads, run_wrk, task_ids,
)

TICK = os.sysconf("SC_CLK_TCK")


def thread_ticks(pids: list[int]) -> dict[str, int]:
    """utime and stime of these processes' main threads (the event loop) and of their other threads
    (Granian's, the SQLite writer's), apart: where a cost lands, not only its total."""
    out = {"loop_user": 0, "loop_sys": 0, "other_user": 0, "other_sys": 0}
    for pid in pids:
        for tid in task_ids(pid):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            who = "loop" if tid == str(pid) else "other"
            out[f"{who}_user"] += int(fields[11])
            out[f"{who}_sys"] += int(fields[12])
    return out


class LedgerGateway(GatewayProcess):
    def __init__(self, label: str, database_url: str, sim_base: str, cpu: int | None, tree: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        super().__init__("aiohttp", sim_base, cpu, tree=tree, extra_env=extra_env)
        self.name = f"gateway ({label})"
        self.database_url = database_url

    def env(self) -> dict[str, str]:
        return {**super().env(), "DATABASE_URL": self.database_url}


async def _count(url: str) -> int:
    from sqlalchemy import text

    from gateway.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM usage"))).scalar())
    finally:
        await engine.dispose()


async def _writer_rate(url: str, n: int = 50_000) -> float:
    from gateway.db import create_engine
    from gateway.ledger import LedgerWriter

    engine = create_engine(url)
    writer = LedgerWriter(engine, max_buffer=n)
    writer.start()
    today = dt.date.today()
    day, no = writer.day(today), writer.flags[False]  # the values the finish listener hands this writer
    nil, no_ms = writer.nil
    rows = [(f"bench-{i}", time.time(), day, "bench", "gpt-4o-mini", "openai", "openai:gpt-4o-mini", "rest", 200,
             nil, 12, 30, 0, 0.00002, 1.5, 1.0, 0.5, no_ms, 1, nil, nil, no, no) for i in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, n, 400):  # in batches of 400, as a worker at ~1,600 req/s writes them
        for r in rows[i:i + 400]:
            writer.add(r)
        assert await writer.flush(120)
    rate = n / (time.perf_counter() - t0)
    cpu_us = (time.process_time() - c0) / n * 1e6  # this process, all its threads (SQLite's writer thread too)
    await writer.close()
    await engine.dispose()
    return rate, cpu_us


async def _new_pg_database(admin_url: str) -> str:
    import asyncpg

    name = "gwbench_" + uuid.uuid4().hex[:10]
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def _drop_pg_database(admin_url: str, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    await conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=2, help="seconds of each wrk run")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--pg-url", default=os.environ.get("PG_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--gateway-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    ap.add_argument("--max-foreign", type=float, default=10.0,
                    help="%% of the gateway core other processes may use in a run of a quiet round")
    ap.add_argument("--baseline", type=Path,
                    help="another checkout (e.g. the commit before a change): its ledger on SQLite and PostgreSQL too, "
                         "as sqlite-base and postgres-base, in the same interleaving")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:K=V,...",
                    help="this tree's ledger once more on both databases with these settings (repeatable), "
                         "e.g. fast:GATEWAY_LEDGER_FLUSH_SECONDS=0.05,GATEWAY_LEDGER_BATCH_ROWS=200")
    ap.add_argument("--keep-processes", action="store_true",
                    help="the same gateway processes for every round (faster; a process's own bias then stays in the ratio)")
    ap.add_argument("--aa", action="store_true",
                    help="a second ledger-off gateway (off-2), to read the bench's own bias and noise: off-2 / off should be 1.0")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from gateway.config.validate import database_url
    from gateway.db import upgrade
    from gateway.simulator import SimulatorProcess

    load = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="ledger-bench-")
    sqlite_url = database_url("DATABASE_URL", f"sqlite:///{tmp}/ledger.db")
    pg_url = database_url("DATABASE_URL", asyncio.run(_new_pg_database(args.pg_url)))
    for url in (sqlite_url, pg_url):
        upgrade(url)
    dbs = [("off", "off", None), ("sqlite", sqlite_url, None), ("postgres", pg_url, None)]
    if args.baseline:
        base = args.baseline.resolve()
        base_urls = (database_url("DATABASE_URL", f"sqlite:///{tmp}/ledger-base.db"),
                     database_url("DATABASE_URL", asyncio.run(_new_pg_database(args.pg_url))))
        for url in base_urls:  # the baseline's own migrations, by its own code
            subprocess.run([sys.executable, "-c", f"from gateway.db import upgrade; upgrade({url!r})"], cwd=base, check=True)
        dbs += [("sqlite-base", base_urls[0], base), ("postgres-base", base_urls[1], base)]
    if args.aa:
        dbs.append(("off-2", "off", None))
    extra: dict[str, dict[str, str]] = {}
    for spec in args.variant:  # NAME:K=V,K=V -> NAME-sqlite and NAME-postgres with those settings
        name, _, pairs = spec.partition(":")
        env = dict(p.split("=", 1) for p in pairs.split(",") if p)
        for label, url in ((f"{name}-sqlite", database_url("DATABASE_URL", f"sqlite:///{tmp}/ledger-{name}.db")),
                           (f"{name}-postgres", database_url("DATABASE_URL", asyncio.run(_new_pg_database(args.pg_url))))):
            upgrade(url)
            dbs.append((label, url, None))
            extra[label] = env
    sim = SimulatorProcess({"*": {"latency_ms": 0, "response_tokens": 30, "chunk_tokens": 1}}, cpu=args.load_cpu)
    gateways: dict[str, LedgerGateway] = {}
    try:
        sim.start()
        check_chat(sim.openai_base_url.removesuffix("/v1"), "simulator")
        pids: list[int] = []

        def start_all() -> list[tuple[str, str]]:
            for label, url, tree in dbs:
                gateways[label] = LedgerGateway(label, url, sim.base_url, args.gateway_cpu, tree, extra.get(label)).start()
            pids[:] = [pid for g in gateways.values() for pid in (g.proc.pid, *g.worker_pids())]
            return [(label, gw.url) for label, gw in gateways.items()]

        def stop_all() -> None:
            for gw in gateways.values():
                gw.terminate()
            for gw in gateways.values():
                gw.stop()  # SIGTERM: each worker writes what it buffered before it exits

        def measure(label: str, url: str) -> dict:
            workers = gateways[label].worker_pids()
            t0, th0 = proc_ticks(workers), thread_ticks(workers)
            r = run_wrk(url, CHAT_LUA, args.connections, args.duration, args.load_cpu)
            r["cpu_us"] = (proc_ticks(workers) - t0) / TICK / r["requests"] * 1e6 if r["requests"] else None
            th1 = thread_ticks(workers)
            for k in th0:
                r[f"{k}_us"] = (th1[k] - th0[k]) / TICK / r["requests"] * 1e6 if r["requests"] else None
            return r

        def warm(label: str, url: str) -> None:
            run_wrk(url, CHAT_LUA, args.connections, 2 if args.keep_processes else 1, args.load_cpu)

        if args.keep_processes:
            runs = interleaved("ledger", start_all(), measure, warm, args.rounds, args.gateway_cpu, lambda: pids)
        else:
            # New processes every round: one process of some code can sit a few % above another of the same
            # code for its whole life (its memory layout, hash seed; an A/A pair of kept processes here read
            # 0.989 in one run and 1.035 in the next), which no number of rounds averages out; new ones do.
            runs = {label: [] for label, _, _ in dbs}
            for r in range(args.rounds):
                targets = start_all()
                one = interleaved("ledger", targets if r % 2 == 0 else targets[::-1], measure, warm, 1,
                                  args.gateway_cpu, lambda: pids)
                stop_all()
                for label, rs in one.items():
                    runs[label] += rs
        load_end = os.getloadavg()
        stop_all()
        answered = {label: sum(r["requests"] for r in rs) for label, rs in runs.items()}
        rows = {label: asyncio.run(_count(url)) for label, url, _ in dbs if url != "off"}
        writer = {"sqlite": asyncio.run(_writer_rate(sqlite_url)), "postgres": asyncio.run(_writer_rate(pg_url))}
    finally:
        for gw in gateways.values():
            gw.stop()
        sim.stop()
        for label, url, _ in dbs:
            if url.startswith("postgresql"):
                asyncio.run(_drop_pg_database(args.pg_url, url.replace("+asyncpg", "")))

    print(f"\nload average (1/5/15 min) at start {' / '.join(f'{x:.2f}' for x in load)}, at end "
          f"{' / '.join(f'{x:.2f}' for x in load_end)} ({os.cpu_count()} cores; gateways on core {args.gateway_cpu}, "
          f"wrk + simulator on core {args.load_cpu}); {args.rounds} interleaved rounds of {args.duration} s, "
          f"{args.connections} connections; quiet rounds: <= {args.max_foreign:g} % of the gateway core used by others\n")
    print("| ledger | req/s median (range) | CPU us/request median | loop thread user / sys | other threads user / sys | errors |")
    print("|---|---|---|---|---|---|")
    for label, rs in runs.items():
        rps = [r["rps"] for r in rs]
        cpu = [r["cpu_us"] for r in rs if r["cpu_us"]]
        print(f"| {label} | {statistics.median(rps):,.0f} ({min(rps):,.0f}-{max(rps):,.0f}) | "
              f"{statistics.median(cpu):.0f} | "
              + " | ".join(" / ".join(f"{statistics.median(r[f'{who}_{k}_us'] for r in rs if r['requests']):.0f}"
                                      for k in ("user", "sys")) for who in ("loop", "other"))
              + f" | {sum(r['errors'] for r in rs)} |")
    ratios = {}
    for label in [label for label, _, _ in dbs if label != "off"]:
        ratios[label] = {unit: ratio_spreads(runs[label], runs["off"], field, args.max_foreign)
                         for field, unit in (("rps", "rps"), ("cpu_us", "cpu"))}
        print()
        for unit, what in (("rps", "req/s"), ("cpu", "CPU per request")):
            for which, s in ratios[label][unit].items():
                print(f"{label} / off {what} ({which}): {fmt_spread(s)}")
    print()
    for label in rows:
        # wrk counts answers it read; rows cover those plus the warm-up second and the start-up check.
        print(f"{label}: {rows[label]:,} ledger rows for {answered[label]:,} answers wrk counted in the timed runs "
              f"(+ warm-up and start-up check)"
              + (f"; writer alone {writer[label][0]:,.0f} rows/s, {writer[label][1]:.1f} us of CPU a row" if label in writer else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "rows": rows, "answered": answered, "writer": writer,
                                               "ratios": ratios, "load": load, "load_end": load_end}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
