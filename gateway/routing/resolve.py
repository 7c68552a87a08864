"""Model names → model groups: config groups, aliases, then provider name prefixes.

A name no group or alias holds is an *implicit* group: the deployment of the
provider whose prefix (from the registry) matches it, with, when implicit
fallback is on, every other configured provider's like-for-like model of the
same tier after it. Implicit groups are kept once built, up to a bound, since
clients choose the names.
"""

from __future__ import annotations

import re
from typing import Callable

from gateway.auth import ApiKey
from gateway.config import ModelGroup, ProviderSettings, Settings
from gateway.errors import GatewayError
from gateway.providers.base import Deployment
from gateway.providers.registry import PROVIDERS

# One alternation group per provider, in registry order: ``lastindex`` names the provider.
_PREFIX = re.compile("^(?:" + "|".join(f"({p.prefix})" for p in PROVIDERS.values()) + ")")
_PROVIDER_BY_GROUP = tuple(PROVIDERS)
_SMALL = re.compile("|".join(p.small for p in PROVIDERS.values()))
_MAX_IMPLICIT = 4096  # client-chosen names must not grow memory without bound

# Beyond configured groups and aliases, implicit groups serve only catalogued models and their dated
# snapshots (gpt-4o-mini-2024-07-18, claude-3-5-haiku-20241022, gemini-2.0-flash-001): any other name
# is a 404 before routing state exists for it, so client-chosen names cannot grow memory.
_SNAPSHOT = re.compile(r"-(?:latest|\d{4}-\d{2}-\d{2}|\d{8}|\d{3})$")
_CATALOGUED = frozenset(_SNAPSHOT.sub("", m) for p in PROVIDERS.values() for m in p.catalogue)


def catalogued(model: str) -> bool:
    return _SNAPSHOT.sub("", model) in _CATALOGUED

# Gives a new group its run-time state (the router's plan); ``register`` is False for one-offs.
Bind = Callable[[ModelGroup, bool], ModelGroup]


def provider_for(model: str) -> str | None:
    m = _PREFIX.match(model)
    if m is None:
        return None
    return _PROVIDER_BY_GROUP[m.lastindex - 1]


def equivalent_model(model: str, provider: str) -> str:
    return PROVIDERS[provider].equivalent["small" if _SMALL.search(model) else "large"]


class Snapshot:
    """The configuration one (re)load produces: settings, keys, and the model names it serves.

    The router assigns a new one in one statement on reload; admission reads
    the current one once per request, so a request runs under one snapshot
    from start to end, never a mix of two.
    """

    __slots__ = ("settings", "keys", "groups", "aliases", "implicit", "fallback", "bind")

    def __init__(self, settings: Settings, groups: dict[str, ModelGroup], bind: Bind) -> None:
        self.settings = settings
        self.keys: dict[str, ApiKey] = settings.api_keys
        self.groups = groups
        self.aliases = dict(settings.aliases)
        self.implicit: dict[str, ModelGroup] = {}
        f = settings.implicit_fallback
        self.fallback = settings.simulated if f is None else f
        self.bind = bind

    def resolve(self, model: str) -> ModelGroup:
        group = self.groups.get(model) or self.implicit.get(model)
        if group is not None:
            return group
        target = self.aliases.get(model, model)
        group = self.groups.get(target) or self.implicit.get(target)
        if group is None:
            group = self._implicit_group(target)
        if len(self.implicit) < _MAX_IMPLICIT:
            self.implicit[model] = group
        return group

    def _implicit_group(self, model: str) -> ModelGroup:
        """A model no group names: its provider's deployment; with fallback on, the other providers' like-for-like model after it."""
        provider = provider_for(model)
        if provider is None or not catalogued(model):
            raise GatewayError(
                404,
                f"The model '{model}' does not exist or you do not have access to it.",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        providers = self.settings.providers
        p = providers[provider]
        if not p.api_key:
            raise GatewayError(
                404,
                f"The model '{model}' is not available: provider '{provider}' is not configured on this gateway.",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        deployments = [_implicit_deployment(p, model)]
        if self.fallback and "embedding" not in model:  # another provider's chat model is no embedding model
            for other in PROVIDERS:
                q = providers.get(other)
                if other != provider and q is not None and q.api_key:
                    deployments.append(_implicit_deployment(q, equivalent_model(model, other)))
        strategy = "priority" if len(deployments) > 1 else "weighted"
        group = ModelGroup(name=model, deployments=deployments, strategy=strategy, policy=self.settings.routing)
        return self.bind(group, len(self.implicit) < _MAX_IMPLICIT)  # uncached ones are one-offs

    def model_names(self) -> list[str]:
        """What /v1/models lists: groups, aliases, then each configured provider's catalogue."""
        names = dict.fromkeys(self.groups)
        names.update(dict.fromkeys(self.aliases))
        for provider in self.settings.configured_providers:
            names.update(dict.fromkeys(PROVIDERS[provider].catalogue))
        return list(names)


def _implicit_deployment(p: ProviderSettings, model: str) -> Deployment:
    return Deployment(
        name=f"{p.name}:{model}",
        provider=p.name,
        model=model,
        base_url=p.base_url,
        api_key=p.api_key,
        transport=p.transport,
        timeout=p.timeout,
    )
