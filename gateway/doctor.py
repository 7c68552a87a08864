"""``gateway doctor``: the spec's troubleshooting guide, walked against a running gateway.

Each check prints its live value and a verdict (ok, warn, FAIL, or info when
there is nothing to judge). Figures come from the gateway's own endpoints:
``/metrics`` (summed over every worker, scraped twice ``--interval`` apart for
rates and trends), ``/ready``, ``/v1/providers`` and ``/admin/cache``. Exit
status 1 when any check fails, so it can gate a deploy or a page.
"""

from __future__ import annotations

import math
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

import orjson
from prometheus_client.parser import text_string_to_metric_families

CHAT = "/v1/chat/completions"
OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"


@dataclass
class Scrape:
    """One /metrics exposition as {sample name: [(labels, value)]}."""

    samples: dict[str, list[tuple[dict, float]]] = field(default_factory=lambda: defaultdict(list))
    at: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Scrape":
        s = cls(at=time.monotonic())
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                s.samples[sample.name].append((sample.labels, sample.value))
        return s

    def total(self, name: str, **labels) -> float:
        return sum(v for lab, v in self.samples.get(name, ()) if all(lab.get(k) == x for k, x in labels.items()))

    def by(self, name: str, *keys: str, **labels) -> dict[tuple, float]:
        out: dict[tuple, float] = defaultdict(float)
        for lab, v in self.samples.get(name, ()):
            if all(lab.get(k) == x for k, x in labels.items()):
                out[tuple(lab.get(k, "") for k in keys)] += v
        return out

    def quantile(self, q: float, histogram: str, **labels) -> float | None:
        """A quantile since start, from the cumulative buckets (linear within a bucket, as PromQL does)."""
        buckets = sorted((float(le[0]), n) for le, n in self.by(histogram + "_bucket", "le", **labels).items())
        if not buckets or buckets[-1][1] == 0:
            return None
        rank = q * buckets[-1][1]
        lower, below = 0.0, 0.0
        for le, n in buckets:
            if n >= rank:
                if math.isinf(le):
                    return lower
                return lower + (le - lower) * ((rank - below) / (n - below) if n > below else 0.0)
            lower, below = le, n
        return None


class Report:
    def __init__(self, out=sys.stdout) -> None:
        self.out = out
        self.failed = 0

    def section(self, title: str) -> None:
        print(f"\n== {title}", file=self.out)

    def check(self, verdict: str, name: str, value: str) -> None:
        if verdict == FAIL:
            self.failed += 1
        print(f"{verdict:5} {name}: {value}", file=self.out)


def _grade(value: float, warn: float, fail: float, higher_is_worse: bool = True) -> str:
    if higher_is_worse:
        return FAIL if value > fail else WARN if value > warn else OK
    return FAIL if value < fail else WARN if value < warn else OK


def _get(url: str, key: str | None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _ms(seconds: float | None) -> str:
    return "no samples" if seconds is None else f"{seconds * 1000:.1f} ms"


def _pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def run(url: str, key: str | None, interval: float, out=sys.stdout) -> int:
    r = Report(out)
    url = url.rstrip("/")
    try:
        status, _ = _get(url + "/health", None)
    except OSError as exc:
        r.check(FAIL, "gateway reachable", f"{url}: {exc}")
        return 1
    r.check(OK if status == 200 else FAIL, "gateway reachable", f"{url}/health answered {status}")
    status, body = _get(url + "/metrics", None)
    if status != 200:
        r.check(FAIL, "metrics", f"/metrics answered {status} (GATEWAY_METRICS=off?); most checks need it")
        return 1
    first = Scrape.parse(body.decode())
    time.sleep(interval)
    m = Scrape.parse(_get(url + "/metrics", None)[1].decode())
    elapsed = m.at - first.at
    ready = orjson.loads(_get(url + "/ready", None)[1])
    status, raw = _get(url + "/admin/cache", key)
    cache = orjson.loads(raw) if status == 200 else None

    r.section("High Latency")
    p95 = m.quantile(0.95, "http_request_duration_seconds", route=CHAT)
    r.check(_grade(p95, 0.2, 0.3) if p95 is not None else INFO, "chat P95 since start (target < 200 ms)", _ms(p95))
    for (provider, model), n in sorted(m.by("gateway_upstream_request_duration_seconds_count", "provider", "model").items()):
        if n:
            q = m.quantile(0.95, "gateway_upstream_request_duration_seconds", provider=provider, model=model)
            r.check(INFO, f"1. provider response time {provider} {model}", f"P95 {_ms(q)} over {int(n)} calls")
    overhead = m.quantile(0.99, "gateway_overhead_seconds")
    r.check(_grade(overhead, 0.01, 0.05) if overhead is not None else INFO, "gateway overhead P99 (upstream excluded)", _ms(overhead))
    if cache is None:
        r.check(WARN if status in (401, 403) else INFO, "2. cache operational",
                "needs an admin key (--key)" if status in (401, 403) else f"/admin/cache answered {status}")
    elif not cache.get("enabled"):
        r.check(WARN, "2. cache operational", "the cache is off (GATEWAY_CACHE=off)")
    else:
        redis = cache["redis"]
        verdict = OK if not redis["configured"] or redis["up"] else WARN
        r.check(verdict, "2. cache operational",
                f"{cache['entries']} entries; Redis {'up' if redis['up'] else 'down' if redis['configured'] else 'not configured'}"
                f" ({redis['errors']} errors)")
    pings = m.total("gateway_redis_ping_seconds_count")
    if pings:
        mean = m.total("gateway_redis_ping_seconds_sum") / pings
        r.check(_grade(mean, 0.005, 0.05), "3. database (Redis) latency", f"mean PING {_ms(mean)} over {int(pings)} samples")
    else:
        r.check(INFO, "3. database (Redis) latency", "no Redis configured (REDIS_URL); the gateway has no SQL database yet")
    cpu = _per_pid_rate(first, m, "gateway_process_cpu_seconds", elapsed)
    if cpu:
        busiest = max(cpu.values())
        r.check(_grade(busiest, 0.8, 0.95), "4. resource throttling (CPU per worker)",
                ", ".join(f"pid {p} {v * 100:.0f} %" for p, v in sorted(cpu.items())))
    limit = m.total("gateway_container_memory_limit_bytes")
    if limit:
        ratio = m.total("gateway_container_memory_bytes") / limit
        r.check(_grade(ratio, 0.8, 0.95), "4. container memory", f"{_pct(ratio)} of {limit / 2**20:.0f} MiB")

    r.section("High Error Rate")
    chat = m.by("http_requests_total", "status", route=CHAT)
    total = sum(chat.values())
    errors = sum(v for (s,), v in chat.items() if s.startswith("5"))
    if total:
        r.check(_grade(errors / total, 0.005, 0.01), "5xx rate since start (SLO < 0.5 %)", f"{_pct(errors / total)} of {int(total)}")
    outcomes = m.by("gateway_upstream_requests_total", "provider", "model", "error_type")
    calls: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for (provider, model, kind), n in outcomes.items():
        calls[(provider, model)][0] += n
        if kind == "provider":
            calls[(provider, model)][1] += n
    for (provider, model), (n, bad) in sorted(calls.items()):
        if n:
            r.check(_grade(bad / n, 0.05, 0.5), f"1. provider status {provider} {model}", f"{_pct(bad / n)} of {int(n)} calls failed")
    limited = m.total("gateway_rate_limit_rejections_total")
    r.check(_grade(limited / total, 0.01, 0.1) if total else INFO, "2. rate limiting", f"{int(limited)} requests refused by a limit")
    auth = sum(v for (s,), v in chat.items() if s in ("401", "403"))
    r.check(_grade(auth / total, 0.01, 0.1) if total else INFO, "3. authentication", f"{int(auth)} requests with a missing or wrong key")
    worst: dict[str, float] = {}
    for (d, _pid), v in m.by("gateway_breaker_state", "deployment", "pid").items():
        worst[d] = max(worst.get(d, 0.0), v)
    for d, v in sorted(worst.items()):
        r.check(FAIL if v >= 2 else WARN if v >= 1 else OK, f"4. circuit breaker {d}",
                {0: "closed", 1: "half-open"}.get(int(v), "open") + " (worst worker)")
    if not worst:
        r.check(INFO, "4. circuit breakers", "no deployment used yet")

    r.section("Low Cache Hit Rate")
    lookups = m.total("cache_requests_total")
    hits = m.total("cache_hits_total")
    if lookups:
        r.check(_grade(hits / lookups, 0.3, 0.2, higher_is_worse=False), "cache hit rate since start (target > 30 %)",
                f"{_pct(hits / lookups)} of {int(lookups)} lookups (semantic {int(m.total('cache_hits_total', tier='semantic'))})")
    if cache and cache.get("enabled"):
        t = cache["semantic_threshold"]
        r.check(WARN if not cache["semantic"] or t > 0.95 else OK, "1. semantic threshold",
                f"{t} (semantic tier {'on' if cache['semantic'] else 'off'})")
        if lookups:
            r.check(INFO, "2. prompt diversity", f"{cache['entries']} entries for {int(lookups)} lookups ({cache['misses']} misses here)")
        verifier = cache.get("verifier")
        if verifier is None:
            r.check(INFO, "4. embedding service", f"none ({cache.get('embedder') or 'semantic tier off'})")
        else:
            r.check(OK if verifier["ready"] else FAIL if verifier.get("error") else WARN, "4. embedding service",
                    f"{verifier['name']}: {'ready' if verifier['ready'] else 'not ready'}"
                    + (f", error {verifier['error']}" if verifier.get("error") else "")
                    + f"; {cache['verify_shed']} shed")
    used, cap = m.total("gateway_redis_memory_bytes"), m.total("gateway_redis_maxmemory_bytes")
    if used:
        r.check(_grade(used / cap, 0.8, 0.95) if cap else INFO, "3. Redis memory",
                f"{used / 2**20:.1f} MiB" + (f" of {cap / 2**20:.0f} MiB" if cap else " (no maxmemory)"))
    elif ready.get("redis") != "not_configured":
        r.check(WARN, "3. Redis memory", f"Redis {ready.get('redis')}")

    r.section("WebSocket Issues")
    ws = m.total("websocket_connections_active")
    r.check(INFO, "open WebSocket connections", f"{int(ws)} (summed over workers)")
    fds, max_fds = m.by("gateway_process_open_fds", "pid"), m.total("gateway_process_max_fds")
    if fds and max_fds:
        top = max(fds.values())
        r.check(_grade(top / max_fds, 0.7, 0.9), "1. connection limits (FDs of the fullest worker)", f"{int(top)} of {int(max_fds)}")
    r.check(INFO, "2. keepalive settings", "KEEPALIVE_TIMEOUT and GATEWAY_STREAM_PING_SECONDS (see README); not exposed live")
    r.check(INFO, "3. load balancer", "not visible from the gateway: check its idle time-out exceeds the ping interval")
    rss0, rss1 = first.by("gateway_process_resident_memory_bytes", "pid"), m.by("gateway_process_resident_memory_bytes", "pid")
    growth = {p: (rss1[p] - rss0[p]) / elapsed * 60 for p in rss1 if p in rss0}
    if growth and elapsed > 0:
        fastest = max(growth.values())
        r.check(_grade(fastest / 2**20, 20, 100), f"4. memory trend over {elapsed:.1f} s",
                ", ".join(f"pid {p[0]} {rss1[p] / 2**20:.0f} MiB ({g / 2**20:+.1f} MiB/min)" for p, g in sorted(growth.items())))
    print(f"\n{r.failed} check(s) failed" if r.failed else "\nno check failed", file=out)
    return 1 if r.failed else 0


def _per_pid_rate(a: Scrape, b: Scrape, name: str, elapsed: float) -> dict[str, float]:
    before, after = a.by(name, "pid"), b.by(name, "pid")
    if elapsed <= 0:
        return {}
    return {p[0]: (after[p] - before[p]) / elapsed for p in after if p in before}
