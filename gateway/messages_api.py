"""The Anthropic Messages API as a surface: its request → a Chat Completions request, and the answer back.

``POST /v1/messages`` runs the same pipeline as chat (admission, cache,
router, any provider): the request is translated into an OpenAI Chat
Completions body on the way in, and the ``chat.completion`` (or its chunks)
into Anthropic's ``message`` (or its event sequence) on the way out, so the
Anthropic SDK works against any model the gateway serves.

In: ``system``, text / image / ``tool_use`` / ``tool_result`` blocks,
``tools``, ``tool_choice`` (auto / any / tool / none,
``disable_parallel_tool_use``), ``max_tokens``, ``temperature``, ``top_p``,
``stop_sequences``, ``metadata.user_id``, ``stream``. ``top_k`` and
``thinking`` have no Chat Completions equivalent and are refused with a 400
naming them; thinking blocks in earlier turns are dropped (they are the
model's own scratch work, not the conversation).
"""

from __future__ import annotations

import orjson

from gateway.errors import GatewayError, invalid
from gateway.providers import features

STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal", "function_call": "tool_use"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}
_REFUSED = ("top_k", "thinking", "container", "mcp_servers")


def _image(block: dict, where: str) -> dict:
    src = block.get("source")
    kind = src.get("type") if isinstance(src, dict) else None
    if kind == "base64":
        return {"type": "image_url", "image_url": {"url": f"data:{src.get('media_type')};base64,{src.get('data')}"}}
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": src.get("url")}}
    raise invalid(f"{where}.source: only base64 and url image sources are supported.", param=f"{where}.source", code="invalid_value")


def _text_of(content: object, where: str) -> str:
    def refuse(j: int) -> Exception:
        return invalid(f"{where}.{j}: only text blocks are supported here.", param=where, code="unsupported_content")
    text = features.joined_text(content, refuse)
    if text is not None:
        return text
    if content is None:
        return ""
    raise invalid(f"{where}: must be a string or a list of blocks.", param=where, code="invalid_type")


def _turn(i: int, m: object) -> list[dict]:
    """One Anthropic message as OpenAI messages: tool results become ``tool`` messages, ahead of the user's text."""
    where = f"messages.{i}"
    if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
        raise invalid(f"{where}.role: must be 'user' or 'assistant'.", param=f"{where}.role", code="invalid_value")
    role, content = m["role"], m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise invalid(f"{where}.content: must be a string or a list of blocks.", param=f"{where}.content", code="invalid_type")
    parts: list[dict] = []
    tools: list[dict] = []
    calls: list[dict] = []
    for j, b in enumerate(content):
        kind = b.get("type") if isinstance(b, dict) else None
        bw = f"{where}.content.{j}"
        if kind == "text":
            parts.append({"type": "text", "text": b.get("text") or ""})
        elif kind == "image" and role == "user":
            parts.append(_image(b, bw))
        elif kind == "tool_result" and role == "user":
            tools.append({"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": _text_of(b.get("content"), f"{bw}.content")})
        elif kind == "tool_use" and role == "assistant":
            calls.append({"id": b.get("id"), "type": "function",
                          "function": {"name": b.get("name"), "arguments": orjson.dumps(b.get("input") or {}).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise invalid(f"{bw}: blocks of type {kind!r} are not supported through this gateway.", param=f"{bw}.type",
                          code="unsupported_content")
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        msg: dict = {"role": "assistant", "content": text or None}
        if calls:
            msg["tool_calls"] = calls
        return [msg] if text or calls else []
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def to_chat(body: dict) -> dict:
    """An Anthropic Messages request as an OpenAI Chat Completions request (400s name Anthropic's fields)."""
    for name in _REFUSED:
        if body.get(name) is not None:
            raise invalid(f"'{name}' has no equivalent through this gateway.", param=name, code="unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required", param="model", code="missing_required_parameter")
    if body.get("max_tokens") is None:
        raise invalid("max_tokens: Field required", param="max_tokens", code="missing_required_parameter")
    turns = body.get("messages")
    if not isinstance(turns, list) or not turns:
        raise invalid("messages: at least one message is required", param="messages", code="missing_required_parameter")
    messages: list[dict] = []
    system = body.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _text_of(system, "system")})
    for i, m in enumerate(turns):
        messages.extend(_turn(i, m))
    out: dict = {"model": model, "messages": messages, "max_tokens": body["max_tokens"]}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("stop_sequences", "stop")):
        if body.get(src) is not None:
            out[dst] = body[src]
    user = (body.get("metadata") or {}).get("user_id") if isinstance(body.get("metadata"), dict) else None
    if user:
        out["user"] = user
    tools = body.get("tools")
    if tools:
        out["tools"] = [
            {"type": "function", "function": {"name": t.get("name"), "description": t.get("description") or "",
                                              "parameters": t.get("input_schema") or {"type": "object"}}}
            for t in tools if isinstance(t, dict)
        ]
    tc = body.get("tool_choice")
    if isinstance(tc, dict):
        kind = tc.get("type")
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or {
            "type": "function", "function": {"name": tc.get("name")}}
        if tc.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # message_delta reports the usage
    return out


def _usage(u: dict | None) -> dict:
    u = u or {}
    return {"input_tokens": u.get("prompt_tokens") or 0, "output_tokens": u.get("completion_tokens") or 0}


def to_message(completion: dict, request_id: str) -> dict:
    """A ``chat.completion`` as an Anthropic ``message`` (the first choice)."""
    choice = (completion.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict] = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for c in msg.get("tool_calls") or ():
        fn = c.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {}
        content.append({"type": "tool_use", "id": c.get("id"), "name": fn.get("name"), "input": args if isinstance(args, dict) else {}})
    return {
        "id": "msg_" + (completion.get("id") or request_id),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": content,
        "stop_reason": STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": _usage(completion.get("usage")),
    }


def error_body(err: GatewayError) -> dict:
    etype = ERROR_TYPES.get(err.status) or ("api_error" if err.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": etype, "message": err.message}}


def event(doc: dict) -> bytes:
    return b"event: " + doc["type"].encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"


class Events:
    """OpenAI chunks → Anthropic stream events: blocks opened and closed as text and tool calls arrive."""

    __slots__ = ("index", "open", "tool", "stop", "usage")

    def __init__(self) -> None:
        self.index = -1  # the current content block
        self.open: str | None = None  # "text" | "tool_use" | None
        self.tool: int | None = None  # the OpenAI tool call index of the open tool_use block
        self.stop = "end_turn"
        self.usage: dict | None = None

    @staticmethod
    def start(message_id: str, model: str) -> bytes:
        message = {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return event({"type": "message_start", "message": message})

    def _close(self, out: list[bytes]) -> None:
        if self.open is not None:
            out.append(event({"type": "content_block_stop", "index": self.index}))
            self.open = None
            self.tool = None

    def _begin(self, out: list[bytes], block: dict) -> None:
        self._close(out)
        self.index += 1
        self.open = block["type"]
        out.append(event({"type": "content_block_start", "index": self.index, "content_block": block}))

    def feed(self, chunks: list[dict]) -> bytes:
        out: list[bytes] = []
        for c in chunks:
            if c.get("usage"):
                self.usage = c["usage"]
            for ch in c.get("choices") or ():
                if ch.get("index", 0) != 0:
                    continue  # Anthropic messages have one choice
                delta = ch.get("delta") or {}
                text = delta.get("content")
                if text:
                    if self.open != "text":
                        self._begin(out, {"type": "text", "text": ""})
                    out.append(event({"type": "content_block_delta", "index": self.index,
                                      "delta": {"type": "text_delta", "text": text}}))
                for tc in delta.get("tool_calls") or ():
                    fn = tc.get("function") or {}
                    if tc.get("id") is not None or self.tool != tc.get("index"):
                        self._begin(out, {"type": "tool_use", "id": tc.get("id"), "name": fn.get("name"), "input": {}})
                        self.tool = tc.get("index")
                    if fn.get("arguments"):
                        out.append(event({"type": "content_block_delta", "index": self.index,
                                          "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}}))
                if ch.get("finish_reason"):
                    self.stop = STOP.get(ch["finish_reason"], "end_turn")
        return b"".join(out)

    def end(self) -> bytes:
        out: list[bytes] = []
        self._close(out)
        usage = _usage(self.usage)
        out.append(event({"type": "message_delta", "delta": {"stop_reason": self.stop, "stop_sequence": None}, "usage": usage}))
        out.append(event({"type": "message_stop"}))
        return b"".join(out)
