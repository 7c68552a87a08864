"""Settings: read from the environment and the TOML file, validated once at start.

Every environment variable of the product spec is read here, plus the
gateway's own (``GATEWAY_*``, each provider's key and base URL, named in the
provider registry). An optional TOML file (``GATEWAY_CONFIG``) describes
models, providers, aliases and per-key settings; the environment overrides the
file. A bad value raises ``ConfigError`` whose message is one line naming the
setting; the CLI prints it and exits with 2.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import replace
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from gateway.auth import ApiKey
from gateway.config.types import ROUTE_OPTIONS, ConfigError, ModelGroup, ProviderSettings, RoutePolicy, Settings
from gateway.config.validate import boolean, choice, database_url, file, integer, number, redis_prefix, string, table, url
from gateway.providers.base import Deployment
from gateway.providers.registry import PROVIDERS as REGISTRY

PROVIDERS = tuple(REGISTRY)
DEFAULT_API_KEY = "test-key-123"  # the spec's load tests use it; only when no key is configured
ENVIRONMENTS = ("development", "staging", "production", "test")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TRANSPORTS = ("aiohttp", "httpx", "reqwest")
STRATEGIES = ("weighted", "latency", "priority")


# Environment variables: name -> (Settings field, parser). Documented in README.md.
_ENV: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "API_URL": ("api_url", url),
    "ENVIRONMENT": ("environment", lambda n, v: choice(n, v, ENVIRONMENTS)),
    "LOG_LEVEL": ("log_level", lambda n, v: choice(n, v, LOG_LEVELS, upper=True)),
    "WORKER_PROCESSES": ("worker_processes", lambda n, v: integer(n, v, 1, 256)),
    "WORKER_CONNECTIONS": ("worker_connections", lambda n, v: integer(n, v, 1, 1_000_000)),
    "REQUEST_TIMEOUT_SECONDS": ("request_timeout_seconds", lambda n, v: number(n, v, 0, 3600, lo_open=True)),
    "KEEPALIVE_TIMEOUT": ("keepalive_timeout", lambda n, v: integer(n, v, 1, 86_400)),
    "GATEWAY_MAX_BODY_BYTES": ("max_body_bytes", lambda n, v: integer(n, v, 1024, 1 << 30)),
    "GATEWAY_STREAM_PING_SECONDS": ("stream_ping_seconds", lambda n, v: number(n, v, 0, 3600, lo_open=True)),
    "GATEWAY_BODY_TIMEOUT_SECONDS": ("body_timeout_seconds", lambda n, v: number(n, v, 0, 3600, lo_open=True)),
    "GATEWAY_MAX_BODY_READS": ("max_body_reads", lambda n, v: integer(n, v, 0, 1_000_000)),
    "GATEWAY_MAX_UPSTREAM_BYTES": ("max_upstream_bytes", lambda n, v: integer(n, v, 1024, 1 << 31)),
    "GATEWAY_MAX_EVENT_BYTES": ("max_event_bytes", lambda n, v: integer(n, v, 1024, 1 << 30)),
    "GATEWAY_TRANSPORT": ("transport", lambda n, v: choice(n, v, TRANSPORTS)),
    "UPSTREAM_CA_BUNDLE": ("upstream_ca_bundle", lambda n, v: file(n, v)),
    "REDIS_URL": ("redis_url", lambda n, v: url(n, v, ("redis", "rediss", "unix"))),
    "GATEWAY_REDIS_PREFIX": ("redis_prefix", redis_prefix),
    "CACHE_TTL_SECONDS": ("cache_ttl_seconds", lambda n, v: integer(n, v, 1, 10 * 365 * 86_400)),
    "SEMANTIC_THRESHOLD": ("semantic_threshold", lambda n, v: number(n, v, 0, 1, lo_open=True)),
    "RATE_LIMIT_REQUESTS_PER_MINUTE": ("rate_limit_requests_per_minute", lambda n, v: integer(n, v, 1, 10**9)),
    "RATE_LIMIT_BURST": ("rate_limit_burst", lambda n, v: integer(n, v, 1, 10**9)),
    "DATABASE_URL": ("database_url", database_url),
    "GATEWAY_LEDGER_BUFFER_ROWS": ("ledger_buffer_rows", lambda n, v: integer(n, v, 100, 10**8)),
    "GATEWAY_LEDGER_BATCH_ROWS": ("ledger_batch_rows", lambda n, v: integer(n, v, 1, 100_000)),
    "GATEWAY_LEDGER_FLUSH_SECONDS": ("ledger_flush_seconds", lambda n, v: number(n, v, 0, 60, lo_open=True)),
    "GATEWAY_KEY_REFRESH_SECONDS": ("key_refresh_seconds", lambda n, v: number(n, v, 0, 3600, lo_open=True)),
    "GATEWAY_BUDGET_RECONCILE_SECONDS": ("budget_reconcile_seconds", lambda n, v: number(n, v, 0, 86_400)),
    "DATABASE_POOL_SIZE": ("database_pool_size", lambda n, v: integer(n, v, 1, 10_000)),
    "DATABASE_MAX_OVERFLOW": ("database_max_overflow", lambda n, v: integer(n, v, 0, 10_000)),
    "DATABASE_POOL_TIMEOUT": ("database_pool_timeout", lambda n, v: number(n, v, 0, 3600, lo_open=True)),
    "RATE_LIMIT_ENABLED": ("rate_limit_enabled", boolean),
    "RATE_LIMIT_TOKENS_PER_MINUTE": ("rate_limit_tokens_per_minute", lambda n, v: integer(n, v, 0, 10**12)),
    "RATE_LIMIT_TOKEN_BURST": ("rate_limit_token_burst", lambda n, v: integer(n, v, 0, 10**12)),
    "RATE_LIMIT_DEFAULT_MAX_TOKENS": ("rate_limit_default_max_tokens", lambda n, v: integer(n, v, 1, 10**7)),
    "RATE_LIMIT_CACHE_HIT_WEIGHT": ("rate_limit_cache_hit_weight", lambda n, v: number(n, v, 0, 100)),
    "RATE_LIMIT_REDIS_TIMEOUT_SECONDS": ("rate_limit_redis_timeout", lambda n, v: number(n, v, 0, 60, lo_open=True)),
    "GATEWAY_REDIS_CLUSTER": ("redis_cluster", boolean),
    "GATEWAY_WS_MAX_IN_FLIGHT": ("ws_max_in_flight", lambda n, v: integer(n, v, 1, 10_000)),
    "GATEWAY_METRICS": ("metrics", boolean),
    "GATEWAY_ACCESS_LOG": ("access_log", string),
    "GATEWAY_TRACES": ("traces", boolean),
}


def _load_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"GATEWAY_CONFIG: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"GATEWAY_CONFIG: {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"GATEWAY_CONFIG: cannot read {path}: {exc.strerror}") from None


def _parse_key(name: str, entry: Any) -> ApiKey:
    entry = table(name, entry)
    unknown = set(entry) - {"key", "name", "requests_per_minute", "burst", "tokens_per_minute", "token_burst", "models", "admin"}
    if unknown:
        raise ConfigError(f"{name}: unknown setting {sorted(unknown)[0]!r}")
    key = string(f"{name}.key", entry.get("key"))
    models = entry.get("models")
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise ConfigError(f"{name}.models: expected a list of model names")
        models = frozenset(models)
    rpm = entry.get("requests_per_minute")
    burst = entry.get("burst")
    tpm = entry.get("tokens_per_minute")
    tburst = entry.get("token_burst")
    return ApiKey(
        key=key,
        name=string(f"{name}.name", entry.get("name", key[:8] + "…")),
        requests_per_minute=None if rpm is None else integer(f"{name}.requests_per_minute", rpm),
        burst=None if burst is None else integer(f"{name}.burst", burst),
        tokens_per_minute=None if tpm is None else integer(f"{name}.tokens_per_minute", tpm, 0, 10**12),
        token_burst=None if tburst is None else integer(f"{name}.token_burst", tburst, 1, 10**12),
        models=models,
        admin=boolean(f"{name}.admin", entry.get("admin", False)),
    )


def _parse_deployment(name: str, raw: Any, providers: dict[str, ProviderSettings], index: int) -> Deployment:
    raw = table(name, raw)
    unknown = set(raw) - {"provider", "model", "weight", "api_key", "base_url", "transport", "timeout", "name"}
    if unknown:
        raise ConfigError(f"{name}: unknown setting {sorted(unknown)[0]!r}")
    provider = choice(f"{name}.provider", raw.get("provider"), PROVIDERS)
    base = providers[provider]
    api_key = raw.get("api_key", base.api_key)
    if not api_key:
        raise ConfigError(f"{name}: no api_key and {REGISTRY[provider].api_key_env} is not set")
    model = string(f"{name}.model", raw.get("model"))
    return Deployment(
        name=string(f"{name}.name", raw.get("name", f"{provider}:{model}" + (f"#{index}" if index else ""))),
        provider=provider,
        model=model,
        base_url=url(f"{name}.base_url", raw["base_url"]) if "base_url" in raw else base.base_url,
        api_key=string(f"{name}.api_key", api_key),
        weight=number(f"{name}.weight", raw.get("weight", 1.0), 0, 1e6),
        transport=choice(f"{name}.transport", raw.get("transport", base.transport), TRANSPORTS),
        timeout=None if raw.get("timeout") is None else number(f"{name}.timeout", raw["timeout"], 0, 3600, lo_open=True),
    )


def _policy_value(name: str, option: str, raw: Any) -> Any:
    """One routing option, checked; ``name`` is what an error names (``models.x.retries``, ``GATEWAY_RETRIES``)."""
    if option in ("retries",):
        return integer(name, raw, 0, 10)
    if option in ("breaker_failures", "breaker_min_requests", "breaker_probes"):
        return integer(name, raw, 1, 1_000_000)
    if option in ("retry_budget", "hedge_max_fraction"):
        return number(name, raw, 0, 1)
    if option == "breaker_error_rate":
        return number(name, raw, 0, 1, lo_open=True)
    if option in ("hedge", "reroute_unsupported"):
        return boolean(name, raw)
    if option == "hedge_delay" and isinstance(raw, str) and raw.strip().lower() == "p95":
        return None
    if option in ("attempt_timeout", "breaker_stall") and isinstance(raw, str) and raw.strip().lower() in ("", "none", "off"):
        return None
    if option in ("attempt_timeout", "breaker_stall", "hedge_delay"):
        return number(name, raw, 0, 3600, lo_open=True)
    return number(name, raw, 0, 3600, lo_open=option != "backoff_base")  # backoff_*, breaker_window/cooldown


def _parse_policy(prefix: str, raw: dict, base: RoutePolicy, env_style: bool = False) -> RoutePolicy:
    changes = {}
    for option, value in raw.items():
        if option not in ROUTE_OPTIONS:
            raise ConfigError(f"{prefix}{option}: unknown setting")
        label = f"GATEWAY_{option.upper()}" if env_style else f"{prefix}{option}"
        changes[option] = _policy_value(label, option, value)
    policy = replace(base, **changes)
    if policy.backoff_max < policy.backoff_base:
        raise ConfigError(f"{prefix}backoff_max: must be at least backoff_base ({policy.backoff_base:g})")
    return policy


def _parse_models(
    raw: dict, providers: dict[str, ProviderSettings], routing: RoutePolicy | None = None
) -> dict[str, ModelGroup]:
    groups: dict[str, ModelGroup] = {}
    for model_name, spec in raw.items():
        name = f"models.{model_name}"
        spec = table(name, spec)
        deployments_raw = spec.get("deployments")
        if not isinstance(deployments_raw, list) or not deployments_raw:
            raise ConfigError(f"{name}.deployments: expected a non-empty list of deployments")
        deployments = [
            _parse_deployment(f"{name}.deployments[{i}]", d, providers, i) for i, d in enumerate(deployments_raw)
        ]
        seen: set[str] = set()
        for d in deployments:
            if d.name in seen:
                raise ConfigError(f"{name}.deployments: duplicate deployment name {d.name!r}")
            seen.add(d.name)
        if not any(d.weight > 0 for d in deployments):
            raise ConfigError(f"{name}.deployments: at least one deployment needs a weight above 0")
        options = {k: v for k, v in spec.items() if k not in ("deployments", "strategy")}
        groups[model_name] = ModelGroup(
            name=model_name,
            deployments=deployments,
            strategy=choice(f"{name}.strategy", spec.get("strategy", "weighted"), STRATEGIES),
            policy=_parse_policy(f"{name}.", options, routing or RoutePolicy()),
        )
    return groups


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate the settings from the environment and the TOML file."""
    env = os.environ if env is None else env
    s = Settings()
    path = env.get("GATEWAY_CONFIG") or None
    doc = _load_toml(path) if path else {}
    s.config_file = path
    known_sections = {"gateway", "providers", "models", "aliases", "keys", "cache", "routing", "pricing"}
    unknown = set(doc) - known_sections
    if unknown:
        raise ConfigError(f"GATEWAY_CONFIG: unknown section [{sorted(unknown)[0]}]")

    # [gateway] holds the same settings as the environment, lower-cased; env wins.
    file_settings = {k.upper(): v for k, v in table("gateway", doc.get("gateway")).items()}
    for key in file_settings:
        if key not in _ENV:
            raise ConfigError(f"gateway.{key.lower()}: unknown setting")
    for key, (attr, parse) in _ENV.items():
        raw = env.get(key)
        label = key
        if raw is None or raw == "":
            if key not in file_settings:
                continue
            raw, label = file_settings[key], f"gateway.{key.lower()}"
        setattr(s, attr, parse(label, raw))

    api = urlsplit(s.api_url)
    s.host = api.hostname or "localhost"
    s.port = api.port or (443 if api.scheme == "https" else 80)

    # Providers: key and base URL from env, else file, else the public API.
    providers_doc = table("providers", doc.get("providers"))
    for name in set(providers_doc) - set(PROVIDERS):
        raise ConfigError(f"providers.{name}: unknown provider (expected one of {', '.join(PROVIDERS)})")
    for name, facts in REGISTRY.items():
        section = table(f"providers.{name}", providers_doc.get(name))
        unknown = set(section) - {"api_key", "base_url", "transport", "timeout"}
        if unknown:
            raise ConfigError(f"providers.{name}: unknown setting {sorted(unknown)[0]!r}")
        key_env, url_env, transport_var = facts.api_key_env, facts.base_url_env, facts.transport_env
        api_key = env.get(key_env) or section.get("api_key") or None
        if api_key is not None:
            api_key = string(key_env if env.get(key_env) else f"providers.{name}.api_key", api_key)
        if env.get(url_env):
            base_url = url(url_env, env[url_env])
        elif "base_url" in section:
            base_url = url(f"providers.{name}.base_url", section["base_url"])
        else:
            base_url = facts.base_url
        transport_env = env.get(transport_var)
        if transport_env:
            transport = choice(transport_var, transport_env, TRANSPORTS)
        else:
            transport = choice(f"providers.{name}.transport", section.get("transport", s.transport), TRANSPORTS)
        timeout = section.get("timeout")
        s.providers[name] = ProviderSettings(
            name=name,
            api_key=api_key,
            base_url=base_url,
            transport=transport,
            timeout=None if timeout is None else number(f"providers.{name}.timeout", timeout, 0, 3600, lo_open=True),
        )
    s.simulated = boolean("GATEWAY_SIMULATED", env.get("GATEWAY_SIMULATED", "false"))

    # Routing defaults: [routing] in the file, then GATEWAY_<OPTION> from the environment.
    s.routing = _parse_policy("routing.", table("routing", doc.get("routing")), RoutePolicy())
    env_routing = {o: env[f"GATEWAY_{o.upper()}"] for o in ROUTE_OPTIONS if env.get(f"GATEWAY_{o.upper()}")}
    s.routing = _parse_policy("routing.", env_routing, s.routing, env_style=True)
    if env.get("GATEWAY_IMPLICIT_FALLBACK"):
        s.implicit_fallback = boolean("GATEWAY_IMPLICIT_FALLBACK", env["GATEWAY_IMPLICIT_FALLBACK"])
    s.models = _parse_models(table("models", doc.get("models")), s.providers, s.routing)
    aliases = table("aliases", doc.get("aliases"))
    for alias, target in aliases.items():
        s.aliases[alias] = string(f"aliases.{alias}", target)

    # Keys: GATEWAY_API_KEYS (comma-separated), GATEWAY_ADMIN_KEYS, and [[keys]] in the file.
    for raw_key in (env.get("GATEWAY_API_KEYS") or "").split(","):
        if raw_key.strip():
            k = raw_key.strip()
            s.api_keys[k] = ApiKey(key=k, name=k[:8] + "…")
    for raw_key in (env.get("GATEWAY_ADMIN_KEYS") or "").split(","):
        if raw_key.strip():
            k = raw_key.strip()
            s.api_keys[k] = ApiKey(key=k, name="admin:" + k[:8] + "…", admin=True)
    keys_doc = doc.get("keys", [])
    if not isinstance(keys_doc, list):
        raise ConfigError("keys: expected an array of tables ([[keys]])")
    for i, entry in enumerate(keys_doc):
        key = _parse_key(f"keys[{i}]", entry)
        s.api_keys[key.key] = key
    if not s.api_keys:
        s.api_keys[DEFAULT_API_KEY] = ApiKey(key=DEFAULT_API_KEY, name="default")

    from gateway.pricing import Prices

    s.prices = Prices.from_table(table("pricing", doc.get("pricing")))
    s.cache = table("cache", doc.get("cache"))
    if env.get("GATEWAY_CACHE"):
        s.cache["enabled"] = boolean("GATEWAY_CACHE", env["GATEWAY_CACHE"])
    s.cache_config = _cache_config(s, explicit=lambda key: bool(env.get(key)) or key in file_settings)
    return s


def _cache_config(s: Settings, explicit: Callable[[str], bool]):
    """The cache's own settings: ``[cache]`` in the file, with CACHE_TTL_SECONDS and SEMANTIC_THRESHOLD on top."""
    from gateway.cache import CacheConfig  # imports onnxruntime before usearch (see gateway/cache/__init__.py)

    mapping = dict(s.cache)
    for key, name, value in (
        ("CACHE_TTL_SECONDS", "ttl_seconds", s.cache_ttl_seconds),
        ("SEMANTIC_THRESHOLD", "semantic_threshold", s.semantic_threshold),
    ):
        if explicit(key) or name not in mapping:
            mapping[name] = value
    mapping.setdefault("redis_prefix", s.redis_prefix + "cache:")  # [cache] redis_prefix, when set, wins
    if "max_ttl_seconds" not in mapping:
        mapping["max_ttl_seconds"] = max(CacheConfig.max_ttl_seconds, mapping["ttl_seconds"])
    try:
        return CacheConfig.from_mapping(mapping)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
