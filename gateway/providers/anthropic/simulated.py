"""Anthropic's wire format in the simulator: the Messages API (JSON and SSE events), models."""

from __future__ import annotations

import orjson

from gateway.simulator.features import plan_calls
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
    # The official SDK sends x-api-key for an API key and "Authorization: Bearer" for an auth token.
    key = req.headers.get(b"x-api-key")
    if not key:
        bearer = req.headers.get(b"authorization", b"")
        key = bearer[7:] if bearer[:7].lower() == b"bearer " else b""
    if not key:
        return error(401, "x-api-key header is required")
    if s.api_key is not None and key.decode("latin-1") != s.api_key:
        return error(401, "invalid x-api-key")
    if not req.headers.get(b"anthropic-version"):
        return error(400, "anthropic-version: header is required")
    return None


_endpoint = endpoint(_auth, lambda exc: error(400, exc.message))


_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _image(block: dict, where: str) -> None:
    src = block.get("source")
    kind = src.get("type") if isinstance(src, dict) else None
    if kind == "base64":
        if src.get("media_type") not in _IMAGE_TYPES:
            raise Invalid(f"{where}.source.media_type: Input should be {', '.join(map(repr, _IMAGE_TYPES))}")
        if not isinstance(src.get("data"), str) or not src["data"]:
            raise Invalid(f"{where}.source.data: Field required")
    elif kind == "url":
        if not isinstance(src.get("url"), str) or not src["url"].startswith(("http://", "https://")):
            raise Invalid(f"{where}.source.url: Input should be a valid URL")
    else:
        raise Invalid(f"{where}.source: Input tag {kind!r} found using 'type' does not match any of the expected tags")


def _text(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Invalid(f"{where}: Input should be a valid list")
    texts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict) or "type" not in block:
            raise Invalid(f"{where}: each content block must be an object with a 'type'")
        kind = block["type"]
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise Invalid(f"{where}.text: Field required")
            texts.append(block["text"])
        elif kind == "image":
            _image(block, f"{where}.{j}")
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str) or not isinstance(block.get("input"), dict):
                raise Invalid(f"{where}.{j}.tool_use: id, name and an object input are required")
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise Invalid(f"{where}.{j}.tool_use_id: Field required")
            texts.append("tool result " + _text(block.get("content") or "", f"{where}.{j}.content"))
    return " ".join(texts)


def _blocks(turn: dict, kind: str) -> list[dict]:
    content = turn.get("content")
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind] if isinstance(content, list) else []


def _check_results(turns: list) -> bool:
    """Each tool_result answers a tool_use of the assistant turn just before it, as the real API requires.
    Returns whether the conversation ends with tool results."""
    for i, t in enumerate(turns):
        results = _blocks(t, "tool_result")
        if not results:
            continue
        asked = {b.get("id") for b in _blocks(turns[i - 1], "tool_use")} if i else set()
        for r in results:
            if r.get("tool_use_id") not in asked:
                raise Invalid(
                    f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: {r.get('tool_use_id')}. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                )
    return bool(_blocks(turns[-1], "tool_result"))


def _tools(body: dict) -> tuple[list[tuple[str, object]], str | None]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise Invalid("tools: Input should be a valid list")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise Invalid(f"tools.{i}.name: Field required")
        schema = t.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise Invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        out.append((t["name"], schema))
    tc = body.get("tool_choice")
    if tc is None:
        return out, None
    kind = tc.get("type") if isinstance(tc, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise Invalid("tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'")
    if kind == "tool":
        if tc.get("name") not in dict(out):
            raise Invalid(f"tool_choice.tool.name: Tool '{tc.get('name')}' not found in tools")
        return out, tc["name"]
    return out, {"any": "required"}.get(kind, kind)


def _turn(i: int, m: object) -> tuple[str, str]:
    role = m.get("role") if isinstance(m, dict) else None
    if role not in ("user", "assistant"):
        raise Invalid(
            f'messages.{i}.role: Input should be \'user\' or \'assistant\''
            + ('; use the top-level "system" parameter for system prompts' if role == "system" else "")
        )
    return role, _text(m.get("content"), f"messages.{i}.content")


# Models from Claude 4 on refuse temperature and top_p in one request; the Claude 3 family took both.
_BOTH_SAMPLERS = ("claude-3-", "claude-3.")

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
    after_tool = _check_results(turns)
    tools, choice = _tools(body)
    opt_number(body, "temperature", 0, 1)
    opt_number(body, "top_p", 0, 1)
    if body.get("temperature") is not None and body.get("top_p") is not None and not model.startswith(_BOTH_SAMPLERS):
        raise Invalid("`temperature` and `top_p` cannot both be specified for this model. Please use only one.")
    stops = stops_list(body.get("stop_sequences"), "stop_sequences", None)
    if not isinstance(body.get("stream", False), bool):
        raise Invalid("stream: Input should be a valid boolean")
    stream = body.get("stream") is True

    a = answer("anthropic", last_user, s.response_tokens, max_tokens, stops)
    reason = _STOP[a.end]
    mid = new_id("msg_01")
    calls = plan_calls(tools, choice, last_user, after_tool)
    if calls:
        return _tool_reply(mid, model, prompt, calls, stream)
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


def _tool_reply(mid: str, model: str, prompt: int, calls: list, stream: bool) -> Reply:
    """tool_use blocks, whole or streamed as Anthropic does: a block start per call, its input as JSON deltas."""
    blocks = [{"type": "tool_use", "id": new_id("toolu_01"), "name": name, "input": args} for name, args in calls]
    usage = {"input_tokens": prompt, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 10 * len(calls)}
    message = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": blocks,
               "stop_reason": "tool_use", "stop_sequence": None, "usage": usage}
    if not stream:
        return Reply(200, orjson.dumps(message))

    def event(doc: dict) -> bytes:
        return b"event: " + doc["type"].encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"

    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    frames = [event({"type": "message_start", "message": start})]
    for k, b in enumerate(blocks):
        frames.append(event({"type": "content_block_start", "index": k, "content_block": {**b, "input": {}}}))
        args = orjson.dumps(b["input"]).decode()
        half = len(args) // 2
        for piece in (args[:half], args[half:]):
            frames.append(event({"type": "content_block_delta", "index": k, "delta": {"type": "input_json_delta", "partial_json": piece}}))
        frames.append(event({"type": "content_block_stop", "index": k}))
    frames.append(event({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                         "usage": {"output_tokens": usage["output_tokens"]}}))
    frames.append(event({"type": "message_stop"}))
    return Reply(200, frames=frames, content_type=SSE)


@_endpoint
def models(req: Request, s: Settings) -> Reply:
    ids = ("claude-sonnet-4-20250514", "claude-3-5-haiku-20241022")
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-05-14T00:00:00Z"} for m in ids]
    return Reply(200, orjson.dumps({"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}))


ROUTES = {
    (b"POST", "/v1/messages"): messages,
    (b"GET", "/v1/models"): models,  # OpenAI's path too: the server tells them apart by AUTH_HEADER
}
