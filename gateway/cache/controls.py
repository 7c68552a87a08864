"""What a client asks of the cache: ``Cache-Control`` and the ``x-gateway-cache-*`` headers.

A pure function of the headers, so admission can validate them (and answer
400) before the cache runs; the cache then uses the parsed result as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import GatewayError

NAMESPACE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEFAULT_TENANT = "default"
MAX_TTL_SECONDS = 7 * 86_400  # CacheConfig.max_ttl_seconds' default


@dataclass(slots=True, frozen=True)
class Controls:
    no_cache: bool  # Cache-Control: no-cache / max-age=0: do not answer from the cache (still store)
    no_store: bool  # Cache-Control: no-store: neither answer from nor store
    ttl: int | None  # x-gateway-cache-ttl; None: the configured TTL
    tenant: str  # x-gateway-cache-namespace


def ttl_error(raw: str, max_ttl_seconds: int) -> GatewayError:
    return GatewayError(400, f"x-gateway-cache-ttl must be an integer number of seconds between 1 and "
                             f"{max_ttl_seconds}, got {raw!r}.", "invalid_request_error", None, "invalid_cache_ttl")


def parse_controls(headers: Mapping[str, str], max_ttl_seconds: int = MAX_TTL_SECONDS) -> Controls:
    """The cache controls of a request (header names lower-cased); a GatewayError 400 when one is invalid."""
    no_cache = no_store = False
    cc = headers.get("cache-control")
    if cc:
        for d in cc.lower().split(","):
            d = d.strip()
            if d == "no-store":
                no_store = True
            elif d == "no-cache" or d == "max-age=0":
                no_cache = True
    ttl = None
    raw = headers.get("x-gateway-cache-ttl")
    if raw is not None:
        try:
            ttl = int(raw.strip())
        except ValueError:
            ttl = -1
        if not 1 <= ttl <= max_ttl_seconds:
            raise ttl_error(raw, max_ttl_seconds)
    tenant = headers.get("x-gateway-cache-namespace")
    if tenant is None:
        tenant = DEFAULT_TENANT
    elif not NAMESPACE.match(tenant):
        raise GatewayError(400, "x-gateway-cache-namespace must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' "
                                f"or '-', got {tenant!r}.", "invalid_request_error", None, "invalid_cache_namespace")
    return Controls(no_cache, no_store, ttl, tenant)


def in_namespace(tenant: str, namespace: str | None) -> bool:
    """Whether entries stored under ``tenant`` belong to a flushed ``namespace`` (None: all)."""
    return namespace is None or tenant == namespace or tenant.endswith("/" + namespace)


def valid_namespace(namespace: str) -> bool:
    """A namespace as flush takes it: ``<namespace>`` or ``<key name>/<namespace>``."""
    return all(NAMESPACE.match(p) for p in namespace.split("/", 1))
