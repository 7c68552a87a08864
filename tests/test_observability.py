"""Metrics, access log, dashboard queries and ``gateway doctor`` against one real 4-worker gateway.

One module-scoped gateway (and one real Prometheus scraping it) serves every
test here: a known mix of requests goes through it once, and each test checks
one view of that mix: the /metrics counts, the access log, what Prometheus
makes of the dashboard's queries, and the doctor's report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.pricing import DEFAULTS
from gateway.simulator import SimulatorProcess
from tests.harness import ADMIN_KEY, API_KEY, running_gateway, simulator_env, wait_ok
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "grafana" / "dashboards" / "ai-gateway-performance.json"
CHAT = "/v1/chat/completions"
MINI_PRICE = (1.0, 2.0)  # [pricing."gpt-4o-mini"] below: not the default, so the table is what counts
WORKERS = 4
LIMITED_KEY, LIMITED_NAME = "limited-key-789", "limited"  # [[keys]] below: a burst of 1 request, 1 a minute


def _config(sim: SimulatorProcess, dead: int, redis_prefix: str) -> str:
    dead_url = f"http://127.0.0.1:{dead}/v1"  # nothing listens: connection refused, a fast provider failure
    return f"""
[cache]
embedder = "hash"
redis_prefix = "{redis_prefix}"

[[keys]]
key = "{LIMITED_KEY}"
name = "{LIMITED_NAME}"
requests_per_minute = 1
burst = 1

[pricing."gpt-4o-mini"]
input = {MINI_PRICE[0]}
output = {MINI_PRICE[1]}

[models.flaky]
strategy = "priority"
deployments = [
  {{ name = "dead-openai", provider = "openai", model = "gpt-4.1", base_url = "{dead_url}", api_key = "sk-x" }},
  {{ name = "sim-anthropic", provider = "anthropic", model = "claude-3-5-haiku-latest", base_url = "{sim.base_url}", api_key = "sk-ant" }},
]

[models.down]
deployments = [
  {{ name = "down-openai", provider = "openai", model = "gpt-4.1", base_url = "{dead_url}", api_key = "sk-x" }},
]
"""


def _call(url: str, body: dict | None = None, key: str = API_KEY, timeout: float = 15.0):
    """(status, headers, raw body) of one request."""
    data = orjson.dumps(body) if body is not None else None
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _usage_of(raw: bytes, stream: bool) -> dict:
    if not stream:
        return orjson.loads(raw).get("usage") or {}
    usage = {}
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            chunk = orjson.loads(line[6:])
            usage = chunk.get("usage") or usage
    return usage


class Mix:
    """What the gateway was sent and what each answer said about itself (its own headers and usage)."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.cache: Counter[str] = Counter()
        self.failovers = 0
        self.failed_attempts = 0  # attempts on the dead deployments
        self.tokens: Counter[tuple[str, str, str]] = Counter()  # (provider, model, direction) from providers
        self.saved: Counter[str] = Counter()  # model -> USD the cached answers would have cost
        self.streams_from_provider = 0
        self.requests = 0
        self.rate_limited = 0  # 429 rate_limit_exceeded answers, as the client saw them

    def send(self, url: str, model: str, prompt: str, stream: bool = False, key: str = API_KEY) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        status, headers, raw = _call(url + CHAT, body, key)
        self.requests += 1
        self.statuses[status] += 1
        if status == 429:
            assert orjson.loads(raw)["error"]["code"] == "rate_limit_exceeded", raw
            self.rate_limited += 1
        x_cache = headers.get("x-cache")
        if x_cache:
            self.cache[x_cache] += 1
        if headers.get("x-gateway-failover"):
            self.failovers += 1
            self.failed_attempts += int(headers["x-gateway-attempts"]) - 1
        elif model == "down":
            self.failed_attempts += int(headers["x-gateway-attempts"])
            self.cache["miss"] += 1  # looked up (a miss) before routing; an error answer has no x-cache header
        if status != 200:
            return
        usage = _usage_of(raw, stream)
        p, c = usage["prompt_tokens"], usage["completion_tokens"]
        if x_cache in ("hit", "semantic-hit"):
            price = {"gpt-4o-mini": MINI_PRICE}.get(model)
            if price:
                self.saved[model] += (p * price[0] + c * price[1]) / 1e6
            return
        provider = headers["x-gateway-provider"]
        upstream_model = headers["x-gateway-deployment"].split(":", 1)[-1]
        if headers["x-gateway-deployment"] == "sim-anthropic":
            upstream_model = "claude-3-5-haiku-latest"
        self.tokens[(provider, upstream_model, "prompt")] += p
        self.tokens[(provider, upstream_model, "completion")] += c
        if stream:
            self.streams_from_provider += 1


def _warm_up(url: str, mix: Mix) -> None:
    """One request of each kind, before Prometheus's first scrape: a series born after the last
    scrape has no earlier sample, so rate() over it would say 0 however much traffic followed."""
    mix.send(url, "gpt-4o-mini", "warm-up")
    mix.send(url, "gpt-4o-mini", "warm-up stream", stream=True)
    mix.send(url, "flaky", "warm-up failover")
    mix.send(url, "down", "warm-up down")
    mix.send(url, "gpt-4o-mini", "warm-up", key="wrong-key")
    mix.send(url, "no-such-model-anywhere", "warm-up")
    for i in range(2):  # the limited key's one request, then a 429 (its series exists before the first scrape)
        mix.send(url, "gpt-4o-mini", f"warm-up limited {i}", key=LIMITED_KEY)


def _run_mix(url: str, mix: Mix) -> Mix:
    for i in range(6):
        mix.send(url, "gpt-4o-mini", f"unique question number {i} about metrics")
    for _ in range(10):
        mix.send(url, "gpt-4o-mini", "the one question everybody asks")
        time.sleep(0.02)  # let the store reach the cache before the next repeat
    mix.send(url, "gpt-4o-mini", "the one questions everybody asked")  # a paraphrase
    for i in range(3):
        mix.send(url, "gpt-4o-mini", f"stream me answer {i}", stream=True)
    for _ in range(4):
        mix.send(url, "gpt-4o-mini", "stream the popular answer", stream=True)
        time.sleep(0.02)
    for i in range(2):
        mix.send(url, "flaky", f"failover please {i}")
    mix.send(url, "down", "nobody is home")
    for _ in range(2):
        mix.send(url, "gpt-4o-mini", "who am I", key="wrong-key")
    for _ in range(2):
        mix.send(url, "no-such-model-anywhere", "hello")
    for i in range(4):  # its bucket (shared through Redis by the four workers) refills one a minute
        mix.send(url, "gpt-4o-mini", f"limited again {i}", key=LIMITED_KEY)
    return mix


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict, family: str, sample: str, **labels) -> float:
    """Sum of the samples named ``sample`` whose labels include ``labels``."""
    total = 0.0
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/plain")
        return r.read().decode()


# --- the shared gateway, Prometheus and mix -------------------------------------------------


def _prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("the prometheus server is not installed (.ci/run installs Debian's prometheus package)")
    return path


class Prometheus:
    """A real Prometheus on a free loopback port, scraping the gateway every second."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "prometheus" / "rules" / "gateway.yml")],
            "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [target]}]}],
        }))
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [_prometheus_bin(), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        if not wait_ok(self.url + "/-/ready", self.proc, 20):
            self.stop()
            raise RuntimeError(f"prometheus did not become ready: {(workdir / 'prometheus.log').read_text()[-2000:]}")

    def query(self, expr: str) -> dict:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return orjson.loads(r.read())
        except urllib.error.HTTPError as e:
            return orjson.loads(e.read())

    def wait_scraped(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.query('up{job="gateway"} == 1')["data"]["result"]:
            assert time.monotonic() < deadline, "prometheus never scraped the gateway"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def stack(redis_url):
    """(gateway, mix, access log path, Prometheus or None) after the mix went through."""
    workdir = Path(tempfile.mkdtemp(prefix="observe-"))
    config = workdir / "gateway.toml"
    access = workdir / "access.log"
    try:
        with SimulatorProcess() as sim:
            config.write_text(_config(sim, free_port(), f"gwtest:{uuid.uuid4().hex[:10]}:"))
            env = simulator_env(sim.base_url) | {
                "REDIS_URL": redis_url,
                # Limits on, the test key's far above the mix; the [[keys]] entry's tiny limit refuses.
                "RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_REQUESTS_PER_MINUTE": "100000", "RATE_LIMIT_BURST": "10000",
                "GATEWAY_CONFIG": str(config), "LOG_LEVEL": "INFO", "GATEWAY_ACCESS_LOG": str(access),
            }
            with running_gateway(env, workers=WORKERS) as gw:
                prom = Prometheus(f"127.0.0.1:{gw.port}", workdir) if shutil.which("prometheus") else None
                try:
                    _wait_for_workers(gw.url)
                    mix = Mix()
                    _warm_up(gw.url, mix)
                    if prom is not None:
                        prom.wait_scraped()  # a sample before the mix, so the rates show it
                    _run_mix(gw.url, mix)
                    time.sleep(1.5)  # each worker flushes its buffered request metrics every second
                    yield gw, mix, access, prom
                finally:
                    if prom is not None:
                        prom.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _worker_pids(text: str) -> set[str]:
    fams = _families(text)
    family = fams.get("gateway_process_resident_memory_bytes")
    return {s.labels["pid"] for s in family.samples} if family else set()


def _wait_for_workers(url: str, timeout: float = 20.0) -> None:
    """Every worker has sampled its gauges once (each does at start-up), so all four are serving."""
    deadline = time.monotonic() + timeout
    while len(_worker_pids(_scrape(url))) < WORKERS:
        assert time.monotonic() < deadline, "not every worker reported its gauges"
        time.sleep(0.2)


# --- /metrics --------------------------------------------------------------------------------


def test_scrape_adds_up_over_four_workers(stack):
    gw, mix, _, _ = stack
    fams = _families(_scrape(gw.url))

    # The spec's metrics, each with its type.
    types = {"http_request_duration_seconds": "histogram", "http_requests": "counter", "cache_hits": "counter",
             "cache_requests": "counter", "websocket_connections_active": "gauge"}
    assert {name: fams[name].type for name in types} == types
    assert [s.value for s in fams["websocket_connections_active"].samples] == [0.0]  # summed: one series

    # Every status the clients saw, counted once, whichever worker served it.
    by_status = {int(s.labels["status"]): s.value for s in fams["http_requests"].samples
                 if s.labels["route"] == CHAT and s.name == "http_requests_total"}
    assert by_status == {k: float(v) for k, v in mix.statuses.items()}
    assert set(mix.statuses) == {200, 401, 404, 429, 502}
    assert mix.rate_limited >= 4  # of the limited key's 6 requests, at most 1 + a minute's refill admitted
    assert _value(fams, "http_request_duration_seconds", "http_request_duration_seconds_count", route=CHAT) == mix.requests

    # Cache: lookups are hits + misses; hits by tier.
    assert mix.cache["hit"] >= 2
    assert _value(fams, "cache_requests", "cache_requests_total") == mix.cache["hit"] + mix.cache["miss"] + mix.cache["semantic-hit"]
    assert _value(fams, "cache_hits", "cache_hits_total", tier="exact") == mix.cache["hit"]
    assert _value(fams, "cache_hits", "cache_hits_total", tier="semantic") == mix.cache["semantic-hit"]

    # Failover and the provider failures behind it, by the closed error-type set.
    assert mix.failovers == 3
    assert _value(fams, "gateway_failovers", "gateway_failovers_total", deployment="sim-anthropic") == 3
    assert _value(fams, "gateway_upstream_requests", "gateway_upstream_requests_total",
                  provider="openai", model="gpt-4.1", error_type="provider") == mix.failed_attempts >= 3
    errors = {s.labels["error_type"]: s.value for s in fams["gateway_request_errors"].samples
              if s.name == "gateway_request_errors_total"}
    assert errors == {"policy": 3.0 + mix.rate_limited, "client": 3.0, "provider": 2.0, "gateway": 0.0}
    # The limiter's refusals: by key name, exactly the 429s the clients saw, none for the other keys.
    limited = {s.labels["key"]: s.value for s in fams["gateway_rate_limit_rejections"].samples
               if s.name == "gateway_rate_limit_rejections_total"}
    assert limited == {LIMITED_NAME: float(mix.rate_limited)}
    assert by_status[429] == mix.rate_limited

    # Tokens as the providers reported them; streams' first token.
    for (provider, model, direction), n in mix.tokens.items():
        assert _value(fams, "gateway_tokens", "gateway_tokens_total",
                      provider=provider, model=model, direction=direction) == n, (provider, model, direction)
    assert _value(fams, "gateway_time_to_first_token_seconds", "gateway_time_to_first_token_seconds_count",
                  provider="openai") == mix.streams_from_provider >= 4

    # Cost: the config's price for gpt-4o-mini, the default table's for the failover's Anthropic model.
    mini = (mix.tokens[("openai", "gpt-4o-mini", "prompt")] * MINI_PRICE[0]
            + mix.tokens[("openai", "gpt-4o-mini", "completion")] * MINI_PRICE[1]) / 1e6
    assert mini > 0
    assert _value(fams, "gateway_cost_usd", "gateway_cost_usd_total", model="gpt-4o-mini") == pytest.approx(mini, rel=1e-9)
    haiku = DEFAULTS["claude-3-5-haiku-latest"]
    expected = haiku.cost(mix.tokens[("anthropic", "claude-3-5-haiku-latest", "prompt")],
                          mix.tokens[("anthropic", "claude-3-5-haiku-latest", "completion")])
    assert _value(fams, "gateway_cost_usd", "gateway_cost_usd_total", model="claude-3-5-haiku-latest") == pytest.approx(expected, rel=1e-9)
    assert _value(fams, "gateway_cost_saved_usd", "gateway_cost_saved_usd_total", model="gpt-4o-mini") == pytest.approx(
        mix.saved["gpt-4o-mini"], rel=1e-9)

    # Per-worker gauges keep their pid; the live ones of all four workers are there.
    assert len(_worker_pids(_scrape(gw.url))) == WORKERS
    # No raw path, request id or secret as a label value.
    routes = {s.labels["route"] for s in fams["http_requests"].samples}
    assert routes <= {CHAT, "/health", "/metrics"}
    keys = {s.labels["key"] for s in fams["gateway_tokens"].samples}
    assert API_KEY not in keys


def test_access_log_has_one_json_line_per_request(stack):
    gw, mix, access, _ = stack
    deadline = time.monotonic() + 5
    while True:
        lines = [orjson.loads(x) for x in access.read_bytes().splitlines()] if access.exists() else []
        chat = [x for x in lines if x["route"] == CHAT]
        if len(chat) >= mix.requests or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # written by each worker's writer thread every 50 ms
    assert Counter(x["status"] for x in chat) == mix.statuses
    assert len({x["request_id"] for x in chat}) == mix.requests
    failover = [x for x in chat if x.get("failover")]
    assert len(failover) == 3 and all(x["deployment"] == "sim-anthropic" and x["cost_usd"] > 0 for x in failover)
    hits = [x for x in chat if x.get("cache") == "hit"]
    assert hits and all(x["cost_usd"] == 0 and x["saved_usd"] > 0 for x in hits)
    refused = [x for x in chat if x["status"] == 401]
    assert refused and all(x["error_type"] == "policy" and "key" not in x for x in refused)
    assert all(API_KEY not in json.dumps(x) for x in lines)


# --- the dashboard through a real Prometheus -----------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    dash = orjson.loads(DASHBOARD.read_bytes())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def test_dashboard_has_the_spec_panels():
    dash = orjson.loads(DASHBOARD.read_bytes())
    assert dash["title"] == "AI Gateway Performance"
    titles = [p["title"] for p in dash["panels"]]
    assert titles[:4] == ["Request Latency", "Error Rate", "Cache Hit Rate", "WebSocket Connections"]
    assert dash["panels"][0]["targets"][0]["expr"] == (
        "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))")


def test_every_dashboard_query_parses_and_returns_data(stack):
    gw, mix, _, prom = stack
    if prom is None:
        _prometheus_bin()
    # Wait until Prometheus has scraped the whole mix, then one more scrape so rates span it.
    deadline = time.monotonic() + 20
    expr = f'sum(http_requests_total{{route="{CHAT}"}})'
    while True:
        result = prom.query(expr)["data"]["result"]
        if result and float(result[0]["value"][1]) == mix.requests:
            break
        assert time.monotonic() < deadline, f"prometheus never saw the mix: {result}"
        time.sleep(0.25)
    time.sleep(1.5)
    report = []
    failures = []
    for title, expr in dashboard_queries():
        answer = prom.query(expr)
        result = answer.get("data", {}).get("result", [])
        finite = sum(1 for r in result if r["value"][1] not in ("NaN", "+Inf", "-Inf"))
        report.append(f"{answer['status']:7} {len(result):3} series ({finite} finite)  {title}: {expr}")
        if answer["status"] != "success" or not result:
            failures.append((title, expr, answer))
    print("\n" + "\n".join(report))
    assert not failures
    # The recording and alerting rules loaded and evaluate without errors.
    with urllib.request.urlopen(prom.url + "/api/v1/rules", timeout=10) as r:
        groups = orjson.loads(r.read())["data"]["groups"]
    rules = [rule for g in groups for rule in g["rules"]]
    assert len(rules) == 19 and all(rule["health"] in ("ok", "unknown") for rule in rules), rules


# --- gateway doctor --------------------------------------------------------------------------


def test_doctor_walks_the_troubleshooting_guide(stack):
    gw, _, _, _ = stack
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "--url", gw.url, "--key", ADMIN_KEY],
        capture_output=True, text=True, timeout=30,
    )
    text = out.stdout
    for section in ("High Latency", "High Error Rate", "Low Cache Hit Rate", "WebSocket Issues"):
        assert section in text, text
    print(text)
    verdicts = {line[6:].split(":", 1)[0]: line[:5].strip() for line in text.splitlines()
                if line[:5].strip() in ("ok", "warn", "FAIL", "info")}
    assert verdicts["gateway reachable"] == "ok"
    # The dead deployments' model fails every call; the simulator's does not; 2 of ~40 chat answers were 502s.
    assert verdicts["1. provider status openai gpt-4.1"] == "FAIL"
    assert verdicts["1. provider status openai gpt-4o-mini"] == "ok"
    assert verdicts["5xx rate since start (SLO < 0.5 %)"] == "FAIL"
    assert verdicts["3. authentication"] in ("warn", "FAIL")  # 3 wrong keys
    assert verdicts["2. cache operational"] == "ok"  # Redis up
    assert verdicts["3. database (Redis) latency"] in ("ok", "warn")
    assert verdicts["cache hit rate since start (target > 30 %)"] == "ok"
    assert out.returncode == 1  # a FAIL: exit status 1
