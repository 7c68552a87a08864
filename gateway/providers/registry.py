"""Every provider the gateway speaks, in one list: adding one is its folder plus one line here.

The order is the order of everything derived from it (config tables, implicit
fallback, the simulator's stats).
"""

from __future__ import annotations

from types import ModuleType

from gateway.providers import anthropic, google, openai
from gateway.providers.base import Provider

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        openai.PROVIDER,
        anthropic.PROVIDER,
        google.PROVIDER,
    )
}
NAMES: tuple[str, ...] = tuple(PROVIDERS)
ADAPTERS: dict[str, ModuleType] = {name: p.adapter for name, p in PROVIDERS.items()}


def get_adapter(name: str) -> ModuleType:
    """The adapter for ``Deployment.provider`` (a dict lookup: it runs per request); a ValueError names the known ones."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"Unknown provider {name!r}; expected one of: {', '.join(ADAPTERS)}.") from None
