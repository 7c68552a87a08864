"""What a request costs: one price table (USD per 1M input and output tokens) for the ledger, budgets and metrics.

The defaults cover the models the adapters' catalogues name (the providers'
list prices); the TOML ``[pricing]`` table overrides or adds entries:

    [pricing]
    "gpt-4o" = { input = 2.5, output = 10.0 }
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


DEFAULTS: dict[str, Price] = {
    # OpenAI
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "o3-mini": Price(1.10, 4.40),
    # Anthropic
    "claude-3-5-haiku-latest": Price(0.80, 4.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-opus-4-1": Price(15.00, 75.00),
    # Google
    "gemini-2.0-flash": Price(0.10, 0.40),
    "gemini-2.5-flash": Price(0.30, 2.50),
    "gemini-2.5-pro": Price(1.25, 10.00),
}
DEFAULT = Price(15.00, 75.00)


class Prices:
    """The price table; ``cost`` is a dict lookup (memoised per model name) and two multiplications."""

    __slots__ = ("table", "default", "_memo")

    def __init__(self, prices: dict[str, Price] | None = None, default: Price = DEFAULT) -> None:
        self.table = dict(DEFAULTS if prices is None else prices)
        self.default = default
        self._memo: dict[str, Price] = {}

    @classmethod
    def from_table(cls, raw: dict[str, Any]) -> "Prices":
        """The defaults with a TOML ``[pricing]`` table on top; a bad entry raises ConfigError naming it."""
        prices = dict(DEFAULTS)
        default = DEFAULT
        for model, entry in raw.items():
            name = f"pricing.{model}"
            entry = table(name, entry)
            unknown = set(entry) - {"input", "output"}
            if unknown or not {"input", "output"} <= set(entry):
                raise ConfigError(f"{name}: expected {{ input = USD per 1M tokens, output = USD per 1M tokens }}")
            price = Price(number(f"{name}.input", entry["input"], 0, 1e6), number(f"{name}.output", entry["output"], 0, 1e6))
            if model == "default":
                default = price
            else:
                prices[model] = price
        return cls(prices, default)

    def price(self, model: str | None) -> Price:
        if not model:
            return self.default
        found = self._memo.get(model)
        if found is None:
            found = self.table.get(model)
            if found is None:
                prefixes = [m for m in self.table if model.startswith(m)]
                found = self.table[max(prefixes, key=len)] if prefixes else self.default
            if len(self._memo) < 4096:  # client-chosen names must not grow memory without bound
                self._memo[model] = found
        return found

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> float:
        p = self.price(model)
        return (prompt_tokens * p.input + completion_tokens * p.output) / 1_000_000
