"""The settings' types: what ``load_settings`` builds and the rest of the gateway reads."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from gateway.auth import ApiKey
from gateway.providers.base import Deployment

if TYPE_CHECKING:
    from gateway.cache import CacheConfig
    from gateway.routing.plan import Plan


# A SQLite file in the working directory: the README's Run command needs no database server.
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///gateway.db"


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
    # A request one deployment cannot express (tools, images... its adapter refuses it) goes to the group's
    # next deployment, a different model, only when this is on; the answer then says so (x-gateway-failover).
    reroute_unsupported: bool = False


ROUTE_OPTIONS = frozenset(f.name for f in fields(RoutePolicy))


@dataclass(slots=True)
class ModelGroup:
    """A logical model: what the client names, served by weighted deployments."""

    name: str
    deployments: list[Deployment]
    strategy: str = "weighted"
    policy: RoutePolicy = field(default_factory=RoutePolicy)
    plan: "Plan | None" = field(default=None, repr=False, compare=False)  # the router's runtime state for this group


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
    # Hardening (README, "Limits"): a request body must arrive within this long (else a 408) ...
    body_timeout_seconds: float = 10.0
    # ... and at most this many bodies are read at once per worker (0: half of WORKER_CONNECTIONS), so
    # stalled uploads cannot hold every connection slot; the excess gets a 503 at once.
    max_body_reads: int = 0
    max_upstream_bytes: int = 16 * 1_048_576  # a provider's non-streaming answer
    max_event_bytes: int = 1_048_576  # one event of a provider's stream
    # Providers
    providers: dict[str, ProviderSettings] = field(default_factory=dict)
    transport: str = "aiohttp"
    upstream_ca_bundle: str | None = None  # PEM file of extra CAs trusted for upstream TLS
    simulated: bool = False  # True when serving against the embedded simulator
    models: dict[str, ModelGroup] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    routing: RoutePolicy = field(default_factory=RoutePolicy)  # defaults for every group
    implicit_fallback: bool | None = None  # None: on when simulated; see gateway.routing.resolve
    # Cache
    redis_url: str | None = None
    # GATEWAY_REDIS_PREFIX: every Redis key and channel of this deployment starts with it (cache, limits,
    # budgets, key changes), so two deployments or test runs can share one Redis without reading each other's.
    redis_prefix: str = "gw:"
    cache_ttl_seconds: int = 3600
    semantic_threshold: float = 0.85
    cache: dict[str, Any] = field(default_factory=dict)  # the TOML [cache] table
    cache_config: "CacheConfig | None" = None  # built from the above
    # Limits
    rate_limit_requests_per_minute: int = 60
    rate_limit_burst: int = 100
    # The database of keys, budgets and the usage ledger (gateway/db/). None: off (env/TOML keys, in-memory usage).
    database_url: str | None = DEFAULT_DATABASE_URL
    # Its connection pool: the spec's DATABASE_* settings.
    database_pool_size: int = 20
    database_max_overflow: int = 40
    database_pool_timeout: float = 30.0
    ledger_buffer_rows: int = 100_000  # usage rows held while the database is down; beyond: counted and logged
    ledger_batch_rows: int = 1000  # rows per ledger transaction at most
    ledger_flush_seconds: float = 0.25  # the longest a row waits for its batch in a quiet worker
    key_refresh_seconds: float = 5.0  # how stale a worker's copy of the virtual keys may get without Redis
    budget_reconcile_seconds: float = 60.0  # Redis's shared budget spend checked against the ledger; 0: never
    prices: Any = None  # gateway.pricing.Prices: the defaults with the TOML [pricing] table on top
    # Keys
    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    config_file: str | None = None
    # Limits (gateway/ratelimit.py) and the WebSocket surface (gateway/ws.py)
    rate_limit_enabled: bool = True
    rate_limit_tokens_per_minute: int = 0  # 0: no token limit unless a key sets one
    rate_limit_token_burst: int = 0  # 0: the per-minute figure
    rate_limit_default_max_tokens: int = 1024  # reserved for an answer when the request sets no max_tokens
    rate_limit_cache_hit_weight: float = 1.0  # a cache hit counts as this many requests
    rate_limit_redis_timeout: float = 0.5  # a lease slower than this fails open (local bucket) for a while
    redis_cluster: bool = False  # REDIS_URL names a node of a Redis Cluster (the limiter uses it as one)
    ws_max_in_flight: int = 16  # requests in flight on one WebSocket connection
    # Observability (gateway/metrics.py, gateway/accesslog.py; prices in gateway/pricing.py)
    metrics: bool = True  # GATEWAY_METRICS: off drops the metrics listener and /metrics (to measure its cost)
    traces: bool = False  # GATEWAY_TRACES: OpenTelemetry spans over OTLP (the optional extra "traces")
    access_log: str = "-"  # GATEWAY_ACCESS_LOG: "-" stderr, "off", or a file path; lines at INFO (LOG_LEVEL)

    @property
    def configured_providers(self) -> list[str]:
        return [name for name, p in self.providers.items() if p.api_key]
