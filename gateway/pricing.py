"""What a request costs: the one price table (USD per 1M tokens) for the ledger, budgets, metrics and access log.

The defaults cover the models the adapters' catalogues name (the providers'
list prices); the TOML ``[pricing]`` table overrides or adds entries:

    [pricing]
    "gpt-4o" = { input = 2.5, output = 10.0, cached_input = 1.25 }
    default = { input = 15.0, output = 75.0 }   # any model the table does not know

A dated or suffixed name (``gpt-4o-2024-08-06``) takes the price of the
longest table entry it starts with. A model nobody priced costs ``default``,
the dearest known price, so a budget errs on the side of refusing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from gateway.config.types import ConfigError
from gateway.config.validate import number, table


class Price(NamedTuple):
    input: float  # USD per 1M prompt tokens
    output: float  # USD per 1M completion tokens
    cached_input: float | None = None  # USD per 1M prompt tokens served from the provider's prompt cache

    def cost(self, prompt: int, completion: int, cached: int = 0) -> float:
        cached = min(cached, prompt)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((prompt - cached) * self.input + cached * cached_rate + completion * self.output) / 1_000_000


DEFAULTS: dict[str, Price] = {
    # OpenAI
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "o3-mini": Price(1.10, 4.40, 0.55),
    # Anthropic
    "claude-3-5-haiku-latest": Price(0.80, 4.00, 0.08),
    "claude-sonnet-4-5": Price(3.00, 15.00, 0.30),
    "claude-opus-4-1": Price(15.00, 75.00, 1.50),
    # Google
    "gemini-2.0-flash": Price(0.10, 0.40, 0.025),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.075),
    "gemini-2.5-pro": Price(1.25, 10.00, 0.31),
}
DEFAULT = Price(15.00, 75.00)
_UNSET = object()


class Prices:
    """The price table; ``cost`` is a dict lookup (memoised per model name) and two multiplications."""

    __slots__ = ("table", "default", "_memo", "_priced")

    def __init__(self, prices: dict[str, Price] | None = None, default: Price = DEFAULT) -> None:
        self.table = dict(DEFAULTS if prices is None else prices)
        self.default = default
        self._memo: dict[str, Price | None] = {}
        self._priced: dict[str | None, Price] = {}  # model -> price() for cost(): one lookup a row, not three calls

    @classmethod
    def from_table(cls, raw: dict[str, Any]) -> "Prices":
        """The defaults with a TOML ``[pricing]`` table on top; a bad entry raises ConfigError naming it."""
        prices = dict(DEFAULTS)
        default = DEFAULT
        for model, entry in raw.items():
            name = f"pricing.{model}"
            entry = table(name, entry)
            unknown = set(entry) - {"input", "output", "cached_input"}
            if unknown or not {"input", "output"} <= set(entry):
                raise ConfigError(f"{name}: expected {{ input = USD per 1M tokens, output = USD per 1M tokens }}")
            cached = entry.get("cached_input")
            price = Price(
                number(f"{name}.input", entry["input"], 0, 1e6),
                number(f"{name}.output", entry["output"], 0, 1e6),
                None if cached is None else number(f"{name}.cached_input", cached, 0, 1e6),
            )
            if model == "default":
                default = price
            else:
                prices[model] = price
        return cls(prices, default)

    def price(self, model: str | None) -> Price:
        """The model's price, else ``default`` (the dearest: what a budget reserves for an unpriced model)."""
        found = self.known(model)
        return self.default if found is None else found

    def known(self, model: str | None) -> Price | None:
        """The model's own price (exact, else the longest entry it starts with), or None: metrics and the
        access log count an unpriced model as such rather than at an invented price."""
        if not model:
            return None
        found = self._memo.get(model, _UNSET)
        if found is _UNSET:
            found = self.table.get(model)
            if found is None:
                prefixes = [m for m in self.table if model.startswith(m)]
                found = self.table[max(prefixes, key=len)] if prefixes else None
            if len(self._memo) < 4096:  # client-chosen names must not grow memory without bound
                self._memo[model] = found
        return found

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        price = self._priced.get(model)
        if price is None:
            price = self.price(model)
            if len(self._priced) < 4096:  # bounded like ``_memo``
                self._priced[model] = price
        return price.cost(prompt_tokens, completion_tokens, cached_tokens)
