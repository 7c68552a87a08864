"""Settings: ``types`` (what the gateway reads), ``load`` (environment + TOML), ``validate`` (shared checks)."""

from gateway.config.load import (
    DEFAULT_API_KEY,
    ENVIRONMENTS,
    LOG_LEVELS,
    PROVIDERS,
    STRATEGIES,
    TRANSPORTS,
    load_settings,
)
from gateway.config.types import ROUTE_OPTIONS, ConfigError, ModelGroup, ProviderSettings, RoutePolicy, Settings

__all__ = [
    "DEFAULT_API_KEY",
    "ENVIRONMENTS",
    "LOG_LEVELS",
    "PROVIDERS",
    "ROUTE_OPTIONS",
    "STRATEGIES",
    "TRANSPORTS",
    "ConfigError",
    "ModelGroup",
    "ProviderSettings",
    "RoutePolicy",
    "Settings",
    "load_settings",
]
