"""The validated chat request that travels down the pipeline.

Validation is done once, here, against OpenAI's documented types and ranges,
so adapters can trust the body and every bad input gets a 400 naming the
offending parameter instead of a provider error or a 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth import ApiKey
from gateway.config import ModelGroup
from gateway.errors import invalid
from gateway.pipeline.outcome import Outcome

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


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
    outcome: Outcome = None  # type: ignore[assignment]  # what happened, filled in by every stage
    default_timeout: float = 30.0  # REQUEST_TIMEOUT_SECONDS of the snapshot admitted under (set by admission)
    cache_controls: Any = None  # the cache headers, validated at admission (None: no cache)
    cache_state: Any = None  # what the cache's lookup learnt, for its store
    kind: str = "chat"  # "chat" | "embeddings" (gateway.embeddings): which adapter functions serve it

    def __post_init__(self) -> None:
        if self.outcome is None:
            self.outcome = Outcome(self.request_id, self.started)


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


def _number(body: dict, name: str, lo: float, hi: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"'{name}' must be a number.", param=name, code="invalid_type")
    if not lo <= value <= hi:
        raise invalid(f"'{name}' must be between {lo:g} and {hi:g}, got {value}.", param=name, code="invalid_value")


def _integer(body: dict, name: str, lo: int, hi: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{name}' must be an integer.", param=name, code="invalid_type")
    if not lo <= value <= hi:
        raise invalid(f"'{name}' must be between {lo} and {hi}, got {value}.", param=name, code="invalid_value")


def _message(i: int, msg: object) -> None:
    param = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise invalid(f"'{param}' must be an object.", param=param, code="invalid_type")
    role = msg.get("role")
    if role not in ROLES:
        raise invalid(
            f"'{param}.role' must be one of {', '.join(sorted(ROLES))}, got {role!r}.",
            param=f"{param}.role",
            code="invalid_value",
        )
    content = msg.get("content")
    if content is None:
        if role == "assistant" and (msg.get("tool_calls") or msg.get("function_call")):
            return
        raise invalid(f"'{param}.content' is required.", param=f"{param}.content", code="missing_required_parameter")
    if isinstance(content, str):
        return
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise invalid(
                    f"'{param}.content[{j}]' must be an object with a 'type'.",
                    param=f"{param}.content[{j}]",
                    code="invalid_type",
                )
        return
    raise invalid(f"'{param}.content' must be a string or an array of parts.", param=f"{param}.content", code="invalid_type")


def validate_chat(body: dict) -> None:
    """Raise a 400 naming the first parameter that is wrong."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required and must be a non-empty string.", param="model", code="missing_required_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array.", param="messages", code="missing_required_parameter")
    for i, msg in enumerate(messages):
        _message(i, msg)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean.", param="stream", code="invalid_type")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise invalid("'stream_options' must be an object.", param="stream_options", code="invalid_type")
        if not stream:
            raise invalid("'stream_options' is only allowed when 'stream' is true.", param="stream_options", code="invalid_value")
        if not isinstance(opts.get("include_usage", False), bool):
            raise invalid("'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage", code="invalid_type")
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _integer(body, "max_tokens", 1, 1_000_000)
    _integer(body, "max_completion_tokens", 1, 1_000_000)
    _integer(body, "n", 1, 128)
    _integer(body, "seed", -(2**63), 2**63 - 1)
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            pass
        elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
            pass
        else:
            raise invalid("'stop' must be a string or an array of at most 4 strings.", param="stop", code="invalid_type")
    for name, kind in (("tools", list), ("response_format", dict), ("user", str), ("metadata", dict)):
        value = body.get(name)
        if value is not None and not isinstance(value, kind):
            raise invalid(f"'{name}' has the wrong type.", param=name, code="invalid_type")
