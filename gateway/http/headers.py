"""The one builder of response headers, for every response the gateway sends.

Chat answers, streams, errors and the Starlette routes all carry
``x-request-id`` and ``x-gateway-overhead-ms``; chat answers also say where
they came from (cache or deployment), all read from the request's ``Outcome``.
"""

from __future__ import annotations

from time import perf_counter

from gateway.errors import GatewayError
from gateway.pipeline.outcome import Outcome
from gateway.ratelimit import format_reset

Headers = list[tuple[bytes, bytes]]

JSON = (b"content-type", b"application/json")
SSE = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


def build(outcome: Outcome, *extra: tuple[bytes, bytes], err: GatewayError | None = None) -> Headers:
    out = [
        *extra,
        (b"x-request-id", outcome.request_id.encode("latin-1")),
        (b"x-gateway-overhead-ms", b"%.3f" % outcome.overhead_ms(perf_counter())),
    ]
    if outcome.limit_requests is not None:
        _limits(out, outcome.limit_requests, b"requests")
        if outcome.limit_tokens is not None:
            _limits(out, outcome.limit_tokens, b"tokens")
    if err is not None:
        if err.headers:
            out.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items())
        if outcome.attempts:
            out.append((b"x-gateway-attempts", str(outcome.attempts).encode()))
        return out
    status = outcome.cache
    if status is not None:
        out.append((b"x-cache", status.encode()))
        if outcome.similarity is not None:
            out.append((b"x-cache-similarity", b"%.4f" % outcome.similarity))
        if status != "miss" and status != "bypass":
            return out  # served from the cache: no provider was involved
    d = outcome.deployment
    if d is not None:
        pair = _deployments.get(d.name)
        if pair is None:
            pair = _deployment_pair(d)
        out += pair
        n = outcome.attempts
        out.append(_ATTEMPTS[n] if n < len(_ATTEMPTS) else (b"x-gateway-attempts", str(n).encode()))
        if outcome.failover:
            out.append((b"x-gateway-failover", outcome.failover.encode("latin-1", "replace")))
    return out


# Encoded once, not per answer: deployments are few (the config's, and the catalogued implicit ones).
_deployments: dict[str, tuple[tuple[bytes, bytes], tuple[bytes, bytes]]] = {}
_ATTEMPTS = ((b"x-gateway-attempts", b"1"),) + tuple((b"x-gateway-attempts", str(i).encode()) for i in range(1, 16))


def _deployment_pair(d) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    if len(_deployments) >= 4096:
        _deployments.clear()  # bounded whatever names a config reload brings
    pair = _deployments[d.name] = (
        (b"x-gateway-provider", d.provider.encode()),
        (b"x-gateway-deployment", d.name.encode("latin-1", "replace")),
    )
    return pair


def _limits(out: Headers, state, kind: bytes) -> None:
    """OpenAI's trio: the per-minute limit, what is left now, and when the bucket is full again."""
    out.append((b"x-ratelimit-limit-" + kind, b"%d" % state.limit))
    out.append((b"x-ratelimit-remaining-" + kind, b"%d" % state.remaining))
    out.append((b"x-ratelimit-reset-" + kind, format_reset(state.reset).encode()))
