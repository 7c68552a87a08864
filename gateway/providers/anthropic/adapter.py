"""Anthropic Messages API ⇄ OpenAI Chat Completions.

Request: system/developer messages become the top-level ``system``; turns are
merged to alternate user/assistant; images, tools, tool results and JSON
output are translated in ``messages`` (see there); ``max_tokens`` is required
by Anthropic (default 4096). Passed: temperature (0..1 only), top_p (not with
temperature: Claude 4 models refuse the pair), stop, user (as
``metadata.user_id``). Ignored, because Anthropic has no equivalent: seed,
presence_penalty, frequency_penalty, logit_bias, store, metadata,
reasoning_effort. Rejected with a 400: n > 1 and the features in
``common.UNSUPPORTED``.

Response: text blocks → content; ``tool_use`` blocks → ``tool_calls`` (in a
stream: one call per block, its ``input_json_delta`` pieces as argument
deltas, indexed in the order the calls start); the forced JSON tool's input
→ content.
"""

from __future__ import annotations

from functools import lru_cache

import orjson

from gateway import shapes
from gateway.errors import GatewayError, invalid
from gateway.providers.anthropic.messages import JSON_TOOL, convert
from gateway.providers.base import Deployment, StreamState, UpstreamRequest
from gateway.providers.common import bad_upstream, chunk, completion, error_details, load_object, map_status
from gateway.providers.common import max_tokens, new_id, now, reject_unsupported, role_chunk
from gateway.providers.common import stop_list, usage

LABEL = "Anthropic"
VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",  # the answer was cut by the context window, not by a stop
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
    out: dict = {"model": deployment.model, "max_tokens": max_tokens(body) or DEFAULT_MAX_TOKENS}
    convert(body, out)
    temperature = body.get("temperature")
    if temperature is not None:
        if temperature > 1:
            raise invalid(
                f"'temperature' must be between 0 and 1 for {LABEL}, got {temperature}.",
                param="temperature",
                code="invalid_value",
            )
        out["temperature"] = temperature
    top_p = body.get("top_p")
    if top_p is not None and top_p != 1:  # 1 is no nucleus cut at all: the same as leaving it out
        if temperature is not None:
            # Claude models from 4 on refuse the pair; choosing one for the client would change its sampling.
            raise invalid(
                f"{LABEL} models do not take 'temperature' and 'top_p' together; send only one of them.",
                param="top_p",
                code="unsupported_parameter",
            )
        out["top_p"] = top_p
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


def _message(blocks: list, reason: str | None) -> tuple[dict, str | None]:
    """The OpenAI message of a reply's blocks, and its finish reason; thinking blocks are not the answer."""
    text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
    calls = []
    for b in blocks:
        if b.get("type") != "tool_use":
            continue
        if b.get("name") == JSON_TOOL:  # the answer asked for as JSON
            text += orjson.dumps(b.get("input") or {}).decode()
            reason = "end_turn" if reason == "tool_use" else reason
            continue
        calls.append(shapes.tool_call(b["id"], b["name"], orjson.dumps(b.get("input") or {}).decode()))
    finish = FINISH.get(reason, "stop") if reason else None
    if calls:
        return shapes.tool_message(text or None, calls), finish
    return {"role": "assistant", "content": text, "refusal": None}, finish


def parse_response(data: bytes, deployment: Deployment) -> dict:
    obj = load_object(data, LABEL)
    if obj.get("type") == "error":
        raise _event_error(obj, data)
    try:
        blocks = obj.get("content")
        if not isinstance(blocks, list):
            raise bad_upstream(LABEL, "no 'content' array")
        message, finish = _message(blocks, obj.get("stop_reason"))
        msg_id = obj.get("id")
        return completion(
            f"chatcmpl-{msg_id}" if msg_id else new_id(),
            obj.get("model") or deployment.model,
            [shapes.choice(0, None, finish, message)],
            _usage(obj.get("usage") or {}),
        )
    except (AttributeError, TypeError, KeyError) as exc:
        raise bad_upstream(LABEL, f"unexpected response shape ({exc})") from None


def new_stream(body: dict, deployment: Deployment) -> StreamState:
    state = StreamState(new_id(), deployment.model, now())  # positional: keywords would build a dict
    state.extra["calls"] = {}  # content block index -> its tool call's index (None: the JSON tool)
    return state


def parse_stream_event(data: bytes, state: StreamState) -> list[dict]:
    event = load_object(data, LABEL)
    try:
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event["delta"]
            dtype = delta.get("type")
            if dtype == "text_delta":
                return [chunk(state, {"content": delta["text"]})]
            if dtype == "input_json_delta":
                calls = state.extra["calls"]
                block = event.get("index")
                piece = delta.get("partial_json") or ""
                if block not in calls or not piece:
                    return []
                k = calls[block]
                return [chunk(state, {"content": piece} if k is None else shapes.tool_call_delta(k, piece))]
            return []  # thinking / signature / citation deltas: not part of the answer
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
            btype = block.get("type")
            if btype == "text" and block.get("text"):
                return [chunk(state, {"content": block["text"]})]
            if btype == "tool_use":
                calls = state.extra["calls"]
                if block.get("name") == JSON_TOOL:
                    calls[event.get("index")] = None
                    state.extra["json"] = True
                    return []
                k = sum(1 for v in calls.values() if v is not None)
                calls[event.get("index")] = k
                return [chunk(state, shapes.tool_call_delta(k, "", block["id"], block["name"]))]
            return []
        if kind == "message_delta":
            # Usage here is cumulative and final (output_tokens is the total).
            raw = state.extra.setdefault("usage", {})
            raw.update((k, v) for k, v in (event.get("usage") or {}).items() if v is not None)
            state.usage = _usage(raw)
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason:
                if reason == "tool_use" and state.extra.get("json"):
                    reason = "end_turn"  # the forced JSON tool was the answer, not a call for the client
                state.finish_reason = FINISH.get(reason, "stop")
                return [chunk(state, {}, state.finish_reason)]
            return []
        if kind == "error":
            raise _event_error(event, data)
        return []  # ping, content_block_stop, message_stop, and types added later
    except (AttributeError, TypeError, KeyError) as exc:
        raise bad_upstream(LABEL, f"unexpected stream event shape ({exc!r})") from None


def build_embeddings(body: dict, deployment: Deployment) -> UpstreamRequest:
    raise invalid(f"{LABEL} has no embeddings API; route '{body.get('model')}' to an OpenAI or Gemini embedding model.",
                  param="model", code="unsupported_parameter")


def parse_embeddings(data: bytes, body: dict, deployment: Deployment) -> dict:
    raise bad_upstream(LABEL, "embeddings are not an Anthropic API")


def map_error(status: int, data: bytes) -> GatewayError:
    _, message = error_details(data)
    return map_status(LABEL, status, message)


def _event_error(obj: dict, data: bytes) -> GatewayError:
    """An error event (or error body) without an HTTP status: recover it from the error type."""
    err = obj.get("error")
    kind = err.get("type") if isinstance(err, dict) else None
    return map_error(ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500, data)
