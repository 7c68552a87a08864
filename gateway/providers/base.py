"""The shape every provider adapter shares.

An adapter is a module of pure functions (no I/O), so each one is testable
without a network:

- ``build_request(body, deployment, stream) -> UpstreamRequest``
- ``parse_response(data, deployment) -> dict``  (an OpenAI ``chat.completion``)
- ``new_stream(body, deployment) -> StreamState``
- ``parse_stream_event(data, state) -> list[dict]``  (OpenAI ``chat.completion.chunk`` dicts)
- ``map_error(status, data) -> GatewayError``

An adapter whose ``parse_stream_event`` checks the chunks it returns (as
``common.check_chunks`` does, counting their characters into the state) sets
``CHECKS_CHUNKS = True``, and the stream skips the common check.

``body`` is an already validated OpenAI Chat Completions request (a dict).

``Provider`` holds what the rest of the gateway knows about one provider; each
provider's folder defines one, next to its adapter and its simulated wire
format, and ``registry`` lists them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from types import ModuleType
from typing import Mapping
from urllib.parse import urlsplit


@dataclass(slots=True)
class Deployment:
    """One place a logical model can be served from."""

    name: str  # unique and stable, e.g. "openai:gpt-4o-mini"; used in headers, metrics, breakers
    provider: str  # a name in the provider registry: "openai" | "anthropic" | "google"
    model: str  # the upstream model id
    base_url: str  # no trailing slash, e.g. "https://api.openai.com/v1"
    api_key: str
    weight: float = 1.0
    transport: str = "aiohttp"  # "aiohttp" | "httpx"
    timeout: float | None = None  # per-attempt cap; None: the request deadline only


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    max_bytes: int | None = None  # the answer's size limit (GATEWAY_MAX_UPSTREAM_BYTES), set by gateway.upstream


@dataclass(slots=True)
class StreamState:
    """Per-stream scratch space an adapter keeps between events.

    ``usage`` is filled by the adapter in OpenAI's shape
    (``prompt_tokens``, ``completion_tokens``, ``total_tokens``) as soon as the
    provider reports it; the pipeline emits the usage chunk itself when the
    client asked for ``stream_options.include_usage``.
    """

    id: str
    model: str
    created: int
    usage: dict | None = None
    finish_reason: str | None = None
    extra: dict = field(default_factory=dict)
    content_chars: int = 0  # answer characters in the chunks checked so far (gateway/upstream.py)
    mirrored: bool = False  # an adapter that mirrors the upstream's chunk identity has done so


@dataclass(frozen=True, slots=True)
class Provider:
    """One provider's facts, so that adding a provider touches its folder and one registry line.

    Its folder's ``provider.toml`` holds them as data (``load``); the environment variables and the
    simulated module follow from the name unless given.
    """

    name: str  # as in Deployment.provider, [providers.NAME] and /_sim/config
    adapter: ModuleType  # the pure transforms above
    prefix: str  # regex: the model names that are this provider's when no group or alias names them
    catalogue: tuple[str, ...]  # what /v1/models lists and implicit groups serve (with dated snapshots of these)
    small: str  # regex: a model name of the small tier (any provider's), for implicit fallback
    equivalent: Mapping[str, str]  # tier ("small" | "large") -> this provider's like-for-like model
    base_url: str  # the public API, used when no base URL is configured
    api_key_env: str = ""  # default NAME_API_KEY
    base_url_env: str = ""  # default NAME_BASE_URL
    transport_env: str = ""  # default NAME_TRANSPORT
    simulated: str = ""  # the module of its simulated wire format (imported by the simulator only); default its folder's

    def __post_init__(self) -> None:
        env = self.name.upper()
        for attr, default in (("api_key_env", f"{env}_API_KEY"), ("base_url_env", f"{env}_BASE_URL"),
                              ("transport_env", f"{env}_TRANSPORT"), ("simulated", f"gateway.providers.{self.name}.simulated")):
            if not getattr(self, attr):
                object.__setattr__(self, attr, default)  # frozen: set once, here

    @classmethod
    def load(cls, package: str, adapter: ModuleType) -> Provider:
        """The provider whose folder is ``package`` (named for it), from its ``provider.toml``."""
        facts = tomllib.loads(resources.files(package).joinpath("provider.toml").read_text(encoding="utf-8"))
        facts["catalogue"] = tuple(facts["catalogue"])
        return cls(name=package.rpartition(".")[2], adapter=adapter, **facts)

    @property
    def base_path(self) -> str:
        """The path its API lives under (``/v1`` for OpenAI); the simulator serves the same paths."""
        return urlsplit(self.base_url).path
