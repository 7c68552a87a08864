"""The fields of a virtual key as an operator sends them (admin API JSON, CLI flags), checked once.

A bad field raises a 400 ``GatewayError`` naming it (the CLI prints its message).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.config.validate import Refused, as_bool, as_int, as_number
from gateway.errors import invalid

PERIODS = ("day", "month")
EDITABLE = (
    "name", "owner", "team", "models", "admin", "requests_per_minute", "burst", "tokens_per_minute",
    "budget_usd", "budget_period", "expires_at",
)


def _text(name: str, raw: Any, optional: bool = True) -> str | None:
    if raw is None and optional:
        return None
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 200:
        raise invalid(f"'{name}' must be a non-empty string of at most 200 characters.", param=name)
    return raw.strip()


def _limit(name: str, raw: Any) -> int | None:
    if raw is None:
        return None
    try:
        return as_int(raw, 1, 10**9)
    except Refused:
        raise invalid(f"'{name}' must be an integer between 1 and 1000000000, or null.", param=name) from None


def _expiry(raw: Any) -> float | None:
    """Epoch seconds, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            when = dt.datetime.fromisoformat(raw.strip())
        except ValueError:
            raise invalid("'expires_at' must be epoch seconds or an ISO 8601 time.", param="expires_at") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return when.timestamp()
    try:
        return as_number(raw, 0, 1e11)
    except Refused:
        raise invalid("'expires_at' must be epoch seconds or an ISO 8601 time.", param="expires_at") from None


def parse(body: Any, creating: bool) -> dict:
    """The checked fields of ``body``; creating needs ``name``, an update may change any subset."""
    if not isinstance(body, dict):
        raise invalid("Body must be a JSON object of key fields.")
    unknown = set(body) - set(EDITABLE)
    if unknown:
        name = sorted(unknown)[0]
        raise invalid(f"Unknown key field '{name}'; expected some of {', '.join(EDITABLE)}.", param=name)
    if creating and "name" not in body:
        raise invalid("'name' is required.", param="name")
    out: dict[str, Any] = {}
    for name, raw in body.items():
        if name == "name":
            out[name] = _text(name, raw, optional=False)
        elif name in ("owner", "team"):
            out[name] = _text(name, raw)
        elif name == "models":
            if raw is not None and (not isinstance(raw, list) or not all(isinstance(m, str) and m for m in raw)):
                raise invalid("'models' must be a list of model names, or null for every model.", param=name)
            out[name] = None if raw is None else sorted(set(raw))
        elif name == "admin":
            try:
                out[name] = as_bool(raw)
            except Refused:
                raise invalid("'admin' must be true or false.", param=name) from None
        elif name in ("requests_per_minute", "burst", "tokens_per_minute"):
            out[name] = _limit(name, raw)
        elif name == "budget_usd":
            try:
                out[name] = None if raw is None else as_number(raw, 0, 1e9)
            except Refused:
                raise invalid("'budget_usd' must be a number of US dollars (0 or more), or null.", param=name) from None
        elif name == "budget_period":
            if raw not in PERIODS and raw is not None:
                raise invalid("'budget_period' must be 'day' or 'month'.", param=name)
            out[name] = raw
        elif name == "expires_at":
            out[name] = _expiry(raw)
    if creating and out.get("budget_usd") is not None and not out.get("budget_period"):
        out["budget_period"] = "month"
    return out
