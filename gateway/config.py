"""Settings: read and validated once at start.

Every environment variable of the product spec is read here, plus the
gateway's own (``GATEWAY_*``, provider base URLs). An optional TOML file
(``GATEWAY_CONFIG``) describes models, providers, aliases and per-key settings;
the environment overrides the file. A bad value raises ``ConfigError`` whose
message is one line naming the setting; the CLI prints it and exits with 2.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from gateway.auth import ApiKey
from gateway.providers.base import Deployment

PROVIDERS = ("openai", "anthropic", "google")
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "google": "https://generativelanguage.googleapis.com",
}
DEFAULT_API_KEY = "test-key-123"  # the spec's load tests use it; only when no key is configured
ENVIRONMENTS = ("development", "staging", "production", "test")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TRANSPORTS = ("aiohttp", "httpx")
STRATEGIES = ("weighted", "latency", "priority")


class ConfigError(Exception):
    """A bad setting; ``str(exc)`` is the one-line message for the operator."""


@dataclass(slots=True)
class ProviderSettings:
    name: str
    api_key: str | None
    base_url: str
    transport: str = "aiohttp"
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """Retries, circuit breakers and hedging of one model group.

    Defaults come from ``[routing]`` in the TOML file, overridden by
    ``GATEWAY_<OPTION>`` (e.g. ``GATEWAY_BREAKER_COOLDOWN``); a group's own
    ``[models.NAME]`` options override both. Times are in seconds.
    """

    retries: int = 2  # attempts after the first: failover to other deployments, or re-tries
    backoff_base: float = 0.05  # full-jitter exponential backoff before re-trying a deployment already tried
    backoff_max: float = 1.0
    retry_budget: float = 0.2  # re-tries of an already-tried deployment, as a fraction of the group's requests
    attempt_timeout: float | None = None  # per attempt; None: what is left of the request deadline
    breaker_failures: int = 5  # consecutive failures that open a deployment's breaker ...
    breaker_error_rate: float = 0.5  # ... or this failed fraction of the window's attempts
    breaker_window: float = 10.0
    breaker_min_requests: int = 20  # attempts in the window before the error rate counts
    breaker_cooldown: float = 5.0  # open → half-open after this long
    breaker_probes: int = 2  # trial requests let through half-open; all must succeed to close
    breaker_stall: float | None = None  # hung: an attempt this overdue (beyond usual latency), no answer meanwhile
    hedge: bool = False
    hedge_delay: float | None = None  # None: the group's observed P95 latency
    hedge_max_fraction: float = 0.1  # hedges never exceed this fraction of the group's requests


ROUTE_OPTIONS = frozenset(f.name for f in fields(RoutePolicy))


@dataclass(slots=True)
class ModelGroup:
    """A logical model: what the client names, served by weighted deployments."""

    name: str
    deployments: list[Deployment]
    strategy: str = "weighted"
    # Resilience knobs read by the router; defaults suit most groups.
    options: dict[str, Any] = field(default_factory=dict)
    policy: RoutePolicy = field(default_factory=RoutePolicy)
    plan: Any = field(default=None, repr=False, compare=False)  # the router's runtime state for this group


@dataclass(slots=True)
class Settings:
    # Server
    api_url: str = "http://localhost:8000"
    host: str = "localhost"
    port: int = 8000
    environment: str = "development"
    log_level: str = "INFO"
    worker_processes: int = 1
    worker_connections: int = 1000
    request_timeout_seconds: float = 30.0
    keepalive_timeout: int = 65
    max_body_bytes: int = 1_048_576
    stream_ping_seconds: float = 10.0
    # Providers
    providers: dict[str, ProviderSettings] = field(default_factory=dict)
    transport: str = "aiohttp"
    simulated: bool = False  # True when serving against the embedded simulator
    models: dict[str, ModelGroup] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    routing: RoutePolicy = field(default_factory=RoutePolicy)  # defaults for every group
    implicit_fallback: bool | None = None  # None: on when simulated; see router.implicit_group
    # Cache
    redis_url: str | None = None
    cache_ttl_seconds: int = 3600
    semantic_threshold: float = 0.85
    cache: dict[str, Any] = field(default_factory=dict)  # the TOML [cache] table
    cache_config: Any = None  # gateway.cache.CacheConfig, built from the above
    # Limits
    rate_limit_requests_per_minute: int = 60
    rate_limit_burst: int = 100
    rate_limit_enabled: bool = True
    rate_limit_tokens_per_minute: int = 0  # 0: no token limit unless a key sets one
    rate_limit_token_burst: int = 0  # 0: the per-minute figure
    rate_limit_default_max_tokens: int = 1024  # reserved for an answer when the request sets no max_tokens
    rate_limit_cache_hit_weight: float = 1.0  # a cache hit counts as this many requests
    rate_limit_redis_timeout: float = 0.5  # a lease slower than this fails open (local bucket) for a while
    redis_cluster: bool = False  # REDIS_URL names a node of a Redis Cluster (the limiter uses it as one)
    ws_max_in_flight: int = 16  # requests in flight on one WebSocket connection
    # Redis connection pool (the spec's DATABASE_* settings; the gateway's only database is Redis)
    database_pool_size: int = 20
    database_max_overflow: int = 40
    database_pool_timeout: float = 30.0
    # Keys
    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    config_file: str | None = None

    @property
    def configured_providers(self) -> list[str]:
        return [name for name, p in self.providers.items() if p.api_key]


# --- parsing helpers: each raises ConfigError naming the setting -------------


def _int(name: str, raw: Any, lo: int = 1, hi: int = 10**9) -> int:
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = int(raw) if not isinstance(raw, float) or raw.is_integer() else None
        if value is None:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: must be between {lo} and {hi}, got {value}")
    return value


def _float(name: str, raw: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if value != value or (value <= lo if lo_open else value < lo) or value > hi:
        bracket = "(" if lo_open else "["
        raise ConfigError(f"{name}: must be in {bracket}{lo:g}, {hi:g}], got {raw!r}")
    return value


def _choice(name: str, raw: Any, choices: tuple[str, ...], upper: bool = False) -> str:
    value = str(raw).strip()
    value = value.upper() if upper else value.lower()
    if value not in choices:
        raise ConfigError(f"{name}: must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _url(name: str, raw: Any, schemes: tuple[str, ...] = ("http", "https")) -> str:
    value = str(raw).strip()
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{name}: expected a {'/'.join(schemes)} URL, got {raw!r}")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{name}: bad port in {raw!r}") from None
    return value.rstrip("/")


def _str(name: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{name}: expected a non-empty string, got {raw!r}")
    return raw.strip()


def _bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


# Environment variables: name -> (Settings field, parser). Documented in README.md.
_ENV: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "API_URL": ("api_url", _url),
    "ENVIRONMENT": ("environment", lambda n, v: _choice(n, v, ENVIRONMENTS)),
    "LOG_LEVEL": ("log_level", lambda n, v: _choice(n, v, LOG_LEVELS, upper=True)),
    "WORKER_PROCESSES": ("worker_processes", lambda n, v: _int(n, v, 1, 256)),
    "WORKER_CONNECTIONS": ("worker_connections", lambda n, v: _int(n, v, 1, 1_000_000)),
    "REQUEST_TIMEOUT_SECONDS": ("request_timeout_seconds", lambda n, v: _float(n, v, 0, 3600, lo_open=True)),
    "KEEPALIVE_TIMEOUT": ("keepalive_timeout", lambda n, v: _int(n, v, 1, 86_400)),
    "GATEWAY_MAX_BODY_BYTES": ("max_body_bytes", lambda n, v: _int(n, v, 1024, 1 << 30)),
    "GATEWAY_STREAM_PING_SECONDS": ("stream_ping_seconds", lambda n, v: _float(n, v, 0, 3600, lo_open=True)),
    "GATEWAY_TRANSPORT": ("transport", lambda n, v: _choice(n, v, TRANSPORTS)),
    "REDIS_URL": ("redis_url", lambda n, v: _url(n, v, ("redis", "rediss", "unix"))),
    "CACHE_TTL_SECONDS": ("cache_ttl_seconds", lambda n, v: _int(n, v, 1, 10 * 365 * 86_400)),
    "SEMANTIC_THRESHOLD": ("semantic_threshold", lambda n, v: _float(n, v, 0, 1, lo_open=True)),
    "RATE_LIMIT_REQUESTS_PER_MINUTE": ("rate_limit_requests_per_minute", lambda n, v: _int(n, v, 1, 10**9)),
    "RATE_LIMIT_BURST": ("rate_limit_burst", lambda n, v: _int(n, v, 1, 10**9)),
    "RATE_LIMIT_ENABLED": ("rate_limit_enabled", _bool),
    "RATE_LIMIT_TOKENS_PER_MINUTE": ("rate_limit_tokens_per_minute", lambda n, v: _int(n, v, 0, 10**12)),
    "RATE_LIMIT_TOKEN_BURST": ("rate_limit_token_burst", lambda n, v: _int(n, v, 0, 10**12)),
    "RATE_LIMIT_DEFAULT_MAX_TOKENS": ("rate_limit_default_max_tokens", lambda n, v: _int(n, v, 1, 10**7)),
    "RATE_LIMIT_CACHE_HIT_WEIGHT": ("rate_limit_cache_hit_weight", lambda n, v: _float(n, v, 0, 100)),
    "RATE_LIMIT_REDIS_TIMEOUT_SECONDS": ("rate_limit_redis_timeout", lambda n, v: _float(n, v, 0, 60, lo_open=True)),
    "GATEWAY_REDIS_CLUSTER": ("redis_cluster", _bool),
    "GATEWAY_WS_MAX_IN_FLIGHT": ("ws_max_in_flight", lambda n, v: _int(n, v, 1, 10_000)),
    "DATABASE_POOL_SIZE": ("database_pool_size", lambda n, v: _int(n, v, 1, 10_000)),
    "DATABASE_MAX_OVERFLOW": ("database_max_overflow", lambda n, v: _int(n, v, 0, 10_000)),
    "DATABASE_POOL_TIMEOUT": ("database_pool_timeout", lambda n, v: _float(n, v, 0, 3600, lo_open=True)),
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


def _table(name: str, raw: Any) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a table")
    return raw


def _parse_key(name: str, entry: Any) -> ApiKey:
    entry = _table(name, entry)
    unknown = set(entry) - {"key", "name", "requests_per_minute", "burst", "tokens_per_minute", "token_burst", "models", "admin"}
    if unknown:
        raise ConfigError(f"{name}: unknown setting {sorted(unknown)[0]!r}")
    key = _str(f"{name}.key", entry.get("key"))
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
        name=_str(f"{name}.name", entry.get("name", key[:8] + "…")),
        requests_per_minute=None if rpm is None else _int(f"{name}.requests_per_minute", rpm),
        burst=None if burst is None else _int(f"{name}.burst", burst),
        tokens_per_minute=None if tpm is None else _int(f"{name}.tokens_per_minute", tpm, 0, 10**12),
        token_burst=None if tburst is None else _int(f"{name}.token_burst", tburst, 1, 10**12),
        models=models,
        admin=_bool(f"{name}.admin", entry.get("admin", False)),
    )


def _parse_deployment(name: str, raw: Any, providers: dict[str, ProviderSettings], index: int) -> Deployment:
    raw = _table(name, raw)
    unknown = set(raw) - {"provider", "model", "weight", "api_key", "base_url", "transport", "timeout", "name"}
    if unknown:
        raise ConfigError(f"{name}: unknown setting {sorted(unknown)[0]!r}")
    provider = _choice(f"{name}.provider", raw.get("provider"), PROVIDERS)
    base = providers[provider]
    api_key = raw.get("api_key", base.api_key)
    if not api_key:
        env = provider.upper() + "_API_KEY"
        raise ConfigError(f"{name}: no api_key and {env} is not set")
    model = _str(f"{name}.model", raw.get("model"))
    return Deployment(
        name=_str(f"{name}.name", raw.get("name", f"{provider}:{model}" + (f"#{index}" if index else ""))),
        provider=provider,
        model=model,
        base_url=_url(f"{name}.base_url", raw["base_url"]) if "base_url" in raw else base.base_url,
        api_key=_str(f"{name}.api_key", api_key),
        weight=_float(f"{name}.weight", raw.get("weight", 1.0), 0, 1e6),
        transport=_choice(f"{name}.transport", raw.get("transport", base.transport), TRANSPORTS),
        timeout=None if raw.get("timeout") is None else _float(f"{name}.timeout", raw["timeout"], 0, 3600, lo_open=True),
    )


def _policy_value(name: str, option: str, raw: Any) -> Any:
    """One routing option, checked; ``name`` is what an error names (``models.x.retries``, ``GATEWAY_RETRIES``)."""
    if option in ("retries",):
        return _int(name, raw, 0, 10)
    if option in ("breaker_failures", "breaker_min_requests", "breaker_probes"):
        return _int(name, raw, 1, 1_000_000)
    if option in ("retry_budget", "hedge_max_fraction"):
        return _float(name, raw, 0, 1)
    if option == "breaker_error_rate":
        return _float(name, raw, 0, 1, lo_open=True)
    if option == "hedge":
        return _bool(name, raw)
    if option == "hedge_delay" and isinstance(raw, str) and raw.strip().lower() == "p95":
        return None
    if option in ("attempt_timeout", "breaker_stall") and isinstance(raw, str) and raw.strip().lower() in ("", "none", "off"):
        return None
    if option in ("attempt_timeout", "breaker_stall", "hedge_delay"):
        return _float(name, raw, 0, 3600, lo_open=True)
    return _float(name, raw, 0, 3600, lo_open=option != "backoff_base")  # backoff_*, breaker_window/cooldown


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
        spec = _table(name, spec)
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
            strategy=_choice(f"{name}.strategy", spec.get("strategy", "weighted"), STRATEGIES),
            options=options,
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
    known_sections = {"gateway", "providers", "models", "aliases", "keys", "cache", "routing"}
    unknown = set(doc) - known_sections
    if unknown:
        raise ConfigError(f"GATEWAY_CONFIG: unknown section [{sorted(unknown)[0]}]")

    # [gateway] holds the same settings as the environment, lower-cased; env wins.
    file_settings = {k.upper(): v for k, v in _table("gateway", doc.get("gateway")).items()}
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
    providers_doc = _table("providers", doc.get("providers"))
    for name in set(providers_doc) - set(PROVIDERS):
        raise ConfigError(f"providers.{name}: unknown provider (expected one of {', '.join(PROVIDERS)})")
    for name in PROVIDERS:
        section = _table(f"providers.{name}", providers_doc.get(name))
        unknown = set(section) - {"api_key", "base_url", "transport", "timeout"}
        if unknown:
            raise ConfigError(f"providers.{name}: unknown setting {sorted(unknown)[0]!r}")
        key_env, url_env = f"{name.upper()}_API_KEY", f"{name.upper()}_BASE_URL"
        api_key = env.get(key_env) or section.get("api_key") or None
        if api_key is not None:
            api_key = _str(key_env if env.get(key_env) else f"providers.{name}.api_key", api_key)
        if env.get(url_env):
            base_url = _url(url_env, env[url_env])
        elif "base_url" in section:
            base_url = _url(f"providers.{name}.base_url", section["base_url"])
        else:
            base_url = DEFAULT_BASE_URLS[name]
        transport_env = env.get(f"{name.upper()}_TRANSPORT")
        if transport_env:
            transport = _choice(f"{name.upper()}_TRANSPORT", transport_env, TRANSPORTS)
        else:
            transport = _choice(f"providers.{name}.transport", section.get("transport", s.transport), TRANSPORTS)
        timeout = section.get("timeout")
        s.providers[name] = ProviderSettings(
            name=name,
            api_key=api_key,
            base_url=base_url,
            transport=transport,
            timeout=None if timeout is None else _float(f"providers.{name}.timeout", timeout, 0, 3600, lo_open=True),
        )
    s.simulated = _bool("GATEWAY_SIMULATED", env.get("GATEWAY_SIMULATED", "false"))

    # Routing defaults: [routing] in the file, then GATEWAY_<OPTION> from the environment.
    s.routing = _parse_policy("routing.", _table("routing", doc.get("routing")), RoutePolicy())
    env_routing = {o: env[f"GATEWAY_{o.upper()}"] for o in ROUTE_OPTIONS if env.get(f"GATEWAY_{o.upper()}")}
    s.routing = _parse_policy("routing.", env_routing, s.routing, env_style=True)
    if env.get("GATEWAY_IMPLICIT_FALLBACK"):
        s.implicit_fallback = _bool("GATEWAY_IMPLICIT_FALLBACK", env["GATEWAY_IMPLICIT_FALLBACK"])
    s.models = _parse_models(_table("models", doc.get("models")), s.providers, s.routing)
    aliases = _table("aliases", doc.get("aliases"))
    for alias, target in aliases.items():
        s.aliases[alias] = _str(f"aliases.{alias}", target)

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

    s.cache = _table("cache", doc.get("cache"))
    if env.get("GATEWAY_CACHE"):
        s.cache["enabled"] = _bool("GATEWAY_CACHE", env["GATEWAY_CACHE"])
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
    if "max_ttl_seconds" not in mapping:
        mapping["max_ttl_seconds"] = max(CacheConfig.max_ttl_seconds, mapping["ttl_seconds"])
    try:
        return CacheConfig.from_mapping(mapping)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
