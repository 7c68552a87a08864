"""Anthropic's wire format in the simulator: the Messages API (JSON and SSE events), models."""

from __future__ import annotations

import orjson

from gateway.simulator.settings import Settings
from gateway.simulator.wire import SSE, Invalid, Reply, Request, answer, endpoint, json_object, new_id
from gateway.simulator.wire import opt_int, opt_number, pieces, read_turns, sse_frames, stops_list, text_field
from gateway.simulator.wire import error_words, words

AUTH_HEADER = b"x-api-key"
OVERLOADED = 529  # Anthropic's own "overloaded_error"

_ERRORS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES = {
    429: "Number of requests has exceeded your rate limit. Please try again later.",
    500: "Internal server error",
    529: "Overloaded",
}


def error(status: int, message: str | None = None) -> Reply:
    etype, message = error_words(status, message, _ERRORS, _MESSAGES, "api_error", "invalid_request_error")
    err = {"type": etype, "message": message}
    return Reply(status, orjson.dumps({"type": "error", "error": err, "request_id": new_id("req_")}))


def _auth(req: Request, s: Settings) -> Reply | None:
    key = req.headers.get(b"x-api-key")
    if not key:
        return error(401, "x-api-key header is required")
    if s.api_key is not None and key.decode("latin-1") != s.api_key:
        return error(401, "invalid x-api-key")
    if not req.headers.get(b"anthropic-version"):
        return error(400, "anthropic-version: header is required")
    return None


_endpoint = endpoint(_auth, lambda exc: error(400, exc.message))


def _text(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Invalid(f"{where}: Input should be a valid list")
    texts = []
    for block in content:
        if not isinstance(block, dict) or "type" not in block:
            raise Invalid(f"{where}: each content block must be an object with a 'type'")
        if block["type"] == "text":
            if not isinstance(block.get("text"), str):
                raise Invalid(f"{where}.text: Field required")
            texts.append(block["text"])
    return " ".join(texts)


def _turn(i: int, m: object) -> tuple[str, str]:
    role = m.get("role") if isinstance(m, dict) else None
    if role not in ("user", "assistant"):
        raise Invalid(
            f'messages.{i}.role: Input should be \'user\' or \'assistant\''
            + ('; use the top-level "system" parameter for system prompts' if role == "system" else "")
        )
    return role, _text(m.get("content"), f"messages.{i}.content")


_STOP = {"end": "end_turn", "stop_sequence": "stop_sequence", "length": "max_tokens"}


@_endpoint
def messages(req: Request, s: Settings) -> Reply:
    body = json_object(req.body)
    model = text_field(body, "model", "model: Field required")
    if body.get("max_tokens") is None:
        raise Invalid("max_tokens: Field required")
    max_tokens = opt_int(body, "max_tokens", 1, 1_000_000)
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise Invalid("messages: at least one message is required")
    prompt = 0
    system = body.get("system")
    if system is not None:
        prompt += words(_text(system, "system"))
    prompt, last_user = read_turns(turns, _turn, prompt)
    opt_number(body, "temperature", 0, 1)
    opt_number(body, "top_p", 0, 1)
    stops = stops_list(body.get("stop_sequences"), "stop_sequences", None)
    if not isinstance(body.get("stream", False), bool):
        raise Invalid("stream: Input should be a valid boolean")
    stream = body.get("stream") is True

    a = answer("anthropic", last_user, s.response_tokens, max_tokens, stops)
    reason = _STOP[a.end]
    mid = new_id("msg_01")
    if not stream:
        doc = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": a.text}],
            "stop_reason": reason,
            "stop_sequence": a.stop_sequence,
            "usage": {
                "input_tokens": prompt,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": a.tokens,
            },
        }
        return Reply(200, orjson.dumps(doc))

    start = {
        "type": "message_start",
        "message": {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1},
        },
    }
    head = [
        b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n",
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n',
        b'event: ping\ndata: {"type": "ping"}\n\n',
    ]
    pre = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
    events = [[pre + orjson.dumps(p) + b"}}\n\n"] for p in pieces(a.text, s.chunk_tokens)]
    delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": a.stop_sequence}, "usage": {"output_tokens": a.tokens}}
    tail = [
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
        b"event: message_delta\ndata: " + orjson.dumps(delta) + b"\n\n",
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    return Reply(200, frames=sse_frames(events, head, tail), content_type=SSE)


@_endpoint
def models(req: Request, s: Settings) -> Reply:
    ids = ("claude-sonnet-4-20250514", "claude-3-5-haiku-20241022")
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-05-14T00:00:00Z"} for m in ids]
    return Reply(200, orjson.dumps({"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}))


ROUTES = {
    (b"POST", "/v1/messages"): messages,
    (b"GET", "/v1/models"): models,  # OpenAI's path too: the server tells them apart by AUTH_HEADER
}
