"""Helpers the provider adapters share: message flattening, errors, OpenAI shapes.

Everything here is pure and cheap; adapters call it on the hot path.
"""

from __future__ import annotations

import os
import time

import orjson

from gateway import shapes
from gateway.errors import GatewayError, invalid, upstream_error
from gateway.providers.base import StreamState


# Parameters the OpenAI adapter passes through but the translating adapters
# cannot honour. Each changes what the client gets back, so dropping them
# silently would be worse than a 400. (tools, tool_choice and response_format
# are translated: see providers/features.py.)
UNSUPPORTED = ("functions", "function_call", "logprobs", "top_logprobs", "audio", "modalities", "prediction",
               "web_search_options")


def new_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


def now() -> int:
    return int(time.time())


# --- request side -------------------------------------------------------------


def reject_unsupported(body: dict, label: str) -> None:
    """A 400 naming the first OpenAI feature ``label`` cannot serve through us."""
    for name in UNSUPPORTED:
        value = body.get(name)
        if not value:  # absent, None, False, [] and {} ask for nothing
            continue
        if name == "modalities" and value == ["text"]:
            continue  # the default; asks for nothing
        raise invalid(
            f"'{name}' is not supported for provider {label} through this gateway yet.",
            param=name,
            code="unsupported_parameter",
        )


def max_tokens(body: dict) -> int | None:
    """``max_completion_tokens`` wins: it is OpenAI's replacement for ``max_tokens``."""
    value = body.get("max_completion_tokens")
    return value if value is not None else body.get("max_tokens")


def stop_list(body: dict) -> list[str] | None:
    stop = body.get("stop")
    if not stop:
        return None
    return [stop] if isinstance(stop, str) else stop


# --- response side ------------------------------------------------------------


def usage(prompt: int, completion: int, total: int | None = None) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if total is not None else prompt + completion,
    }


def completion(id: str, model: str, choices: list[dict], usage: dict) -> dict:
    return shapes.completion(id, now(), model, choices, usage)


def choice(index: int, content: str, finish_reason: str | None) -> dict:
    return shapes.choice(index, content, finish_reason)


def chunk(state: StreamState, delta: dict, finish_reason: str | None = None, index: int = 0) -> dict:
    return shapes.chunk(state.id, state.created, state.model, delta, finish_reason, index)


def role_chunk(state: StreamState, index: int = 0) -> dict:
    """The first chunk of each choice, as OpenAI sends it."""
    return chunk(state, {"role": "assistant", "content": ""}, None, index)


# --- errors -------------------------------------------------------------------


def bad_upstream(label: str, what: str) -> GatewayError:
    """A 502 for an upstream body we cannot read: the provider broke its contract."""
    return upstream_error(502, f"{label} returned a malformed response: {what}.", code="upstream_bad_response")


def load_object(data: bytes, label: str) -> dict:
    """Parse an upstream JSON object, or raise a 502 saying why not."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise bad_upstream(label, "body is not JSON") from None
    if not isinstance(obj, dict):
        raise bad_upstream(label, "expected a JSON object")
    return obj


def error_details(data: bytes) -> tuple[dict, str]:
    """The provider's error object (``{}`` if none) and a human message.

    Handles OpenAI/Gemini ``{"error": {...}}``, Anthropic ``{"type": "error",
    "error": {...}}``, Gemini's occasional ``[{"error": ...}]``, ``{"error":
    "text"}`` from OpenAI-compatible servers, and non-JSON or empty bodies.
    """
    try:
        obj = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            message = err.get("message")
            if isinstance(message, str) and message:
                return err, message
            return err, "no error message"
        if isinstance(err, str) and err:
            return {}, err
        message = obj.get("message") or obj.get("detail")
        if isinstance(message, str) and message:
            return obj, message
    text = data[:200].decode("utf-8", "replace").strip() if data else ""
    return {}, f"non-JSON body: {text}" if text else "empty body"


def map_status(label: str, status: int, message: str) -> GatewayError:
    """The shared status policy: the client's 4xx stay 4xx, provider failures become 502.

    401/403 mean the gateway's own key is bad, so the provider's message (which
    may echo part of that key) is not shown to the client.
    """
    if status == 401 or status == 403:
        return GatewayError(
            status,
            f"The gateway's credentials for {label} were rejected (upstream HTTP {status}); "
            "the gateway operator must fix this deployment's API key.",
            "authentication_error" if status == 401 else "permission_error",
            None,
            "upstream_auth_error",
        )
    if status == 429:
        return GatewayError(429, f"{label} rate limit: {message}", "rate_limit_error", None, "rate_limit_exceeded")
    if 400 <= status < 500 and status != 408:
        code = "request_too_large" if status == 413 else None
        return GatewayError(status, f"{label} rejected the request: {message}", "invalid_request_error", None, code)
    overloaded = status == 529 or status == 503
    return upstream_error(
        502,
        f"{label} failed with HTTP {status}{' (overloaded)' if overloaded else ''}: {message}",
        code="upstream_overloaded" if overloaded else "upstream_error",
    )


def check_usage(usage: object, label: str) -> dict | None:
    """A provider's usage in OpenAI's shape: None, or an object of non-negative integer token counts."""
    if usage is None:
        return None
    if type(usage) is not dict and not isinstance(usage, dict):
        raise bad_upstream(label, "'usage' is not an object")
    p, c, t = usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens")
    if type(p) is int and type(c) is int and type(t) is int and p >= 0 and c >= 0 and t >= 0:
        return usage  # every answer that reports usage: one test, no loop
    for name, n in (("prompt_tokens", p), ("completion_tokens", c), ("total_tokens", t)):
        if n is not None and (type(n) is not int or n < 0):
            raise bad_upstream(label, f"'usage.{name}' is not a non-negative integer")
    return usage


def check_choice(c: object, key: str, label: str) -> int:
    """One choice of an answer (``key`` "message") or a chunk (``key`` "delta") in OpenAI's shape, or a 502;
    returns its answer characters (content, tool calls' names and arguments): what a stream cut before its
    usage is estimated from."""
    if type(c) is not dict:
        raise bad_upstream(label, "a choice is not an object")
    body = c.get(key)
    if type(body) is not dict:
        raise bad_upstream(label, f"a choice's '{key}' is not an object")
    content = body.get("content")
    chars = 0
    if type(content) is str:
        chars = len(content)
    elif content is not None:
        raise bad_upstream(label, f"a choice's '{key}.content' is not a string")
    reason = c.get("finish_reason")
    if reason is not None and type(reason) is not str:
        raise bad_upstream(label, "a choice's 'finish_reason' is not a string")
    if type(c.get("index", 0)) is not int:
        raise bad_upstream(label, "a choice's 'index' is not an integer")
    if "tool_calls" in body:
        chars += tool_call_chars(body["tool_calls"])
    return chars


def check_completion(obj: dict, label: str) -> dict:
    """An adapter's answer in the ``chat.completion`` shape the gateway and its clients rely on.

    Checked once, after any adapter, so a provider answer of the wrong shape is
    the provider's fault (a 502 that fails over), not a TypeError further down
    or a malformed 200 for the client.
    """
    choices = obj.get("choices")
    if type(choices) is not list or not choices:
        raise bad_upstream(label, "no choices")
    for c in choices:
        check_choice(c, "message", label)
    usage = obj.get("usage")
    if usage is not None:
        check_usage(usage, label)
    return obj


def tool_call_chars(calls: object) -> int:
    """Characters of a delta's tool calls (names and arguments): what a cut stream is estimated from."""
    chars = 0
    if type(calls) is list:
        for call in calls:
            fn = call.get("function") if type(call) is dict else None
            if type(fn) is dict:
                args, name = fn.get("arguments"), fn.get("name")
                chars += (len(args) if type(args) is str else 0) + (len(name) if type(name) is str else 0)
    return chars


def check_chunks(chunks, label: str) -> int:
    """A batch of ``chat.completion.chunk`` dicts from an adapter, checked as ``check_completion`` checks
    answers, in one pass that also counts their answer characters (``check_choice``)."""
    chars = 0
    for obj in chunks:
        choices = obj.get("choices")
        if type(choices) is not list:
            raise bad_upstream(label, "a stream chunk has no 'choices' array")
        for c in choices:
            chars += check_choice(c, "delta", label)
    return chars
