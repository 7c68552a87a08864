"""The shape every provider adapter shares.

An adapter is a module of pure functions (no I/O), so each one is testable
without a network:

- ``build_request(body, deployment, stream) -> UpstreamRequest``
- ``parse_response(data, deployment) -> dict``  (an OpenAI ``chat.completion``)
- ``new_stream(body, deployment) -> StreamState``
- ``parse_stream_event(data, state) -> list[dict]``  (OpenAI ``chat.completion.chunk`` dicts)
- ``map_error(status, data) -> GatewayError``

``body`` is an already validated OpenAI Chat Completions request (a dict).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Deployment:
    """One place a logical model can be served from."""

    name: str  # unique and stable, e.g. "openai:gpt-4o-mini"; used in headers, metrics, breakers
    provider: str  # "openai" | "anthropic" | "google"
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
