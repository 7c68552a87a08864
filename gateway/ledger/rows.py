"""A finished request as a ledger row: the finish listener that feeds the writer."""

from __future__ import annotations

import datetime as dt
from time import time

_UTC = dt.timezone.utc

# A row is a tuple in this order (the ``usage`` table's columns but ``id``): no dict per request,
# and the writer hands the tuples to the driver as they are.
COLUMNS = (
    "request_id", "ts", "day", "key_name", "model", "provider", "deployment", "surface", "status", "cache",
    "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "latency_ms", "upstream_ms", "overhead_ms",
    "first_chunk_ms", "attempts", "error_type", "error_code", "client_gone", "usage_estimated",
)


class Recorder:
    """``on_finish(req, outcome)``: builds the row and hands it to the writer; never waits, never raises on its own."""

    __slots__ = ("writer", "prices", "_day", "_day_ends")

    def __init__(self, writer, prices) -> None:
        self.writer = writer
        self.prices = prices
        self._day: dt.date | None = None
        self._day_ends = 0.0

    def _today(self, now: float) -> dt.date:
        if now >= self._day_ends:  # one date object per UTC day, not one per request
            self._day = dt.datetime.fromtimestamp(now, _UTC).date()
            self._day_ends = dt.datetime.combine(self._day + dt.timedelta(days=1), dt.time(), _UTC).timestamp()
        return self._day  # type: ignore[return-value]

    def on_finish(self, req, outcome) -> None:
        if outcome.surface != "ws" and not outcome.route.endswith("/chat/completions"):
            return  # health checks, reports and admin calls are not usage (chat over /ws is)
        now = time()
        d = outcome.deployment
        upstream_model = d.model if d is not None and not outcome.from_cache else outcome.model
        # A cache hit cost nothing upstream; a cut stream costs what the provider reported before the cut,
        # or, when it reported nothing (OpenAI's usage comes last), the estimate (``usage_estimated``).
        cost = 0.0 if outcome.from_cache else self.prices.cost(upstream_model, outcome.prompt_tokens, outcome.completion_tokens)
        latency = outcome.finished - outcome.started
        first = outcome.first_chunk_seconds
        self.writer.add((
            outcome.request_id, now, self._today(now), outcome.key_name, outcome.model,
            d.provider if d is not None else None, d.name if d is not None else None,
            outcome.surface, outcome.status, outcome.cache,
            outcome.prompt_tokens, outcome.completion_tokens, outcome.cached_tokens, cost,
            latency * 1000.0, outcome.upstream_seconds * 1000.0, (latency - outcome.upstream_seconds) * 1000.0,
            None if first is None else first * 1000.0,
            outcome.attempts, outcome.error_type, outcome.error_code, outcome.client_gone, outcome.usage_estimated,
        ))
