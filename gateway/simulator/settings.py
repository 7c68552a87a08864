"""Per-provider behaviour settings and the counters the admin API reports.

Settings change at run time through the admin API, so every update is checked
here first: a typo in a test's ``configure()`` fails loudly with a 400 instead
of silently simulating the wrong thing.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields

from gateway.config.validate import Refused, as_int, as_number
from gateway.providers.registry import NAMES as PROVIDERS
MODES = ("ok", "error", "timeout", "refuse", "overloaded")


@dataclass(slots=True)
class Settings:
    latency_ms: float = 0.0  # before the first byte of every answer
    jitter_ms: float = 0.0  # plus uniform(0, jitter_ms)
    tail_ratio: float = 0.0  # with this probability ...
    tail_ms: float = 0.0  # ... plus tail_ms: a slow tail for hedging tests
    tokens_per_second: float = 0.0  # streaming pace; 0: as fast as possible
    response_tokens: int = 30  # answer length in words (one word = one token)
    chunk_tokens: int = 1  # words per streamed chunk
    error_rate: float = 0.0  # fraction of good requests answered with error_status
    error_status: int = 500
    retry_after: int = 1  # seconds, sent with 429/503/529 answers
    mode: str = "ok"  # ok | error | timeout | refuse | overloaded
    api_key: str | None = None  # None: any non-empty key is accepted

    def delay(self) -> float:
        """Seconds to wait before answering one request."""
        ms = self.latency_ms
        if self.jitter_ms:
            ms += random.random() * self.jitter_ms
        if self.tail_ratio and random.random() < self.tail_ratio:
            ms += self.tail_ms
        return ms / 1000.0

    def chunk_interval(self) -> float:
        """Seconds between streamed chunks."""
        tps = self.tokens_per_second
        return self.chunk_tokens / tps if tps > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


NAMES = frozenset(f.name for f in fields(Settings))


def _bounded(name: str, value: object, low: float, high: float | None, whole: bool = False) -> float | int:
    """``value`` checked by the gateway's shared validators, worded as the admin API always has."""
    try:
        return as_int(value, low, high) if whole else as_number(value, low, high)
    except Refused as r:
        if not r.range:
            raise ValueError(f"{name} must be {'an integer' if whole else 'a number'}, got {value!r}") from None
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {r.value!r}") from None


def check(updates: dict) -> dict:
    """Validate a partial settings update; return it with normalised values."""
    out: dict = {}
    for name, value in updates.items():
        if name not in NAMES:
            raise ValueError(f"unknown setting {name!r}; known: {', '.join(sorted(NAMES))}")
        if name in ("latency_ms", "jitter_ms", "tail_ms", "tokens_per_second"):
            out[name] = _bounded(name, value, 0, None)
        elif name in ("tail_ratio", "error_rate"):
            out[name] = _bounded(name, value, 0, 1)
        elif name == "response_tokens":
            out[name] = _bounded(name, value, 0, 1_000_000, whole=True)
        elif name == "chunk_tokens":
            out[name] = _bounded(name, value, 1, 1_000_000, whole=True)
        elif name == "error_status":
            out[name] = _bounded(name, value, 400, 599, whole=True)
        elif name == "retry_after":
            out[name] = _bounded(name, value, 0, 86_400, whole=True)
        elif name == "mode":
            if value not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}, got {value!r}")
            out[name] = value
        elif name == "api_key":
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"api_key must be a non-empty string or null, got {value!r}")
            out[name] = value
    return out


class Stats:
    """Request counters per provider ("other" for unknown paths)."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.clear()

    def clear(self) -> None:
        """Zero the counters; in-flight stays true to what is still open."""
        self.requests: dict[str, int] = {}
        self.streams: dict[str, int] = {}
        self.status: dict[str, dict[int, int]] = {}
        self.hung: dict[str, int] = {}  # answered by "timeout" mode: never
        self.dropped: dict[str, int] = {}  # answered by "refuse" mode: a reset connection

    def begin(self, provider: str) -> None:
        self.requests[provider] = self.requests.get(provider, 0) + 1
        self.in_flight[provider] = self.in_flight.get(provider, 0) + 1

    def end(self, provider: str) -> None:
        self.in_flight[provider] -= 1

    def answered(self, provider: str, status: int, stream: bool) -> None:
        by_status = self.status.get(provider)
        if by_status is None:
            by_status = self.status[provider] = {}
        by_status[status] = by_status.get(status, 0) + 1
        if stream:
            self.streams[provider] = self.streams.get(provider, 0) + 1

    def count(self, table: dict[str, int], provider: str) -> None:
        table[provider] = table.get(provider, 0) + 1

    def snapshot(self, connections: int) -> dict:
        names = [*PROVIDERS, *sorted(set(self.requests) - set(PROVIDERS))]
        providers = {
            p: {
                "requests": self.requests.get(p, 0),
                "in_flight": self.in_flight.get(p, 0),
                "streams": self.streams.get(p, 0),
                "status": {str(k): v for k, v in sorted(self.status.get(p, {}).items())},
                "hung": self.hung.get(p, 0),
                "dropped": self.dropped.get(p, 0),
            }
            for p in names
        }
        status: dict[str, int] = {}
        for row in providers.values():
            for k, v in row["status"].items():
                status[k] = status.get(k, 0) + v
        total = {
            key: sum(row[key] for row in providers.values())
            for key in ("requests", "in_flight", "streams", "hung", "dropped")
        }
        total["status"] = dict(sorted(status.items()))
        return {"providers": providers, "total": total, "connections": connections}
