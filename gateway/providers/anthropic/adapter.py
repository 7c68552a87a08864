"""Anthropic Messages API ⇄ OpenAI Chat Completions (text only).

Request: system/developer messages become the top-level ``system``; turns are
merged to alternate user/assistant; ``max_tokens`` is required by Anthropic
(default 4096). Passed: temperature (0..1 only), top_p, stop, user (as
``metadata.user_id``). Ignored, because Anthropic has no equivalent: seed,
presence_penalty, frequency_penalty, logit_bias, store, metadata,
reasoning_effort, parallel_tool_calls. Rejected with a 400: n > 1 and the
features in ``common.UNSUPPORTED``.
"""

from __future__ import annotations

from functools import lru_cache

import orjson

from gateway.errors import GatewayError, invalid
from gateway.providers.base import Deployment, StreamState, UpstreamRequest
from gateway.providers.common import bad_upstream, choice, chunk, completion, error_details, load_object, map_status
from gateway.providers.common import max_tokens, new_id, now, reject_unsupported, role_chunk, split_messages
from gateway.providers.common import stop_list, usage

LABEL = "Anthropic"
VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}

# Anthropic's error types and the statuses it sends them with; in-stream error
# events have no HTTP status of their own.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


@lru_cache(maxsize=256)
def _endpoint(base_url: str, api_key: str) -> tuple[str, dict[str, str]]:
    headers = {"x-api-key": api_key, "anthropic-version": VERSION, "content-type": "application/json"}
    return f"{base_url}/v1/messages", headers


def build_request(body: dict, deployment: Deployment, stream: bool) -> UpstreamRequest:
    reject_unsupported(body, LABEL)
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid(f"{LABEL} returns one choice per request; 'n' must be 1, got {n}.", param="n", code="unsupported_parameter")
    system, turns = split_messages(body["messages"], LABEL, "assistant")
    out: dict = {
        "model": deployment.model,
        "max_tokens": max_tokens(body) or DEFAULT_MAX_TOKENS,
        "messages": [
            {"role": role, "content": texts[0] if len(texts) == 1 else [{"type": "text", "text": t} for t in texts]}
            for role, texts in turns
        ],
    }
    if system:
        out["system"] = "\n\n".join(system)
    temperature = body.get("temperature")
    if temperature is not None:
        if temperature > 1:
            raise invalid(
                f"'temperature' must be between 0 and 1 for {LABEL}, got {temperature}.",
                param="temperature",
                code="invalid_value",
            )
        out["temperature"] = temperature
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = stop_list(body)
    if stop:
        out["stop_sequences"] = stop
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    if stream:
        out["stream"] = True
    url, headers = _endpoint(deployment.base_url, deployment.api_key)
    return UpstreamRequest("POST", url, dict(headers), orjson.dumps(out))


def _usage(raw: dict) -> dict:
    """OpenAI counts cached prompt tokens as prompt tokens; Anthropic reports them apart."""
    prompt = (
        (raw.get("input_tokens") or 0)
        + (raw.get("cache_creation_input_tokens") or 0)
        + (raw.get("cache_read_input_tokens") or 0)
    )
    return usage(prompt, raw.get("output_tokens") or 0)


def _text(blocks: list) -> str:
    """Join the text blocks; thinking and tool blocks have no place in a text answer."""
    return "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")


def parse_response(data: bytes, deployment: Deployment) -> dict:
    obj = load_object(data, LABEL)
    if obj.get("type") == "error":
        raise _event_error(obj, data)
    try:
        blocks = obj.get("content")
        if not isinstance(blocks, list):
            raise bad_upstream(LABEL, "no 'content' array")
        reason = obj.get("stop_reason")
        msg_id = obj.get("id")
        return completion(
            f"chatcmpl-{msg_id}" if msg_id else new_id(),
            obj.get("model") or deployment.model,
            [choice(0, _text(blocks), FINISH.get(reason, "stop") if reason else None)],
            _usage(obj.get("usage") or {}),
        )
    except (AttributeError, TypeError) as exc:
        raise bad_upstream(LABEL, f"unexpected response shape ({exc})") from None


def new_stream(body: dict, deployment: Deployment) -> StreamState:
    return StreamState(id=new_id(), model=deployment.model, created=now())


def parse_stream_event(data: bytes, state: StreamState) -> list[dict]:
    event = load_object(data, LABEL)
    try:
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event["delta"]
            if delta.get("type") == "text_delta":
                return [chunk(state, {"content": delta["text"]})]
            return []  # thinking / tool-input / citation deltas: not part of a text answer
        if kind == "message_start":
            message = event["message"]
            if message.get("id"):
                state.id = f"chatcmpl-{message['id']}"
            state.model = message.get("model") or state.model
            raw = dict(message.get("usage") or {})
            state.extra["usage"] = raw
            state.usage = _usage(raw)
            return [role_chunk(state)]
        if kind == "content_block_start":
            block = event["content_block"]
            if block.get("type") == "text" and block.get("text"):
                return [chunk(state, {"content": block["text"]})]
            return []
        if kind == "message_delta":
            # Usage here is cumulative and final (output_tokens is the total).
            raw = state.extra.setdefault("usage", {})
            raw.update((k, v) for k, v in (event.get("usage") or {}).items() if v is not None)
            state.usage = _usage(raw)
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason:
                state.finish_reason = FINISH.get(reason, "stop")
                return [chunk(state, {}, state.finish_reason)]
            return []
        if kind == "error":
            raise _event_error(event, data)
        return []  # ping, content_block_stop, message_stop, and types added later
    except (AttributeError, TypeError, KeyError) as exc:
        raise bad_upstream(LABEL, f"unexpected stream event shape ({exc!r})") from None


def map_error(status: int, data: bytes) -> GatewayError:
    _, message = error_details(data)
    return map_status(LABEL, status, message)


def _event_error(obj: dict, data: bytes) -> GatewayError:
    """An error event (or error body) without an HTTP status: recover it from the error type."""
    err = obj.get("error")
    kind = err.get("type") if isinstance(err, dict) else None
    return map_error(ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500, data)
