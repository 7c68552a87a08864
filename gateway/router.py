"""Model groups and deployment choice.

A client names a logical model; the router resolves it (config groups,
aliases, then provider name prefixes) to a group of deployments, picks one and
makes the attempt through ``gateway.upstream``.
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import AsyncIterator

from gateway.config import ModelGroup, Settings
from gateway.errors import GatewayError
from gateway.providers.base import Deployment
from gateway.request import ChatRequest
from gateway.transport import Transport, make_transport
from gateway import upstream

# Model name → provider when no group or alias names it (OpenAI's o-series: o1, o3, o4-mini...).
_PREFIX = re.compile(r"^(?:(gpt-|chatgpt-|o\d)|(claude-)|(gemini-))")
_PROVIDER_BY_GROUP = ("openai", "anthropic", "google")
_MAX_IMPLICIT = 4096  # client-chosen names must not grow memory without bound

# What /v1/models lists for each configured provider, besides groups and aliases.
CATALOGUE = {
    "openai": ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini"),
    "anthropic": ("claude-3-5-haiku-latest", "claude-sonnet-4-5", "claude-opus-4-1"),
    "google": ("gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro"),
}


def provider_for(model: str) -> str | None:
    m = _PREFIX.match(model)
    if m is None:
        return None
    return _PROVIDER_BY_GROUP[m.lastindex - 1]


class Router:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.groups: dict[str, ModelGroup] = dict(settings.models)
        self.aliases = dict(settings.aliases)
        self._implicit: dict[str, ModelGroup] = {}
        self.transports: dict[tuple[str, str], Transport] = {}
        for name, p in settings.providers.items():
            if p.api_key:
                self._transport(name, p.transport)
        for group in self.groups.values():
            for d in group.deployments:
                self._transport(d.provider, d.transport)

    def _transport(self, provider: str, kind: str) -> Transport:
        key = (provider, kind)
        t = self.transports.get(key)
        if t is None:
            s = self.settings
            t = make_transport(kind, s.worker_connections, s.keepalive_timeout)
            self.transports[key] = t
        return t

    async def close(self) -> None:
        await asyncio.gather(*(t.close() for t in self.transports.values()), return_exceptions=True)

    # --- resolution --------------------------------------------------------------

    def resolve(self, model: str) -> ModelGroup:
        group = self.groups.get(model) or self._implicit.get(model)
        if group is not None:
            return group
        target = self.aliases.get(model, model)
        group = self.groups.get(target)
        if group is None:
            group = self._implicit_group(target)
        if len(self._implicit) < _MAX_IMPLICIT:
            self._implicit[model] = group
        return group

    def _implicit_group(self, model: str) -> ModelGroup:
        provider = provider_for(model)
        if provider is None:
            raise GatewayError(
                404,
                f"The model '{model}' does not exist or you do not have access to it.",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        p = self.settings.providers[provider]
        if not p.api_key:
            raise GatewayError(
                404,
                f"The model '{model}' is not available: provider '{provider}' is not configured on this gateway.",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        d = Deployment(
            name=f"{provider}:{model}",
            provider=provider,
            model=model,
            base_url=p.base_url,
            api_key=p.api_key,
            transport=p.transport,
            timeout=p.timeout,
        )
        return ModelGroup(name=model, deployments=[d])

    def model_names(self) -> list[str]:
        names = dict.fromkeys(self.groups)
        names.update(dict.fromkeys(self.aliases))
        for provider in self.settings.configured_providers:
            names.update(dict.fromkeys(CATALOGUE[provider]))
        return list(names)

    # --- attempts ----------------------------------------------------------------

    def pick(self, group: ModelGroup) -> Deployment:
        deployments = group.deployments
        if len(deployments) == 1:
            return deployments[0]
        return random.choices(deployments, weights=[d.weight for d in deployments])[0]

    def _timeout(self, req: ChatRequest, d: Deployment) -> float:
        remaining = req.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise GatewayError(504, "The request deadline passed before an answer came.", "api_error", None, "deadline_exceeded")
        return min(remaining, d.timeout) if d.timeout else remaining

    def _note(self, req: ChatRequest, d: Deployment, attempts: int) -> None:
        req.meta["deployment"] = d
        req.meta["attempts"] = attempts

    async def complete(self, req: ChatRequest, group: ModelGroup) -> dict:
        d = self.pick(group)
        self._note(req, d, 1)
        return await upstream.complete(req, d, self._transport(d.provider, d.transport), self._timeout(req, d))

    async def stream(self, req: ChatRequest, group: ModelGroup) -> tuple[list[dict], AsyncIterator[list[dict]], upstream.UpstreamStream]:
        """Open a stream and wait for its first batch, so failures before any byte can fail over."""
        d = self.pick(group)
        self._note(req, d, 1)
        s = await upstream.open_stream(req, d, self._transport(d.provider, d.transport), self._timeout(req, d))
        it = s.batches().__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            first = []
        except BaseException:
            await s.close()
            raise
        return first, it, s
