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
    """``on_finish(req, outcome)``: builds the row and hands it to the writer; never waits, never raises on its own.

    The row holds values in the writer's driver's own types (``writer.day``, ``writer.flags``): sqlite3
    binds a ``date`` or a ``bool`` through a Python-level adapter lookup per value, which was a third of
    the SQLite writer's work per row (callgrind), so for SQLite the day is an ISO string and flags are 0/1.
    A ``None`` costs sqlite3 the same lookup (a tuple built, hashed and looked up per NULL, ~2,500
    instructions a row for the 4-5 NULLs of a plain answer), so for SQLite a missing text is '' and a
    missing first-chunk time -1.0, which the INSERT turns back into NULL (``writer.nil``).
    """

    __slots__ = ("writer", "add", "prices", "flags", "nil", "no_ms", "_day", "_day_ends")

    def __init__(self, writer, prices) -> None:
        self.writer = writer
        self.add = writer.add
        self.prices = prices
        self.flags = writer.flags  # (false, true) as the driver binds them: indexed by the outcome's bool
        self.nil, self.no_ms = writer.nil  # a NULL text / float column as handed to the writer (it stores NULL)
        self._day = None
        self._day_ends = 0.0

    def _today(self, now: float):
        if now >= self._day_ends:  # one day value per UTC day, not one per request
            day = dt.datetime.fromtimestamp(now, _UTC).date()
            self._day = self.writer.day(day)
            self._day_ends = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), _UTC).timestamp()
        return self._day

    def on_finish(self, req, outcome) -> None:
        if outcome.surface != "ws" and not outcome.route.endswith("/chat/completions"):
            return  # health checks, reports and admin calls are not usage (chat over /ws is)
        now = time()
        d = outcome.deployment
        # Prompt tokens served from the provider's prompt cache cost its ``cached_input`` rate (as the access
        # log and metrics price them). A cache hit cost nothing upstream; a cut stream costs what the provider
        # reported before the cut, or, when it reported nothing (OpenAI's usage comes last), the estimate
        # (``usage_estimated``).
        provider, name, model = (None, None, outcome.model) if d is None else (d.provider, d.name, d.model)
        prompt = outcome.prompt_tokens
        cost = 0.0 if outcome.from_cache else self.prices.cost(model, prompt, outcome.completion_tokens, outcome.cached_tokens)
        nil = self.nil
        latency = (outcome.finished - outcome.started) * 1000.0
        upstream = outcome.upstream_seconds * 1000.0
        first = outcome.first_chunk_seconds
        flags = self.flags
        self.add((
            outcome.request_id, now, self._day if now < self._day_ends else self._today(now), outcome.key_name or nil,
            outcome.model or nil, provider or nil, name or nil, outcome.surface, outcome.status, outcome.cache or nil,
            prompt, outcome.completion_tokens, outcome.cached_tokens, cost,
            latency, upstream, latency - upstream, self.no_ms if first is None else first * 1000.0,
            outcome.attempts, outcome.error_type or nil, outcome.error_code or nil,
            flags[outcome.client_gone], flags[outcome.usage_estimated],
        ))
