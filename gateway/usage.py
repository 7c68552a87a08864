"""Per-key token usage, counted in process.

A dict update per answer: cheap enough for the hot path and lock-free (one
event loop per worker). Each worker counts its own traffic; metrics export
these counters so Prometheus sums across workers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Counter:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: int = 0


class Usage:
    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], Counter] = {}

    def record(self, key_name: str, model: str, usage: dict | None, cached: bool = False) -> None:
        c = self.by_key.get((key_name, model))
        if c is None:
            c = self.by_key[(key_name, model)] = Counter()
        c.requests += 1
        if cached:
            c.cached += 1
        elif usage:
            c.prompt_tokens += usage.get("prompt_tokens") or 0
            c.completion_tokens += usage.get("completion_tokens") or 0

    def report(self, key_name: str | None = None) -> list[dict]:
        return [
            {
                "key": k,
                "model": m,
                "requests": c.requests,
                "cached_requests": c.cached,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "total_tokens": c.prompt_tokens + c.completion_tokens,
            }
            for (k, m), c in self.by_key.items()
            if key_name is None or k == key_name
        ]
