"""The validated chat request that travels down the pipeline.

Validation is done once, at admission, against OpenAI's published schema
(``gateway.validation``), so adapters can trust the body and every bad input
gets a 400 naming the offending parameter instead of a provider error or a 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth import ApiKey
from gateway.config import ModelGroup
from gateway.errors import invalid
from gateway.pipeline.outcome import Outcome
from gateway.validation import ROLES, validate_chat  # noqa: F401  (this module's API)


@dataclass(slots=True)
class ChatRequest:
    body: dict  # the validated OpenAI Chat Completions request
    model: str  # as the client named it (before aliases)
    stream: bool
    include_usage: bool
    request_id: str
    key: ApiKey | None
    headers: dict[str, str]  # lower-cased names; controls such as Cache-Control
    started: float  # time.perf_counter() when the request arrived
    deadline: float  # event-loop time by which the answer must be complete
    group: ModelGroup | None = None  # the resolved group, bound to the snapshot admitted under
    outcome: Outcome = None  # type: ignore[assignment]  # what happened, filled in by every stage (admission sets it)
    default_timeout: float = 30.0  # REQUEST_TIMEOUT_SECONDS of the snapshot admitted under (set by admission)
    # Up to here, the fields admission passes (positionally: a class call with keywords builds a dict).
    max_upstream_bytes: int = 16 * 1_048_576  # GATEWAY_MAX_UPSTREAM_BYTES: a provider's whole answer
    max_event_bytes: int = 1_048_576  # GATEWAY_MAX_EVENT_BYTES: one event of a provider's stream
    kind: str = "chat"  # "chat" | "embeddings" (gateway.embeddings): which adapter functions serve it
    cache_controls: Any = None  # the cache headers, validated at admission (None: no cache)
    cache_state: Any = None  # what the cache's lookup learnt, for its store
    trace: Any = None  # the request's OpenTelemetry span when tracing is on (gateway/tracing.py)
    budget: Any = None  # the cost reserved against the key's budget at admission (gateway/budget.py), settled at finish
    meter: Any = None  # meter(chars) per streamed batch when a token limit applies (gateway/ratelimit.py)
    prompt_estimate: int = -1  # prompt_tokens()'s figure once computed

    def prompt_tokens(self) -> int:
        """The prompt's estimated tokens, computed once per request: the token limiter's reservation,
        the budget's and a stream cut before its usage all use this one figure."""
        n = self.prompt_estimate
        if n < 0:
            n = self.prompt_estimate = prompt_estimate(self.body)
        return n


def prompt_estimate(body: dict) -> int:
    """A fast upper-ish estimate of the prompt's tokens: 4 characters a token, plus 4 a message."""
    chars = 0
    messages = body.get("messages") or ()
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text")
                if isinstance(text, str):
                    chars += len(text)
    return (chars + 3) // 4 + 4 * len(messages)


def parse_json(raw: bytes) -> dict:
    if not raw:
        raise invalid("Request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("Request body must be a JSON object.", code="invalid_json")
    return body


