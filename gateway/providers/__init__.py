"""Provider adapters by name; each is a module of pure functions (see ``base``)."""

from __future__ import annotations

from types import ModuleType

from gateway.providers import anthropic, google, openai

ADAPTERS: dict[str, ModuleType] = {"openai": openai, "anthropic": anthropic, "google": google}


def get_adapter(name: str) -> ModuleType:
    """The adapter for ``Deployment.provider``; a ValueError names the known ones (a config mistake)."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"Unknown provider {name!r}; expected one of: {', '.join(ADAPTERS)}.") from None
