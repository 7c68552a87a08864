"""Settings validation: every bad value stops the process with one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import ConfigError, load_settings
from tests.harness import clean_env

BAD_ENV = [
    ("SEMANTIC_THRESHOLD", "0", "SEMANTIC_THRESHOLD"),
    ("SEMANTIC_THRESHOLD", "1.5", "SEMANTIC_THRESHOLD"),
    ("SEMANTIC_THRESHOLD", "high", "SEMANTIC_THRESHOLD"),
    ("WORKER_PROCESSES", "0", "WORKER_PROCESSES"),
    ("WORKER_PROCESSES", "two", "WORKER_PROCESSES"),
    ("WORKER_CONNECTIONS", "-5", "WORKER_CONNECTIONS"),
    ("GATEWAY_BUDGET_RECONCILE_SECONDS", "-1", "GATEWAY_BUDGET_RECONCILE_SECONDS"),
    ("GATEWAY_LEDGER_FLUSH_SECONDS", "0", "GATEWAY_LEDGER_FLUSH_SECONDS"),
    ("GATEWAY_LEDGER_FLUSH_SECONDS", "soon", "GATEWAY_LEDGER_FLUSH_SECONDS"),
    ("GATEWAY_LEDGER_BATCH_ROWS", "0", "GATEWAY_LEDGER_BATCH_ROWS"),
    ("GATEWAY_BUDGET_RECONCILE_SECONDS", "hourly", "GATEWAY_BUDGET_RECONCILE_SECONDS"),
    ("REQUEST_TIMEOUT_SECONDS", "0", "REQUEST_TIMEOUT_SECONDS"),
    ("REQUEST_TIMEOUT_SECONDS", "nan", "REQUEST_TIMEOUT_SECONDS"),
    ("KEEPALIVE_TIMEOUT", "1.5", "KEEPALIVE_TIMEOUT"),
    ("CACHE_TTL_SECONDS", "-1", "CACHE_TTL_SECONDS"),
    ("RATE_LIMIT_REQUESTS_PER_MINUTE", "0", "RATE_LIMIT_REQUESTS_PER_MINUTE"),
    ("RATE_LIMIT_BURST", "lots", "RATE_LIMIT_BURST"),
    ("DATABASE_POOL_SIZE", "0", "DATABASE_POOL_SIZE"),
    ("DATABASE_MAX_OVERFLOW", "-1", "DATABASE_MAX_OVERFLOW"),
    ("DATABASE_POOL_TIMEOUT", "x", "DATABASE_POOL_TIMEOUT"),
    ("API_URL", "localhost:8000", "API_URL"),
    ("API_URL", "http://localhost:99999", "API_URL"),
    ("REDIS_URL", "http://localhost:6379", "REDIS_URL"),
    ("GATEWAY_REDIS_PREFIX", "two words:", "GATEWAY_REDIS_PREFIX"),
    ("GATEWAY_REDIS_PREFIX", "{tag}:", "GATEWAY_REDIS_PREFIX"),
    ("GATEWAY_REDIS_PREFIX", "x" * 65, "GATEWAY_REDIS_PREFIX"),
    ("ENVIRONMENT", "moon", "ENVIRONMENT"),
    ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
    ("OPENAI_BASE_URL", "not a url", "OPENAI_BASE_URL"),
    ("GATEWAY_MAX_BODY_BYTES", "10", "GATEWAY_MAX_BODY_BYTES"),
    ("GATEWAY_TRANSPORT", "curl", "GATEWAY_TRANSPORT"),
    ("GATEWAY_CONFIG", "/nonexistent/gateway.toml", "GATEWAY_CONFIG"),
]


@pytest.mark.parametrize("name,value,named", BAD_ENV)
def test_bad_env_value_raises_naming_it(name: str, value: str, named: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({name: value})
    assert str(exc.value).startswith(named + ":")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "name,value",
    [("SEMANTIC_THRESHOLD", "2"), ("WORKER_PROCESSES", "0"), ("API_URL", "nope"), ("REDIS_URL", "ftp://x"),
     ("GATEWAY_BUDGET_RECONCILE_SECONDS", "-1")],
)
@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_cli_exits_2_with_one_line(name: str, value: str, command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", command],
        env=clean_env(**{name: value}), capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert name in lines[0]
    assert "Traceback" not in proc.stderr


def test_defaults_match_the_spec() -> None:
    s = load_settings({})
    assert (s.host, s.port) == ("localhost", 8000)
    assert s.cache_ttl_seconds == 3600
    assert s.semantic_threshold == 0.85
    assert s.request_timeout_seconds == 30
    assert s.keepalive_timeout == 65
    assert s.rate_limit_requests_per_minute == 60 and s.rate_limit_burst == 100
    assert s.redis_url is None  # the embedded default runs without Redis
    assert list(s.api_keys) == ["test-key-123"]
    assert s.configured_providers == []


def test_env_values_are_parsed() -> None:
    s = load_settings(
        {
            "API_URL": "http://0.0.0.0:9100",
            "SEMANTIC_THRESHOLD": "0.9",
            "WORKER_PROCESSES": "4",
            "REDIS_URL": "redis://127.0.0.1:6379/2",
            "LOG_LEVEL": "debug",
            "OPENAI_API_KEY": "sk-x",
            "GATEWAY_API_KEYS": "k1, k2",
        }
    )
    assert (s.host, s.port) == ("0.0.0.0", 9100)
    assert s.semantic_threshold == 0.9 and s.worker_processes == 4
    assert s.redis_url == "redis://127.0.0.1:6379/2"
    assert s.log_level == "DEBUG"
    assert s.configured_providers == ["openai"]
    assert set(s.api_keys) == {"k1", "k2"}


def test_the_redis_prefix_reaches_the_cache_unless_the_cache_sets_its_own(tmp_path) -> None:
    assert load_settings({}).redis_prefix == "gw:" and load_settings({}).cache_config.redis_prefix == "gw:cache:"
    s = load_settings({"GATEWAY_REDIS_PREFIX": "blue:"})
    assert s.redis_prefix == "blue:" and s.cache_config.redis_prefix == "blue:cache:"
    path = tmp_path / "g.toml"
    path.write_text('[gateway]\ngateway_redis_prefix = "green:"\n[cache]\nredis_prefix = "own:"\n')
    s = load_settings({"GATEWAY_CONFIG": str(path)})
    assert s.redis_prefix == "green:" and s.cache_config.redis_prefix == "own:"


def test_toml_file_and_env_override(tmp_path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        """
[gateway]
request_timeout_seconds = 12
semantic_threshold = 0.8

[providers.anthropic]
api_key = "sk-ant-file"
base_url = "http://127.0.0.1:9999"

[aliases]
fast = "claude-3-5-haiku-latest"

[[keys]]
key = "team-a-key"
name = "team-a"
requests_per_minute = 600
models = ["fast"]

[models."smart"]
strategy = "priority"
deployments = [
  { provider = "anthropic", model = "claude-sonnet-4-5" },
  { provider = "anthropic", model = "claude-3-5-haiku-latest", weight = 2 },
]
"""
    )
    s = load_settings({"GATEWAY_CONFIG": str(path), "SEMANTIC_THRESHOLD": "0.95"})
    assert s.request_timeout_seconds == 12
    assert s.semantic_threshold == 0.95  # env wins over the file
    assert s.providers["anthropic"].base_url == "http://127.0.0.1:9999"
    assert s.aliases == {"fast": "claude-3-5-haiku-latest"}
    key = s.api_keys["team-a-key"]
    assert key.name == "team-a" and key.requests_per_minute == 600 and key.models == frozenset({"fast"})
    group = s.models["smart"]
    assert group.strategy == "priority"
    assert [d.weight for d in group.deployments] == [1.0, 2.0]
    assert group.deployments[0].api_key == "sk-ant-file"


@pytest.mark.parametrize(
    "toml,named",
    [
        ("[gateway]\nsemantic_threshold = 3\n", "gateway.semantic_threshold"),
        ("[gateway]\nno_such = 1\n", "gateway.no_such"),
        ("[nonsense]\n", "GATEWAY_CONFIG"),
        ("this is = = not toml", "GATEWAY_CONFIG"),
        ("[providers.azure]\napi_key='x'\n", "providers.azure"),
        ('[models.x]\ndeployments = [{ provider = "openai", model = "gpt-4o" }]\n', "models.x.deployments[0]"),
        ('[models.x]\ndeployments = []\n', "models.x.deployments"),
        ('[models.x]\nstrategy = "random"\ndeployments = [{ provider = "openai", model = "m", api_key = "k" }]\n', "models.x.strategy"),
        ('[[keys]]\nname = "no key"\n', "keys[0].key"),
        ('[[keys]]\nkey = "k"\nrequests_per_minute = "many"\n', "keys[0].requests_per_minute"),
    ],
)
def test_bad_toml_names_the_setting(tmp_path, toml: str, named: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_settings({"GATEWAY_CONFIG": str(path)})
    assert str(exc.value).startswith(named), str(exc.value)


def test_pricing_defaults_prefixes_and_toml_overrides(tmp_path):
    from gateway.pricing import DEFAULT, Prices

    p = Prices()
    assert p.cost("gpt-4o", 1_000_000, 1_000_000) == 12.5
    assert p.price("gpt-4o-mini-2024-07-18") == p.price("gpt-4o-mini")  # the longest entry it starts with
    assert p.price("some-new-model") == DEFAULT  # unknown: the dearest known price, so budgets refuse early
    path = tmp_path / "gw.toml"
    path.write_text('[pricing]\n"gpt-4o" = { input = 1, output = 2 }\ndefault = { input = 0.5, output = 0.5 }\n')
    s = load_settings({"GATEWAY_CONFIG": str(path)})
    assert s.prices.cost("gpt-4o", 1_000_000, 1_000_000) == 3 and s.prices.price("unknown")[:2] == (0.5, 0.5)
    path.write_text('[pricing]\n"gpt-4o" = { input = -1, output = 2 }\n')
    with pytest.raises(ConfigError, match="pricing.gpt-4o.input"):
        load_settings({"GATEWAY_CONFIG": str(path)})


@pytest.mark.parametrize("raw, want", [
    ("postgresql://u:p@db:5432/gw", "postgresql+asyncpg://u:p@db:5432/gw"),
    ("sqlite:///data/gw.db", "sqlite+aiosqlite:///data/gw.db"),
    ("off", None),
])
def test_database_url_gets_its_async_driver(raw, want):
    assert load_settings({"DATABASE_URL": raw}).database_url == want


@pytest.mark.parametrize("raw", ["mysql://x/y", "sqlite://", "postgresql:///nohost"])
def test_a_bad_database_url_is_one_line(raw):
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_settings({"DATABASE_URL": raw})


def test_serve_exits_2_with_one_line_on_an_unusable_sqlite_file(tmp_path) -> None:
    # Any file SQLite refuses (here: not a database; also a deleted file's leftover -wal/-shm, "disk I/O
    # error") stops `gateway serve` with one line naming it, not a traceback from inside the migration.
    db = tmp_path / "gateway.db"
    db.write_bytes(b"this is not an SQLite file" * 200)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env=clean_env(DATABASE_URL=f"sqlite:///{db}"), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL" in lines[0] and str(db) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
