"""The value checks the settings, the simulator's admin API and request validation share.

Two layers. ``as_int``, ``as_number`` and ``as_bool`` decide what a raw value
means (a bool is never a number, a whole float is an integer, strings only
where the source is text) and raise ``Refused`` without wording of their own,
because each caller's messages are public: the operator's one-line config
errors, the simulator's 400s, the API's 400s. The rest (``integer``,
``number``, ``boolean``, ``choice``, ``url``, ``string``, ``table``) are the
settings' checks built on them: each raises ``ConfigError`` naming the setting.
"""

from __future__ import annotations

import os

from typing import Any
from urllib.parse import urlsplit

from gateway.config.types import ConfigError

_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off"))


class Refused(ValueError):
    """A value a check refused: ``range`` False for the wrong type, True for out of bounds.

    ``value`` is what was compared with the bounds (``as_int``: the int it made; else the raw value).
    """

    def __init__(self, range: bool, value: Any = None) -> None:
        super().__init__("out of range" if range else "wrong type")
        self.range = range
        self.value = value


def as_int(raw: Any, lo: int | None = None, hi: int | None = None, *, text: bool = False, whole_floats: bool = True) -> int:
    """``raw`` as an int in [lo, hi]; a whole float counts unless not ``whole_floats``, a string only with ``text``."""
    if isinstance(raw, bool):
        raise Refused(False)
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        if not whole_floats or not raw.is_integer():
            raise Refused(False)
        value = int(raw)
    elif text and isinstance(raw, str):
        try:
            value = int(raw)
        except ValueError:
            raise Refused(False) from None
    else:
        raise Refused(False)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise Refused(True, value)
    return value


def as_number(raw: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, text: bool = False) -> float:
    """``raw`` as a float in [lo, hi] (or (lo, hi] with ``lo_open``); NaN is never in range."""
    if isinstance(raw, bool) or not (isinstance(raw, (int, float)) or (text and isinstance(raw, str))):
        raise Refused(False)
    try:
        value = float(raw)
    except (ValueError, OverflowError):
        raise Refused(False) from None
    if value != value or (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        raise Refused(True, raw)
    return value


def as_bool(raw: Any) -> bool:
    """A bool, or its text: 1/0, true/false, yes/no, on/off, any case, padded."""
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise Refused(False)


# --- the settings' checks: each raises ConfigError naming the setting ----------------


def integer(name: str, raw: Any, lo: int = 1, hi: int = 10**9) -> int:
    try:
        return as_int(raw, lo, hi, text=True)
    except Refused as r:
        why = f"must be between {lo} and {hi}, got {r.value}" if r.range else f"expected an integer, got {raw!r}"
        raise ConfigError(f"{name}: {why}") from None


def number(name: str, raw: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    try:
        return as_number(raw, lo, hi, lo_open=lo_open, text=True)
    except Refused as r:
        why = f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {raw!r}" if r.range else f"expected a number, got {raw!r}"
        raise ConfigError(f"{name}: {why}") from None


def boolean(name: str, raw: Any) -> bool:
    try:
        return as_bool(raw)
    except Refused:
        raise ConfigError(f"{name}: expected true or false, got {raw!r}") from None


def choice(name: str, raw: Any, choices: tuple[str, ...], upper: bool = False) -> str:
    value = str(raw).strip()
    value = value.upper() if upper else value.lower()
    if value not in choices:
        raise ConfigError(f"{name}: must be one of {', '.join(choices)}, got {raw!r}")
    return value


def url(name: str, raw: Any, schemes: tuple[str, ...] = ("http", "https")) -> str:
    value = str(raw).strip()
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{name}: expected a {'/'.join(schemes)} URL, got {raw!r}")
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"{name}: bad port in {raw!r}") from None
    return value.rstrip("/")


def string(name: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{name}: expected a non-empty string, got {raw!r}")
    return raw.strip()


def redis_prefix(name: str, raw: Any) -> str:
    """A Redis key prefix: printable, no spaces, no braces (they would make a Redis Cluster hash tag)."""
    value = raw if isinstance(raw, str) else ""
    if not value or len(value) > 64 or not value.isprintable() or any(c in value for c in " {}"):
        raise ConfigError(f"{name}: expected up to 64 printable characters without spaces or braces, got {raw!r}")
    return value


def table(name: str, raw: Any) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a table")
    return raw


def file(name: str, raw: Any) -> str:
    """A path to a file that exists (a CA bundle, say)."""
    path = string(name, raw)
    if not os.path.isfile(path):
        raise ConfigError(f"{name}: file not found: {path}")
    return path
_DRIVERS = {"sqlite": "sqlite+aiosqlite", "sqlite+aiosqlite": "sqlite+aiosqlite",
            "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg", "postgresql+asyncpg": "postgresql+asyncpg"}


def database_url(name: str, raw: Any) -> str | None:
    """A SQLAlchemy URL with its async driver filled in (``postgresql://`` → ``postgresql+asyncpg://``); off/none: None."""
    value = str(raw).strip()
    if value.lower() in ("off", "none", "false"):
        return None
    scheme, sep, rest = value.partition("://")
    driver = _DRIVERS.get(scheme.lower())
    if not sep or driver is None:
        raise ConfigError(f"{name}: expected sqlite:///PATH or postgresql://USER@HOST/DB (or off), got {raw!r}")
    if driver.startswith("postgresql") and not urlsplit("x://" + rest).hostname:
        raise ConfigError(f"{name}: no host in {raw!r}")
    if driver.startswith("sqlite") and not rest.lstrip("/"):
        raise ConfigError(f"{name}: no file in {raw!r} (an in-memory SQLite database would lose the ledger)")
    return f"{driver}://{rest}"
