"""Bearer API keys.

Keys live in a dict built once at start (from ``GATEWAY_API_KEYS`` and the TOML
file), so checking one is a single dict lookup on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gateway.errors import GatewayError


@dataclass(frozen=True, slots=True)
class ApiKey:
    key: str
    name: str
    # Per-key overrides of the global limits; None means "use the global setting".
    requests_per_minute: int | None = None
    burst: int | None = None
    tokens_per_minute: int | None = None  # 0 turns the global token limit off for this key
    token_burst: int | None = None
    # None allows every model; otherwise only these client-facing names.
    models: frozenset[str] | None = None
    # Admin keys may also call the /admin endpoints (reload, cache flush, usage of all keys).
    admin: bool = False
    # Virtual keys (gateway/keys/): ``key`` is then the secret's sha256, never the secret.
    id: str | None = None
    owner: str | None = None
    team: str | None = None
    budget_usd: float | None = None  # spend allowed per budget_period (gateway/budget.py)
    budget_period: str | None = None  # day | month (UTC)
    expires_at: float | None = None  # epoch seconds; None: never


_MISSING = GatewayError(
    401,
    "Missing API key. Send it as 'Authorization: Bearer <key>'.",
    "invalid_request_error",
    None,
    "missing_api_key",
)
_INVALID = GatewayError(401, "Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key")


def authenticate(
    keys: dict[str, ApiKey], authorization: str | None, virtual: Callable[[str], ApiKey | None] | None = None
) -> ApiKey:
    """The key named by an ``Authorization`` header value, or a 401.

    ``keys`` (environment and TOML) first, then ``virtual``: the database's
    keys as this worker's cache holds them (gateway/keys/cache.py).
    """
    if not authorization:
        raise _MISSING
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _MISSING
    token = token.strip()
    found = keys.get(token)
    if found is None and virtual is not None:
        found = virtual(token)
    if found is None:
        raise _INVALID
    return found


def check_model(key: ApiKey, model: str) -> None:
    if key.models is not None and model not in key.models:
        raise GatewayError(
            403,
            f"This API key may not use model '{model}'.",
            "invalid_request_error",
            "model",
            "model_not_allowed",
        )


_NOT_ADMIN = GatewayError(403, "This endpoint needs an admin API key.", "invalid_request_error", None, "admin_required")


def require_admin(key: ApiKey) -> None:
    if not key.admin:
        raise _NOT_ADMIN
