"""USD prices per million tokens, for the cost metrics and the access log.

Defaults are the providers' public list prices for the models the adapters
know (as of late 2025); the config file's ``[prices."model"]`` tables
override or add models. A model without a price costs 0 and is counted as
unpriced, so a missing row shows up instead of passing for free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class PriceError(ValueError):
    """A bad ``[prices]`` entry (the config loader turns it into a ConfigError)."""


@dataclass(frozen=True, slots=True)
class Price:
    input: float  # USD per 1M prompt tokens
    output: float  # USD per 1M completion tokens
    cached_input: float | None = None  # USD per 1M prompt tokens served from the provider's prompt cache

    def cost(self, prompt: int, completion: int, cached: int = 0) -> float:
        cached = min(cached, prompt)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((prompt - cached) * self.input + cached * cached_rate + completion * self.output) / 1_000_000


DEFAULTS: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "o3-mini": Price(1.10, 4.40, 0.55),
    "claude-3-5-haiku-latest": Price(0.80, 4.00, 0.08),
    "claude-sonnet-4-5": Price(3.00, 15.00, 0.30),
    "claude-opus-4-1": Price(15.00, 75.00, 1.50),
    "gemini-2.0-flash": Price(0.10, 0.40, 0.025),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.075),
    "gemini-2.5-pro": Price(1.25, 10.00, 0.31),
}


def _rate(where: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != raw or not 0 <= raw <= 10_000:
        raise PriceError(f"{where}: expected USD per million tokens in [0, 10000], got {raw!r}")
    return float(raw)


def table(doc: dict[str, Any] | None) -> dict[str, Price]:
    """The defaults with the config file's ``[prices]`` on top; raises PriceError naming a bad entry."""
    prices = dict(DEFAULTS)
    for model, entry in (doc or {}).items():
        where = f"prices.{model}"
        if not isinstance(entry, dict):
            raise PriceError(f"{where}: expected a table with input and output")
        unknown = set(entry) - {"input", "output", "cached_input"}
        if unknown:
            raise PriceError(f"{where}: unknown setting {sorted(unknown)[0]!r}")
        if "input" not in entry or "output" not in entry:
            raise PriceError(f"{where}: needs both input and output")
        cached = entry.get("cached_input")
        prices[model] = Price(
            _rate(f"{where}.input", entry["input"]),
            _rate(f"{where}.output", entry["output"]),
            None if cached is None else _rate(f"{where}.cached_input", cached),
        )
    return prices
