"""The metrics' parts in process: buffers against prometheus-client's own arithmetic, bounded
labels, the price table, the access log's writer, and GATEWAY_METRICS=off."""

from __future__ import annotations

import random
import time

import orjson
import pytest
from prometheus_client import CollectorRegistry, Histogram

from gateway import accesslog, metrics
from gateway.config import ConfigError, load_settings
from gateway.http.asgi import Gateway
from gateway.pipeline.outcome import Outcome
from gateway.pricing import DEFAULTS, Price, Prices
from tests.harness import API_KEY


def test_buffered_histogram_matches_the_librarys_own_observe():
    reg = CollectorRegistry()
    direct = Histogram("direct_seconds", "d", buckets=metrics.LATENCY_BUCKETS, registry=reg)
    buffered = Histogram("buffered_seconds", "b", buckets=metrics.LATENCY_BUCKETS, registry=reg)
    buf = metrics._Observe(buffered)
    rng = random.Random(7)
    values = [rng.choice(metrics.LATENCY_BUCKETS[:-1]) for _ in range(50)]  # exactly on bounds: "le"
    values += [rng.uniform(0, 40) for _ in range(500)]
    for v in values:
        direct.observe(v)
        buf.observe(v)
    assert reg.get_sample_value("buffered_seconds_count") == 0  # nothing written before the flush
    buf.flush()
    buf.flush()  # a second flush adds nothing
    for le in [*map(str, metrics.LATENCY_BUCKETS), "+Inf"]:
        assert reg.get_sample_value("buffered_seconds_bucket", {"le": le}) == reg.get_sample_value(
            "direct_seconds_bucket", {"le": le}), le
    assert reg.get_sample_value("buffered_seconds_sum") == pytest.approx(reg.get_sample_value("direct_seconds_sum"))


def test_label_values_are_bounded():
    b = metrics.Bounded(cap=2)
    assert [b("a"), b("b"), b("c"), b("a"), b(None)] == ["a", "b", "other", "a", "none"]


def test_price_table_defaults_overrides_and_errors():
    assert Price(1.0, 2.0, 0.5).cost(1000, 500, cached=400) == pytest.approx((600 * 1.0 + 400 * 0.5 + 500 * 2.0) / 1e6)
    prices = Prices.from_table({"my-model": {"input": 3, "output": 4, "cached_input": 1}})
    assert prices.known("my-model") == Price(3.0, 4.0, 1.0) and prices.known("gpt-4o") == DEFAULTS["gpt-4o"]
    assert prices.known("no-such-model") is None  # metrics count it as unpriced; budgets reserve the default
    for bad, message in (({"m": {"input": 1}}, "pricing.m"), ({"m": {"input": -1, "output": 1}}, "pricing.m.input"),
                         ({"m": {"input": 1, "output": 1, "per": 2}}, "pricing.m")):
        with pytest.raises(ConfigError, match=message):
            Prices.from_table(bad)


def test_a_bad_price_stops_the_config_with_its_name(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[pricing."gpt-4o"]\ninput = "cheap"\noutput = 1\n')
    with pytest.raises(ConfigError, match="pricing.gpt-4o.input"):
        load_settings({"GATEWAY_CONFIG": str(path)})


def _outcome(**kw) -> Outcome:
    o = Outcome("req_1", time.perf_counter() - 0.01, route="/v1/chat/completions", **kw)
    o.finished = time.perf_counter()
    return o


async def test_access_log_writes_lines_off_the_loop_and_counts_drops(tmp_path):
    path = tmp_path / "access.log"
    log = accesslog.AccessLog(str(path), Prices(), flush_lines=2)
    log.on_finish(None, _outcome(status=401, error_type="policy", error_code="invalid_api_key"))
    log.on_finish(None, _outcome(status=200, key_name="team-a", model="gpt-4o"))
    log.close()
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert [x["status"] for x in lines] == [401, 200]
    assert lines[0]["error_type"] == "policy" and lines[1]["key"] == "team-a"
    # A writer that fell behind: lines are dropped and counted, never queued without bound.
    full = accesslog.AccessLog(str(path), Prices(), max_pending=0)
    full.on_finish(None, _outcome(status=200))
    full.flush()
    assert full.dropped == 1
    full.close()


async def test_metrics_off_means_no_listener_and_no_route():
    gw = Gateway(load_settings({"GATEWAY_API_KEYS": API_KEY, "GATEWAY_METRICS": "off", "GATEWAY_CACHE": "off", "GATEWAY_ACCESS_LOG": "off"}))
    assert gw.sampler is None
    assert not any(type(getattr(f, "__self__", None)).__module__ == "gateway.metrics" for f in gw.finish.listeners)
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": [], "query_string": b"",
             "root_path": "", "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1)}
    await gw(scope, receive, send)
    await gw.router.close()
    assert sent[0]["status"] == 404
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "metrics_disabled"
