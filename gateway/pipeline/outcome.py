"""What happened to one request, as one typed record.

The pipeline stages fill it in as the request moves on (admission: key and
model; cache: status and similarity; router: deployment, attempts, failover;
transport: upstream time; relay: first chunk, status, client gone). Everything
that reports on a request afterwards (response headers, usage, metrics, logs,
a ledger) reads it instead of asking each stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Any

from gateway.errors import GatewayError
from gateway.providers.base import Deployment

# The closed set of error kinds, so a metric label or a ledger column has a fixed vocabulary.
CLIENT = "client"  # the client's request was wrong (4xx of ours, or a provider's 4xx for it)
POLICY = "policy"  # refused by a rule: key, model access, rate or budget limit
PROVIDER = "provider"  # the provider failed, timed out, or answered in a broken way
GATEWAY = "gateway"  # our own failure (a 500)

_POLICY_STATUSES = frozenset({401, 403, 429})


def error_type(err: GatewayError) -> str:
    if err.status == 500 and err.upstream_status is None:
        return GATEWAY
    if err.upstream_status is not None:
        # A provider's 4xx for the client's request is the client's; everything else is the provider's.
        s = err.upstream_status
        return CLIENT if 400 <= s < 500 and s not in (401, 403, 408, 429) else PROVIDER
    if err.status >= 500:
        return PROVIDER  # unreachable, time-out, no healthy deployment, malformed answer
    return POLICY if err.status in _POLICY_STATUSES else CLIENT


@dataclass(slots=True)
class Outcome:
    request_id: str
    started: float  # time.perf_counter() when the request arrived
    surface: str = "rest"  # rest | sse | ws
    route: str = ""  # the route template, never a raw path (bounded label values)
    method: str = "POST"
    key_name: str | None = None
    model: str | None = None  # as the client named it
    status: int = 0
    # Routing (router).
    deployment: Deployment | None = None
    attempts: int = 0
    failover: str | None = None  # "name (reason), ..." of the attempts that failed before the answer
    hedged: bool = False
    rerouted: bool = False  # another model answered what the first deployment could not express
    # Cache.
    cache: str | None = None  # hit | semantic-hit | miss | bypass; None when the cache did not run
    similarity: float | None = None
    # Usage as the provider reported it (a cut stream: what it reported so far; a cache hit: the stored answer's).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    usage_estimated: bool = False  # no usage arrived (a cut stream): the tokens above are the gateway's estimate
    content_chars: int = 0  # characters of answer relayed from a provider's stream (the estimate's source)
    # Limits (gateway/ratelimit.py): the state after admission, for the x-ratelimit-* headers.
    limit_requests: Any = None  # ratelimit.State, or None when no request limit ran
    limit_tokens: Any = None  # ratelimit.State when a token limit applies
    reserved_tokens: int = 0  # reserved at admission
    charged_tokens: int = 0  # charged since, beyond the reservation (negative: given back)
    # Time.
    upstream_seconds: float = 0.0  # spent waiting on providers (a hedge race's span counted once)
    waiting_since: float = 0.0  # perf_counter() when the wait now under way began; 0.0: none
    first_chunk_seconds: float | None = None  # arrival to the first chunk sent to the client
    chunks: int = 0  # stream chunks sent (the mean gap between them is a metric)
    finished: float = 0.0  # time.perf_counter() when the finish hook ran
    # Failure.
    error_type: str | None = None
    error_code: str | None = None
    client_gone: bool = False  # the client went away before the answer was complete

    def fail(self, err: GatewayError) -> None:
        self.status = err.status
        self.error_type = error_type(err)
        self.error_code = err.code

    def add_usage(self, usage: dict | None) -> None:
        """Take a provider's usage dict (OpenAI shape); tolerant of missing or odd fields."""
        if not usage:
            return
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        self.prompt_tokens = p if type(p) is int else 0
        self.completion_tokens = c if type(c) is int else 0
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if type(details) is dict else None
        self.cached_tokens = cached if type(cached) is int else 0

    def estimate_usage(self, prompt_tokens: int) -> None:
        """A provider stream that relayed content its usage does not cover: never 0 tokens / $0.

        OpenAI reports usage in the last chunk, Anthropic the output in its last delta (1 at the
        start): a stream the client left or the provider cut has none, or only the start's. Then
        the completion is the relayed content at 4 characters a token (when more than reported),
        the prompt the provider's figure or else the estimate the limiter and the budget reserve
        with, and the outcome is marked estimated. A stream that ended cleanly keeps its usage."""
        if self.first_chunk_seconds is None or self.from_cache:
            return
        if self.completion_tokens and not self.client_gone and self.error_type is None:
            return  # it ended: the provider's final figures
        relayed = (self.content_chars + 3) // 4
        if self.prompt_tokens and self.completion_tokens >= relayed:
            return  # what was reported covers what was relayed
        if not self.prompt_tokens:
            self.prompt_tokens = prompt_tokens
        if relayed > self.completion_tokens:
            self.completion_tokens = relayed
        self.usage_estimated = True

    @property
    def from_cache(self) -> bool:
        return self.cache == "hit" or self.cache == "semantic-hit"

    def wait_begin(self) -> float:
        self.waiting_since = t = perf_counter()
        return t

    def wait_end(self, began: float) -> None:
        """``began``: ``wait_begin``'s time (or any earlier clock reading of the same wait)."""
        self.upstream_seconds += perf_counter() - began
        self.waiting_since = 0.0

    def overhead_ms(self, now: float) -> float:
        """Time spent in the gateway itself: wall time less the wait on providers, the one under way
        included (a keepalive can send a stream's headers in the middle of a wait)."""
        waited = self.upstream_seconds
        if self.waiting_since:
            waited += now - self.waiting_since
        return (now - self.started - waited) * 1000.0
