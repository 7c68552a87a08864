"""Provider failover: real HTTP, one simulator process per provider, failures switched at run time.

    pytest tests/test_provider_failover.py -v
    pytest tests/test_provider_failover.py::test_generate_failover_report -v
    pytest tests/test_provider_failover.py --cov=gateway --cov-report=html
    pytest tests/test_provider_failover.py::TestProviderFailover::test_failover_under_load -v

The load test keeps 500 requests in flight (a separate load process on
uvloop + aiohttp, so the controller's own waits never stall it) while the
primary provider refuses connections, then answers 500s, then hangs, each
followed by its recovery. Every figure in reports/failover_report.{md,json}
comes from those runs; nothing is typed in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from gateway.simulator import SimulatorProcess
from tests.harness import ADMIN_KEY, API_KEY, gateway_with_config, running_gateway

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

REQUEST_TIMEOUT = 5.0  # the gateway's REQUEST_TIMEOUT_SECONDS in this suite
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "google": "gemini-2.0-flash"}

# The load scenario: an LLM-like time to answer, 500 requests always in flight.
LOAD_LATENCY_MS = 600.0
LOAD_JITTER_MS = 60.0
CONCURRENCY = 500
WARMUP_S = 2.5
BASELINE_S = 2.5
OUTAGE_S = 4.0
ATTEMPT_TIMEOUT_S = 2.5
STALL_S = 0.5  # the load group's breaker_stall: well above this shared machine's scheduling hiccups
OUTAGES = ("refuse", "error", "timeout")
OUTAGE_LABEL = {
    "refuse": "connection refused",
    "error": "HTTP 500 on every request",
    "timeout": "time-outs (accepts, never answers)",
}

# Results shared by the tests of this module (the report reuses the load run when it already happened).
_RESULTS: dict = {}


# --- config --------------------------------------------------------------------------------------


def _deployment(name: str, provider: str, sim: SimulatorProcess, weight: float = 1.0) -> str:
    return (
        f'{{ name = "{name}", provider = "{provider}", model = "{MODELS[provider]}", '
        f'base_url = "{sim.base_url_for(provider)}", api_key = "sk-{provider}", weight = {weight} }}'
    )


def _group(name: str, deployments: list[str], **options) -> str:
    lines = [f'[models."{name}"]']
    for k, v in options.items():
        lines.append(f"{k} = {json.dumps(v)}")
    lines.append("deployments = [\n  " + ",\n  ".join(deployments) + ",\n]")
    return "\n".join(lines) + "\n"


def failover_config(a: SimulatorProcess, b: SimulatorProcess, c: SimulatorProcess) -> str:
    fast_breaker = {"breaker_failures": 3, "breaker_cooldown": 0.5, "breaker_probes": 1}
    return "\n".join(
        [
            "[routing]\nbackoff_base = 0.01\nbackoff_max = 0.05\n",
            # The load test's group: primary first, then fallbacks in order.
            _group(
                "load",
                [_deployment("load-primary", "openai", a), _deployment("load-secondary", "anthropic", b),
                 _deployment("load-tertiary", "google", c)],
                strategy="priority", retries=2, attempt_timeout=ATTEMPT_TIMEOUT_S, breaker_failures=5, breaker_cooldown=1.0,
                breaker_probes=2, breaker_stall=STALL_S,
            ),
            _group("breaker", [_deployment("brk-primary", "openai", a), _deployment("brk-secondary", "anthropic", b)],
                   strategy="priority", **fast_breaker),
            _group("budget", [_deployment("budget-only", "openai", a)], retries=3, retry_budget=0.2,
                   breaker_failures=100000, breaker_min_requests=100000),
            _group("hang", [_deployment("hang-a", "openai", a), _deployment("hang-c", "google", c)],
                   strategy="priority", retries=5, attempt_timeout=2.0, retry_budget=1.0, breaker_failures=100000,
                   breaker_min_requests=100000),
            _group("plain", [_deployment("plain-primary", "openai", a), _deployment("plain-secondary", "anthropic", b)],
                   strategy="priority"),
            _group("stream", [_deployment("stream-primary", "openai", a), _deployment("stream-secondary", "anthropic", b)],
                   strategy="priority"),
            _group("alldown", [_deployment("down-a", "openai", a), _deployment("down-b", "anthropic", b)],
                   **{**fast_breaker, "breaker_cooldown": 5.0}),
            _group("tail-plain", [_deployment("tail-a", "openai", a), _deployment("tail-b", "anthropic", b)]),
            _group("tail-hedged", [_deployment("hedge-a", "openai", a), _deployment("hedge-b", "anthropic", b)],
                   hedge=True, hedge_delay="p95", hedge_max_fraction=0.1),
        ]
    )


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sims():
    """One simulator process per provider: a (OpenAI), b (Anthropic), c (Gemini)."""
    config = {"*": {"latency_ms": 20, "jitter_ms": 5}}
    with SimulatorProcess(config) as a, SimulatorProcess(config) as b, SimulatorProcess(config) as c:
        yield a, b, c


@pytest.fixture(scope="module")
def gateway(sims):
    env = {"GATEWAY_CACHE": "off", "REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT), "WORKER_CONNECTIONS": "4096"}
    with gateway_with_config(failover_config(*sims), env) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _reset(sims):
    for s in sims:
        s.reset()
    yield
    for s in sims:
        s.reset()


# --- small HTTP helpers (blocking: the controller is not the load) -------------------------------


def call(url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 10.0):
    """(status, headers, body bytes, seconds) of one request."""
    data = orjson.dumps(body) if body is not None else None
    h = {"content-type": "application/json", **AUTH, **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=h, method="POST" if data is not None else "GET")
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read(), time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read(), time.perf_counter() - t0


def chat(gw, model: str, headers: dict | None = None, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "What is machine learning?"}], **extra}
    return call(gw.url + "/v1/chat/completions", body, headers)


def providers(gw) -> dict[str, dict]:
    status, _, body, _ = call(gw.url + "/v1/providers")
    assert status == 200, body
    return {row["name"]: row for row in orjson.loads(body)["data"]}


def wait_state(gw, name: str, states: tuple[str, ...], timeout: float) -> float:
    """Poll until deployment ``name`` is in one of ``states``; returns when (time.time())."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if providers(gw).get(name, {}).get("state") in states:
            return time.time()
        time.sleep(0.05)
    raise AssertionError(f"{name} not {states} within {timeout}s: {providers(gw).get(name)}")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# --- the load process ------------------------------------------------------------------------------


def load_main(argv: list[str]) -> None:
    """``python -c '...load_main(argv)' URL MODEL CONCURRENCY OUT``: run until SIGTERM, then write records."""
    import asyncio

    import aiohttp
    import uvloop

    url, model, concurrency, out = argv[0], argv[1], int(argv[2]), argv[3]
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "Explain neural networks"}]})
    headers = {"content-type": "application/json", **AUTH}
    records: list[tuple] = []
    inflight_samples: list[tuple[float, int]] = []
    state = {"inflight": 0, "stop": False}

    async def worker(session, delay: float) -> None:
        await asyncio.sleep(delay)  # ramp up over a second, as a load tool would, not 500 connects at once
        while not state["stop"]:
            start = time.time()
            t0 = time.perf_counter()
            state["inflight"] += 1
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    data = await r.read()
                    status = r.status
                    h = r.headers
                    code = None
                    if status != 200:
                        try:
                            code = orjson.loads(data)["error"]["code"]
                        except Exception:
                            code = "unparsable"
                    elif b'"chat.completion"' not in data:
                        status, code = -2, "bad_body"
                    rec = (start, time.perf_counter() - t0, status, h.get("x-gateway-deployment"),
                           int(h.get("x-gateway-attempts") or 0), h.get("x-gateway-failover"), code)
            except Exception as exc:  # a client-side failure is a failed request too
                rec = (start, time.perf_counter() - t0, -1, None, 0, None, exc.__class__.__name__)
            finally:
                state["inflight"] -= 1
            records.append(rec)

    async def sampler() -> None:
        while not state["stop"]:
            inflight_samples.append((time.time(), state["inflight"]))
            await asyncio.sleep(0.1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: state.update(stop=True))
        connector = aiohttp.TCPConnector(limit=concurrency + 100, limit_per_host=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT * 4)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            print("started", flush=True)
            await asyncio.gather(sampler(), *(worker(session, i / concurrency) for i in range(concurrency)))

    uvloop.run(main())
    with open(out, "wb") as f:
        f.write(orjson.dumps({"records": records, "inflight": inflight_samples}))


class LoadProcess:
    def __init__(self, url: str, model: str, concurrency: int) -> None:
        fd, self.out = tempfile.mkstemp(prefix="failover-load-", suffix=".json")
        os.close(fd)
        code = "import sys; from tests.test_provider_failover import load_main; load_main(sys.argv[1:])"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, url + "/v1/chat/completions", model, str(concurrency), self.out],
            cwd=str(ROOT), stdout=subprocess.PIPE,
        )
        line = self.proc.stdout.readline()
        assert line.strip() == b"started", line

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(REQUEST_TIMEOUT * 4 + 10)
        self.proc.stdout.close()
        with open(self.out, "rb") as f:
            data = orjson.loads(f.read())
        os.unlink(self.out)
        return data

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- the outage scenario and its analysis ---------------------------------------------------------


def run_outages(gw, sims) -> dict:
    """500 in flight; the primary refuses, then answers 500s, then hangs; each outage followed by recovery."""
    primary = sims[0]
    for s in sims:
        s.configure("*", latency_ms=LOAD_LATENCY_MS, jitter_ms=LOAD_JITTER_MS)
    load = LoadProcess(gw.url, "load", CONCURRENCY)
    phases = []
    try:
        time.sleep(WARMUP_S)
        for kind in OUTAGES:
            t_base = time.time()
            time.sleep(BASELINE_S)
            t_down = time.time()
            if kind == "refuse":
                primary.configure("*", mode="refuse")  # its only listener closes: a real ECONNREFUSED
            else:
                primary.configure("openai", mode=kind, error_status=500)
            t_switched = time.time()  # the simulator has switched by now (its admin call returned)
            samples = []
            while time.time() < t_down + OUTAGE_S:
                samples.append((time.time(), providers(gw)["load-primary"]["state"]))
                time.sleep(0.1)
            t_up = time.time()
            primary.configure("*", mode="ok")
            t_closed = wait_state(gw, "load-primary", ("closed",), timeout=15)
            time.sleep(0.5)
            row = providers(gw)["load-primary"]
            phases.append({
                "kind": kind, "t_base": t_base, "t_down": t_down, "t_switched": t_switched, "t_up": t_up,
                "t_closed": t_closed,
                "transitions": [t for t in row["transitions"] if t["at"] >= t_base],
                "state_samples": samples,
            })
        time.sleep(0.5)
        data = load.stop()
    finally:
        load.kill()
    return analyse(data, phases)


def _stats(recs: list) -> dict:
    lat = [r[1] * 1000 for r in recs if r[2] == 200]
    errors = [r for r in recs if r[2] != 200]
    return {
        "requests": len(recs),
        "errors": len(errors),
        "error_rate": len(errors) / len(recs) if recs else 0.0,
        "p50_ms": _r(pct(lat, 0.50)),
        "p95_ms": _r(pct(lat, 0.95)),
        "p99_ms": _r(pct(lat, 0.99)),
        "max_ms": _r(max(lat) if lat else None),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def analyse(data: dict, phases: list[dict]) -> dict:
    records = [tuple(r) for r in data["records"]]
    inflight = data["inflight"]
    out_phases = []
    for ph in phases:
        # Before: answered before the outage began. During: in flight at any moment of the outage, so the
        # requests the outage caught mid-way count as its own.
        base = [r for r in records if ph["t_base"] + 0.3 <= r[0] and r[0] + r[1] < ph["t_down"]]
        outage = [r for r in records if r[0] + r[1] >= ph["t_down"] and r[0] < ph["t_up"]]
        recovery = [r for r in records if ph["t_up"] <= r[0] < ph["t_closed"] + 0.5]
        opened = [t["at"] for t in ph["transitions"] if t["state"] == "open" and t["at"] >= ph["t_down"]]
        closed = [t["at"] for t in ph["transitions"] if t["state"] == "closed" and t["at"] >= ph["t_up"]]
        t_open = opened[0] if opened else None
        failed_over = [r for r in outage if r[5]]
        first_failover = min((r[0] + r[1] for r in failed_over), default=None)
        caught = [r for r in outage if r[0] < ph["t_down"]]
        # After the breaker opened, first attempts skip the primary: the cost of failover itself.
        steady = [r for r in outage if t_open is not None and r[0] >= t_open + 0.05]
        in_outage = [n for t, n in inflight if ph["t_down"] <= t < ph["t_up"]]
        # Sent after the primary went down and answered before it came back: must not be the primary's answer.
        primary_after = [
            r for r in outage
            if r[2] == 200 and r[3] == "load-primary" and r[0] >= ph["t_switched"] and r[0] + r[1] < ph["t_up"]
        ]
        b, o, s = _stats(base), _stats(outage), _stats(steady)
        out_phases.append({
            "kind": ph["kind"],
            "label": OUTAGE_LABEL[ph["kind"]],
            "outage_seconds": round(ph["t_up"] - ph["t_down"], 2),
            "before": b,
            "during": o,
            "during_after_breaker_open": s,
            "recovery": _stats(recovery),
            "added_ms": {q: _r(o[f"{q}_ms"] - b[f"{q}_ms"]) if o[f"{q}_ms"] is not None and b[f"{q}_ms"] is not None else None
                         for q in ("p50", "p95", "p99")},
            "added_ms_after_breaker_open": {
                q: _r(s[f"{q}_ms"] - b[f"{q}_ms"]) if s[f"{q}_ms"] is not None and b[f"{q}_ms"] is not None else None
                for q in ("p50", "p95", "p99")},
            "detection_seconds": round(t_open - ph["t_down"], 3) if t_open else None,
            "first_failover_answer_seconds": round(first_failover - ph["t_down"], 3) if first_failover else None,
            "requests_caught_in_flight": len(caught),
            "requests_failed_over": len(failed_over),
            "share_failed_over": round(len(failed_over) / len(outage), 4) if outage else None,
            "breaker_closed_after_recovery_seconds": round(closed[0] - ph["t_up"], 3) if closed else None,
            "primary_answers_during_outage": len(primary_after),
            "inflight_min": min(in_outage) if in_outage else None,
            "inflight_mean": round(sum(in_outage) / len(in_outage), 1) if in_outage else None,
            "client_errors": sorted({(r[2], r[6]) for r in outage + recovery if r[2] != 200}),
            "client_error_records": [
                {"t_s": round(r[0] - ph["t_down"], 3), "ms": round(r[1] * 1000), "status": r[2], "code": r[6],
                 "attempts": r[4], "failover": r[5]}
                for r in (outage + recovery) if r[2] != 200][:20],
            "breaker_timeline": [
                {"t_s": round(t["at"] - ph["t_down"], 3), "state": t["state"], "reason": t["reason"]}
                for t in ph["transitions"]
            ],
        })
    t0 = min(r[0] for r in records)
    marks = {f"{ph['kind']}_{k[2:]}": round(ph[k] - t0, 2) for ph in phases for k in ("t_down", "t_up", "t_closed")}
    errors = [(round(r[0] - t0, 3), round(r[1], 3), r[2], r[6]) for r in records if r[2] != 200]
    all_lat = [r for r in records]
    return {
        "errors_seen": {"count": len(errors), "first_50": errors[:50], "timeline_marks_s": marks},
        "windows": "before: sent after the baseline began and answered before the outage; during: in flight at any "
                   "moment of the outage; after breaker open: sent once the primary's breaker was open",
        "setup": {
            "concurrency": CONCURRENCY,
            "provider_latency_ms": LOAD_LATENCY_MS,
            "provider_jitter_ms": LOAD_JITTER_MS,
            "outage_seconds": OUTAGE_S,
            "request_timeout_seconds": REQUEST_TIMEOUT,
            "group": "priority: openai primary → anthropic → google (one simulator process each)",
            "options": {"retries": 2, "attempt_timeout": ATTEMPT_TIMEOUT_S, "breaker_failures": 5, "breaker_cooldown": 1.0,
                        "breaker_probes": 2, "breaker_stall": STALL_S},
            "gateway_workers": 1,
            "cpus": os.cpu_count(),
            # Other work on the machine shows here; it moves every latency figure.
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "total": _stats(all_lat),
        "throughput_rps": round(len(records) / (max(r[0] for r in records) - min(r[0] for r in records)), 1),
        "phases": out_phases,
    }


def run_hedging(gw, sims, seconds: float = 3.0, concurrency: int = 16) -> dict:
    """The same slow-tailed provider pair, without and with hedging; client-side latency."""
    import asyncio

    import aiohttp

    a, b, _ = sims
    a.configure("openai", latency_ms=30, jitter_ms=10, tail_ratio=0.05, tail_ms=400)
    b.configure("anthropic", latency_ms=30, jitter_ms=10)

    async def drive(model: str, duration: float) -> list[tuple]:
        out = []
        stop = time.monotonic() + duration
        body = {"model": model, "messages": [{"role": "user", "content": "What is machine learning?"}]}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def one():
                while time.monotonic() < stop:
                    t0 = time.perf_counter()
                    async with s.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
                        await r.read()
                        out.append((time.perf_counter() - t0, r.status, r.headers.get("x-gateway-failover"),
                                    int(r.headers.get("x-gateway-attempts") or 0)))
            await asyncio.gather(*(one() for _ in range(concurrency)))
        return out

    async def main():
        await drive("tail-hedged", 1.0)  # warm-up: the P95 that sets the hedge delay
        plain = await drive("tail-plain", seconds)
        hedged = await drive("tail-hedged", seconds)
        return plain, hedged

    plain, hedged = asyncio.run(main())
    result = {}
    for name, recs in (("without_hedging", plain), ("with_hedging", hedged)):
        lat = [r[0] * 1000 for r in recs if r[1] == 200]
        result[name] = {
            "requests": len(recs),
            "errors": sum(1 for r in recs if r[1] != 200),
            "p50_ms": _r(pct(lat, 0.5)), "p95_ms": _r(pct(lat, 0.95)), "p99_ms": _r(pct(lat, 0.99)),
            "hedged": sum(1 for r in recs if r[3] > 1),
        }
    result["with_hedging"]["hedged_fraction"] = round(result["with_hedging"]["hedged"] / max(1, len(hedged)), 4)
    result["p99_ratio"] = round(result["without_hedging"]["p99_ms"] / result["with_hedging"]["p99_ms"], 2)
    result["setup"] = {
        "concurrency": concurrency, "seconds_each": seconds,
        "provider_a": "30 ms + up to 10 ms jitter; 5 % of answers +400 ms",
        "provider_b": "30 ms + up to 10 ms jitter",
        "group": "weighted 50/50; hedge_delay = observed P95, hedge_max_fraction = 0.1",
    }
    hedge_row = providers(gw).get("hedge-a")
    result["hedge_delay_basis_p95_ms"] = hedge_row and hedge_row.get("latency_p95_ms")
    return result


# --- the tests ------------------------------------------------------------------------------------------


class TestProviderFailover:
    def test_failover_under_load(self, gateway, sims):
        result = run_outages(gateway, sims)
        _RESULTS["load"] = result
        assert result["total"]["requests"] > 5000
        for ph in result["phases"]:
            kind = ph["kind"]
            assert ph["inflight_min"] >= CONCURRENCY * 0.95, (kind, ph["inflight_min"])
            # Zero failed client requests, through the outage and the recovery.
            assert ph["during"]["errors"] == 0, (kind, ph["client_error_records"], ph["breaker_timeline"])
            assert ph["recovery"]["errors"] == 0, (kind, ph["client_error_records"], ph["breaker_timeline"])
            # Every answer came from a healthy provider: none from the primary once it was down.
            assert ph["primary_answers_during_outage"] == 0, kind
            assert ph["requests_failed_over"] > 0, kind
            # The breaker opened during the outage and closed after the recovery.
            assert ph["detection_seconds"] is not None and ph["detection_seconds"] < 2.0, (kind, ph["breaker_timeline"])
            assert ph["breaker_closed_after_recovery_seconds"] is not None, (kind, ph["breaker_timeline"])
        # Latency figures go to the report, not into asserts: on a shared 2-core machine they move with the
        # neighbours' load (the report records the load average); the hedging test asserts its P99 cut as a ratio.
        assert result["total"]["errors"] == 0, result["errors_seen"]

    def test_breaker_transitions(self, gateway, sims):
        a = sims[0]
        assert providers(gateway).get("brk-primary", {"state": "closed"})["state"] == "closed"
        a.configure("*", mode="refuse")
        for _ in range(3):
            status, headers, _, _ = chat(gateway, "breaker")
            assert status == 200 and headers["x-gateway-deployment"] == "brk-secondary"
            assert "brk-primary (upstream_unreachable)" in headers["x-gateway-failover"]
        row = providers(gateway)["brk-primary"]
        assert row["state"] == "open" and "3 consecutive failures" in row["reason"]
        assert row["open_since"] and row["retry_in_s"] > 0
        _, _, body, _ = call(gateway.url + "/ready")
        assert orjson.loads(body)["breakers"]["brk-primary"] == "open"
        # Open: the primary is skipped outright (one attempt, no failover).
        status, headers, _, _ = chat(gateway, "breaker")
        assert status == 200 and headers["x-gateway-attempts"] == "1"
        # After the cool-down a request probes it; still down, so it opens again (the client never sees it).
        time.sleep(0.6)
        status, headers, _, _ = chat(gateway, "breaker")
        assert status == 200 and headers["x-gateway-attempts"] == "2"
        assert providers(gateway)["brk-primary"]["state"] == "open"
        a.configure("*", mode="ok")
        time.sleep(0.6)
        status, headers, _, _ = chat(gateway, "breaker")
        assert status == 200 and headers["x-gateway-deployment"] == "brk-primary"
        row = providers(gateway)["brk-primary"]
        assert row["state"] == "closed"
        states = [t["state"] for t in row["transitions"]]
        assert states[-5:] == ["open", "half_open", "open", "half_open", "closed"]

    def test_retry_budget_bounds_retries(self, gateway, sims):
        a = sims[0]
        a.configure("openai", mode="error", error_status=503, retry_after=0)
        before = a.stats()["providers"]["openai"]["requests"]
        n = 100
        statuses = []
        for _ in range(n):
            status, headers, _, _ = chat(gateway, "budget")
            statuses.append((status, int(headers.get("x-gateway-attempts", "0"))))
        sent = a.stats()["providers"]["openai"]["requests"] - before
        assert all(s == 502 for s, _ in statuses)  # a provider's 5xx reaches the client as 502
        assert max(k for _, k in statuses) <= 4  # retries = 3
        # Re-tries of the same deployment: at most 20 % of requests (+ a burst of 10), not 3 per request.
        assert n <= sent <= n * 1.2 + 10, sent

    def test_deadline_is_respected(self, gateway, sims):
        a, _, c = sims
        a.configure("openai", mode="timeout")
        c.configure("google", mode="timeout")
        # Attempts of at most 2 s fail over between two hung providers, then re-try, until the deadline.
        status, headers, body, elapsed = chat(gateway, "hang")
        assert status == 504, body
        assert REQUEST_TIMEOUT - 0.5 < elapsed < REQUEST_TIMEOUT + 0.3, elapsed
        assert int(headers["x-gateway-attempts"]) == 3
        status, headers, body, elapsed = chat(gateway, "hang", headers={"x-gateway-timeout": "1"})
        assert status == 504 and elapsed < 1.0 + 0.3, (status, elapsed)

    def test_client_4xx_is_not_retried_but_429_is(self, gateway, sims):
        a, b, _ = sims
        b_before = b.stats()["providers"]["anthropic"]["requests"]
        a.configure("openai", mode="error", error_status=400)
        status, headers, body, _ = chat(gateway, "plain")
        assert status == 400 and headers["x-gateway-attempts"] == "1", body
        assert b.stats()["providers"]["anthropic"]["requests"] == b_before
        a.configure("openai", mode="overloaded", retry_after=1)  # OpenAI sheds load with a 429
        status, headers, body, _ = chat(gateway, "plain")
        assert status == 200 and headers["x-gateway-deployment"] == "plain-secondary", body
        assert headers["x-gateway-attempts"] == "2" and "plain-primary (" in headers["x-gateway-failover"]
        # Retry-After is honoured: the primary gets no request during that second.
        a_before = a.stats()["providers"]["openai"]["requests"]
        status, headers, _, _ = chat(gateway, "plain")
        assert status == 200 and headers["x-gateway-attempts"] == "1"
        assert a.stats()["providers"]["openai"]["requests"] == a_before

    def test_stream_fails_over_before_first_byte_only(self, gateway, sims):
        a, b, _ = sims
        a.configure("*", mode="refuse")
        status, headers, body, _ = chat(gateway, "stream", stream=True)
        assert status == 200 and headers["x-gateway-deployment"] == "stream-secondary"
        assert headers["x-gateway-attempts"] == "2" and "stream-primary" in headers["x-gateway-failover"]
        events = [e for e in body.split(b"\n\n") if e.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]" and b"machine" in body
        # Now the primary is up but slow, and dies after its first chunk reached the client.
        a.configure("*", mode="ok", tokens_per_second=20, response_tokens=40)
        b_streams = b.stats()["providers"]["anthropic"]["streams"]
        req = urllib.request.Request(
            gateway.url + "/v1/chat/completions",
            data=orjson.dumps({"model": "stream", "stream": True, "messages": [{"role": "user", "content": "hi there"}]}),
            headers={"content-type": "application/json", **AUTH},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["x-gateway-deployment"] == "stream-primary"
            first = r.readline()
            assert first.startswith(b"data: {")
            a.configure("*", mode="refuse")  # drops its connections mid-stream
            rest = r.read()
        events = [e for e in (first + rest).split(b"\n\n") if e.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]"
        err = orjson.loads(events[-2][len(b"data: "):])
        assert err["error"]["code"] == "upstream_unreachable"
        assert b.stats()["providers"]["anthropic"]["streams"] == b_streams  # no failover after the first byte

    def test_all_down_gives_fast_503(self, gateway, sims):
        a, b, _ = sims
        a.configure("*", mode="refuse")
        b.configure("*", mode="refuse")
        for _ in range(4):  # 3 failures open each breaker
            chat(gateway, "alldown")
        times = []
        for _ in range(20):
            status, headers, body, elapsed = chat(gateway, "alldown")
            assert status == 503, body
            assert orjson.loads(body)["error"]["code"] == "no_healthy_deployment"
            assert 1 <= int(headers["retry-after"]) <= 5
            times.append(elapsed)
        assert max(times) < 0.05, times
        _RESULTS["all_down_503_ms"] = {"p50": _r(pct(times, 0.5) * 1000), "max": _r(max(times) * 1000)}

    def test_hedging_cuts_p99_of_a_slow_tail(self, gateway, sims):
        result = run_hedging(gateway, sims)
        _RESULTS["hedging"] = result
        plain, hedged = result["without_hedging"], result["with_hedging"]
        assert plain["errors"] == 0 and hedged["errors"] == 0
        assert plain["p99_ms"] > 300  # the tail shows without hedging
        assert result["p99_ratio"] >= 2.0, result
        assert hedged["hedged_fraction"] <= 0.1 + 0.01, result


class TestReload:
    """Weights change without a restart: the file is re-read, every worker swaps atomically."""

    def test_admin_reload_reaches_every_worker(self, sims, tmp_path):
        a, b, _ = sims
        path = tmp_path / "gw.toml"

        def write(wa: float, wb: float) -> None:
            path.write_text(_group("w", [_deployment("w-a", "openai", a, wa), _deployment("w-b", "anthropic", b, wb)]))

        write(1, 0)
        with running_gateway({"GATEWAY_CACHE": "off", "GATEWAY_CONFIG": str(path)}, workers=2) as gw:
            assert {chat(gw, "w")[1]["x-gateway-deployment"] for _ in range(20)} == {"w-a"}
            write(0, 1)
            status, _, body, _ = call(gw.url + "/admin/reload", {}, headers=AUTH)
            assert status == 403
            status, _, body, _ = call(gw.url + "/admin/reload", {}, headers=ADMIN)
            assert status == 200, body
            assert orjson.loads(body)["workers_signalled"] == 1
            time.sleep(0.3)
            assert {chat(gw, "w")[1]["x-gateway-deployment"] for _ in range(40)} == {"w-b"}
            # A broken file changes nothing and says why.
            path.write_text('[models.w]\nretries = "many"\ndeployments = []\n')
            status, _, body, _ = call(gw.url + "/admin/reload", {}, headers=ADMIN)
            assert status == 400 and b"models.w" in body
            assert chat(gw, "w")[1]["x-gateway-deployment"] == "w-b"

    @pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the workers through /proc")
    def test_sighup_reloads_a_worker(self, sims, tmp_path):
        a, b, _ = sims
        path = tmp_path / "gw.toml"
        path.write_text(_group("w", [_deployment("s-a", "openai", a, 1), _deployment("s-b", "anthropic", b, 0)]))
        with running_gateway({"GATEWAY_CACHE": "off", "GATEWAY_CONFIG": str(path)}) as gw:
            assert chat(gw, "w")[1]["x-gateway-deployment"] == "s-a"
            path.write_text(_group("w", [_deployment("s-a", "openai", a, 0), _deployment("s-b", "anthropic", b, 1)]))
            import gateway.reload as reload_mod  # the workers are the gateway process's children

            workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and reload_mod._ppid(p) == gw.proc.pid
                       and reload_mod._cmdline(p) == reload_mod._cmdline(gw.proc.pid)]
            assert workers
            for pid in workers:
                os.kill(pid, signal.SIGHUP)
            time.sleep(0.3)
            assert chat(gw, "w")[1]["x-gateway-deployment"] == "s-b"


# --- the report -----------------------------------------------------------------------------------------


def test_generate_failover_report(gateway, sims):
    """Writes reports/failover_report.md and .json from measured runs (re-using this session's if any)."""
    load = _RESULTS.get("load") or run_outages(gateway, sims)
    _RESULTS["load"] = load
    for s in sims:
        s.reset()
    hedging = _RESULTS.get("hedging") or run_hedging(gateway, sims)
    _RESULTS["hedging"] = hedging
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "pytest tests/test_provider_failover.py::test_generate_failover_report -v",
        "load": load,
        "hedging": hedging,
        "all_down_503_ms": _RESULTS.get("all_down_503_ms"),
    }
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "failover_report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    (REPORTS / "failover_report.md").write_text(render_markdown(report))
    for ph in load["phases"]:
        assert ph["during"]["errors"] == 0, ph["client_errors"]


def render_markdown(rep: dict) -> str:
    load, hedging = rep["load"], rep["hedging"]
    st = load["setup"]
    lines = [
        "# Provider failover report",
        "",
        f"Generated {rep['generated_at']} by `{rep['command']}`. Every figure below was measured in that run.",
        "",
        "## Setup",
        "",
        f"- {st['concurrency']} concurrent client requests in flight the whole time (a separate aiohttp/uvloop load process), "
        f"{load['throughput_rps']} req/s overall, {st['cpus']} CPUs shared by the client, the gateway "
        f"({st['gateway_workers']} worker) and three simulator processes; 1-minute load average at the end: "
        f"{st['load_average_1m_at_end']}.",
        f"- Model group: {st['group']}.",
        f"- Every provider answers in {st['provider_latency_ms']:.0f} ms + up to {st['provider_jitter_ms']:.0f} ms jitter; "
        f"errors take as long as answers.",
        f"- Options: {', '.join(f'{k} = {v}' for k, v in st['options'].items())}; "
        f"REQUEST_TIMEOUT_SECONDS = {st['request_timeout_seconds']:g}.",
        f"- Each outage lasts {st['outage_seconds']:g} s, preceded by a healthy baseline; then the primary comes back.",
        "",
        "## Results per outage",
        "",
        f"Windows — {load['windows']}. \"Before\" is the healthy primary's own latency as clients saw it "
        "(all three providers are set up alike).",
        "",
        "| outage | client errors during outage | detection (outage → breaker open) | first failed-over answer | "
        "caught in flight / failed over | added P50 / P95 / P99 during outage | added P99 once breaker open | "
        "breaker closed after recovery |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ph in load["phases"]:
        a, s = ph["added_ms"], ph["added_ms_after_breaker_open"]
        lines.append(
            f"| {ph['label']} | {ph['during']['errors']} of {ph['during']['requests']} "
            f"({ph['during']['error_rate']:.2%}) | {_s(ph['detection_seconds'])} | {_s(ph['first_failover_answer_seconds'])} | "
            f"{ph['requests_caught_in_flight']} / {ph['requests_failed_over']} ({(ph['share_failed_over'] or 0):.1%}) | "
            f"{_ms(a['p50'])} / {_ms(a['p95'])} / {_ms(a['p99'])} | {_ms(s['p99'])} | "
            f"{_s(ph['breaker_closed_after_recovery_seconds'])} |"
        )
    lines += ["", "## Latency before and during each outage (client side, ms)", "",
              "| outage | before P50 / P95 / P99 | during P50 / P95 / P99 | during, after breaker open P50 / P95 / P99 | max during |",
              "|---|---|---|---|---|"]
    for ph in load["phases"]:
        b, d, s = ph["before"], ph["during"], ph["during_after_breaker_open"]
        lines.append(
            f"| {ph['label']} | {b['p50_ms']} / {b['p95_ms']} / {b['p99_ms']} | {d['p50_ms']} / {d['p95_ms']} / {d['p99_ms']} | "
            f"{s['p50_ms']} / {s['p95_ms']} / {s['p99_ms']} | {d['max_ms']} |"
        )
    lines += ["", "## Breaker timeline (seconds from the start of each outage)", ""]
    for ph in load["phases"]:
        lines.append(f"**{ph['label']}**: " + "; ".join(
            f"{t['t_s']:+.3f} s {t['state']}" + (f" ({t['reason']})" if t["reason"] else "") for t in ph["breaker_timeline"]
        ))
        lines.append("")
    errors = [(ph["label"], ph["client_errors"]) for ph in load["phases"]]
    lines += ["## Errors seen by clients", ""]
    total = load["total"]
    lines.append(f"{total['errors']} of {total['requests']} requests over the whole run ({total['error_rate']:.3%}).")
    for label, errs in errors:
        if errs:
            lines.append(f"- {label}: {errs}")
    lines += ["", "## Hedging against a slow tail", ""]
    hs = hedging["setup"]
    w, h = hedging["without_hedging"], hedging["with_hedging"]
    lines += [
        f"{hs['group']}; provider A: {hs['provider_a']}; provider B: {hs['provider_b']}; "
        f"{hs['concurrency']} concurrent clients, {hs['seconds_each']:g} s each.",
        "",
        "| | requests | P50 | P95 | P99 | hedges sent |",
        "|---|---|---|---|---|---|",
        f"| without hedging | {w['requests']} | {w['p50_ms']} | {w['p95_ms']} | {w['p99_ms']} | – |",
        f"| with hedging | {h['requests']} | {h['p50_ms']} | {h['p95_ms']} | {h['p99_ms']} | {h['hedged']} ({h['hedged_fraction']:.1%}) |",
        "",
        f"P99 cut: {hedging['p99_ratio']}× lower with hedging.",
        "",
    ]
    if rep.get("all_down_503_ms"):
        d = rep["all_down_503_ms"]
        lines += [f"All deployments down: 503 + Retry-After in {d['p50']} ms (P50), {d['max']} ms at most.", ""]
    return "\n".join(lines)


def _s(x) -> str:
    return "–" if x is None else f"{x:.3f} s"


def _ms(x) -> str:
    return "–" if x is None else f"{x:+.1f} ms"
