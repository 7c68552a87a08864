"""Provider adapters, one folder per provider; ``registry`` lists them (see ``base`` for the shapes)."""

from gateway.providers.registry import ADAPTERS, PROVIDERS, get_adapter

__all__ = ["ADAPTERS", "PROVIDERS", "get_adapter"]
