"""The settings' types: what ``load_settings`` builds and the rest of the gateway reads."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from gateway.auth import ApiKey
from gateway.providers.base import Deployment

if TYPE_CHECKING:
    from gateway.cache import CacheConfig
    from gateway.routing.plan import Plan


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
    options: dict[str, Any] = field(default_factory=dict)  # the group's routing options as written; parsed into policy
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
    cache_ttl_seconds: int = 3600
    semantic_threshold: float = 0.85
    cache: dict[str, Any] = field(default_factory=dict)  # the TOML [cache] table
    cache_config: "CacheConfig | None" = None  # built from the above
    # Limits
    rate_limit_requests_per_minute: int = 60
    rate_limit_burst: int = 100
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
