"""OpenAI Chat Completions: the body passes through, so every OpenAI feature works.

Only ``model`` is replaced and, when streaming, usage is always requested
upstream so the gateway can account tokens even when the client did not ask.
Also serves any OpenAI-compatible server (same wire format).
"""

from __future__ import annotations

from functools import lru_cache

import orjson

from gateway.errors import GatewayError
from gateway.providers.base import Deployment, StreamState, UpstreamRequest
from gateway.providers.common import (
    bad_upstream, check_choice, check_usage, error_details, load_object, map_status, new_id, now,
)

LABEL = "OpenAI"
CHECKS_CHUNKS = True  # parse_stream_event checks the chunks it returns (see gateway/upstream.py)

# In-stream errors carry no HTTP status; recover one from the error type/code.
_TYPE_STATUS = {"invalid_request_error": 400, "rate_limit_error": 429, "rate_limit_exceeded": 429, "insufficient_quota": 429}


@lru_cache(maxsize=256)
def _endpoint(base_url: str, api_key: str) -> tuple[str, dict[str, str]]:
    return f"{base_url}/chat/completions", {"authorization": f"Bearer {api_key}", "content-type": "application/json"}


def build_request(body: dict, deployment: Deployment, stream: bool) -> UpstreamRequest:
    url, headers = _endpoint(deployment.base_url, deployment.api_key)
    out = dict(body)
    out["model"] = deployment.model
    if stream:
        out["stream"] = True
        opts = body.get("stream_options")
        out["stream_options"] = {**opts, "include_usage": True} if opts else {"include_usage": True}
    else:
        out.pop("stream", None)
        out.pop("stream_options", None)
    return UpstreamRequest("POST", url, dict(headers), orjson.dumps(out))


def _answer(data: bytes, field: str) -> dict:
    """The body as is, once it holds its ``field`` array (an error object inside a 200 is raised)."""
    obj = load_object(data, LABEL)
    if not isinstance(obj.get(field), list):
        if obj.get("error"):
            raise _embedded_error(data)
        raise bad_upstream(LABEL, f"no '{field}' array")
    return obj


def parse_response(data: bytes, deployment: Deployment) -> dict:
    return _answer(data, "choices")


def new_stream(body: dict, deployment: Deployment) -> StreamState:
    return StreamState(new_id(), deployment.model, now())  # positional: keywords would build a dict


def parse_stream_event(data: bytes, state: StreamState) -> list[dict]:
    """One event's chunk, checked here (``CHECKS_CHUNKS``) in the walk that finds its finish reason: the
    body passes through, and the common check after any adapter (``common.check_chunks``) walked
    every chunk a second time."""
    if data == b"[DONE]":
        return []
    obj = load_object(data, LABEL)
    if obj.get("error"):
        raise _embedded_error(data)
    # We always ask for usage upstream; whether the client sees it is the
    # pipeline's call, so the per-chunk "usage": null artefact is dropped too.
    usage = obj.pop("usage", None)
    if usage:
        state.usage = check_usage(usage, LABEL)
    choices = obj.get("choices")
    if type(choices) is not list:
        if choices is None:
            return []
        raise bad_upstream(LABEL, "stream chunk 'choices' is not an array")
    if not choices:  # the usage-only chunk (choices: [])
        return []
    if not state.mirrored:  # the upstream identity, so the pipeline's own usage chunk matches (once a stream)
        state.mirrored = True
        state.id = obj.get("id", state.id)
        state.model = obj.get("model", state.model)
        state.created = obj.get("created", state.created)
    for c in choices:
        state.content_chars += check_choice(c, "delta", LABEL)
        reason = c.get("finish_reason")  # checked: None or a string
        if reason:
            state.finish_reason = reason
    return [obj]


@lru_cache(maxsize=256)
def _embeddings_url(base_url: str) -> str:
    return f"{base_url}/embeddings"


def build_embeddings(body: dict, deployment: Deployment) -> UpstreamRequest:
    _, headers = _endpoint(deployment.base_url, deployment.api_key)
    return UpstreamRequest("POST", _embeddings_url(deployment.base_url), dict(headers), orjson.dumps({**body, "model": deployment.model}))


def parse_embeddings(data: bytes, body: dict, deployment: Deployment) -> dict:
    return _answer(data, "data")


def map_error(status: int, data: bytes) -> GatewayError:
    err, message = error_details(data)
    if err and 400 <= status < 500 and status not in (401, 403, 408, 429):
        # Same API on both sides: keep OpenAI's own type/param/code verbatim.
        return GatewayError(
            status,
            message,
            err.get("type") or "invalid_request_error",
            err.get("param"),
            err.get("code"),
        )
    mapped = map_status(LABEL, status, message)
    if status == 429 and isinstance(err.get("code"), str):
        mapped.code = err["code"]  # e.g. "insufficient_quota" (the gateway's account) vs "rate_limit_exceeded"
    return mapped


def _embedded_error(data: bytes) -> GatewayError:
    """An ``{"error": ...}`` body inside a 200 or a stream: no HTTP status to go by."""
    err, _ = error_details(data)
    status = 500
    for key in (err.get("type"), err.get("code")):
        if isinstance(key, str) and key in _TYPE_STATUS:
            status = _TYPE_STATUS[key]
            break
    return map_error(status, data)
