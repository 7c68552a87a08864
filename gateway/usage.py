"""Per-key token usage, counted in process: a finish listener.

A dict update per answer: cheap and lock-free (one event loop per worker).
Each worker counts its own traffic. Rows are keyed by (key, model); both are
bounded already (configured keys; models the gateway serves), and the table
is capped at ``MAX_ROWS`` besides: past it, new pairs are counted under the
model ``OTHER`` of their key, so nothing is lost and nothing grows.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_ROWS = 10_000
OTHER = "(other)"


@dataclass(slots=True)
class Counter:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: int = 0


class Usage:
    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], Counter] = {}

    def on_finish(self, req, outcome) -> None:
        """Count every answer the client got: from a provider (a cut stream too) or from the cache."""
        if req is None or outcome.status != 200:
            return
        row = (outcome.key_name, outcome.model)
        c = self.by_key.get(row)
        if c is None:
            if len(self.by_key) >= MAX_ROWS:
                row = (outcome.key_name, OTHER)
                c = self.by_key.get(row)
            if c is None:
                c = self.by_key[row] = Counter()
        c.requests += 1
        cache = outcome.cache
        if cache == "hit" or cache == "semantic-hit":  # Outcome.from_cache, inline
            c.cached += 1
        else:
            c.prompt_tokens += outcome.prompt_tokens
            c.completion_tokens += outcome.completion_tokens

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
