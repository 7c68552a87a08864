"""The configuration a request runs under, swapped whole on reload.

A reload builds a new ``Snapshot`` (settings, keys, model groups bound to
their deployments' health, aliases) and the router assigns it in one
statement; admission reads the current one once, so a request sees either the
old configuration or the new one, never a mix, and keeps the one it started
with until it ends.
"""

from __future__ import annotations

from gateway.auth import ApiKey
from gateway.config import ModelGroup, Settings


class Snapshot:
    __slots__ = ("settings", "keys", "groups", "aliases", "implicit", "fallback")

    def __init__(self, settings: Settings, groups: dict[str, ModelGroup]) -> None:
        self.settings = settings
        self.keys: dict[str, ApiKey] = settings.api_keys
        self.groups = groups
        self.aliases = dict(settings.aliases)
        # Groups made on first use for models no group names (provider prefixes), bounded by the router.
        self.implicit: dict[str, ModelGroup] = {}
        f = settings.implicit_fallback
        self.fallback = settings.simulated if f is None else f
