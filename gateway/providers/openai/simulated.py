"""OpenAI's wire format in the simulator: chat completions (JSON and SSE), embeddings, models."""

from __future__ import annotations

import base64
import time

import orjson

from gateway.simulator.features import json_answer, plan_calls
from gateway.simulator.settings import Settings
from gateway.simulator.wire import SSE, Invalid, Reply, Request, answer, embed, endpoint, json_object, new_id
from gateway.simulator.wire import opt_int, opt_number, pieces, read_turns, sse_frames, stops_list, text_field
from gateway.simulator.wire import words

AUTH_HEADER = b"authorization"
OVERLOADED = 429

_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country, region, or territory not supported."),
    404: ("invalid_request_error", None, "The requested resource does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error(status: int, message: str | None = None, param: str | None = None, code: str | None = None) -> Reply:
    etype, default_code, default_message = _ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None, "Simulated error."))
    err = {"message": message or default_message, "type": etype, "param": param, "code": code or default_code}
    return Reply(status, orjson.dumps({"error": err}))


def _auth(req: Request, s: Settings) -> Reply | None:
    auth = req.headers.get(b"authorization", b"")
    key = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
    if not key:
        return error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if s.api_key is not None and key.decode("latin-1") != s.api_key:
        return error(401, "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.")
    return None


_endpoint = endpoint(_auth, lambda exc: error(400, exc.message, exc.param))


def _turn(i: int, m: object) -> tuple[str, str]:
    if not isinstance(m, dict) or m.get("role") not in _ROLES:
        raise Invalid(f"Invalid value for 'messages[{i}].role'.", f"messages[{i}].role")
    return m["role"], _text(m.get("content"))


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


_ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
_FINISH = {"end": "stop", "stop_sequence": "stop", "length": "length"}


def _usage(prompt: int, completion: int) -> dict:
    """A chat completion's ``usage``, with every detail field today's API sends (the SDK's CompletionUsage)."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        },
    }


@_endpoint
def chat(req: Request, s: Settings) -> Reply:
    body = json_object(req.body)
    model = text_field(body, "model", "you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages")
    prompt, last_user = read_turns(messages, _turn)
    n = opt_int(body, "n", 1, 128) or 1
    max_tokens = opt_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = opt_int(body, "max_tokens")
    stops = stops_list(body.get("stop"), "stop", 4)
    opt_number(body, "temperature", 0, 2)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        raise Invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True

    after_tool = messages[-1].get("role") == "tool" if isinstance(messages[-1], dict) else False
    if after_tool:  # the results of the last calls (parallel calls: several tool messages)
        results = []
        for m in reversed(messages):
            if not isinstance(m, dict) or m.get("role") != "tool":
                break
            results.insert(0, _text(m.get("content")))
        last_user = "tool result " + " ".join(results)
    calls = plan_calls(_tools(body), _choice(body.get("tool_choice")), last_user, after_tool)
    a = answer("openai", last_user, s.response_tokens, max_tokens, stops)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
        a.text, a.end = json_answer(schema, a.text), "end"
    finish = _FINISH[a.end]
    usage = _usage(prompt, a.tokens * n)
    cid = new_id("chatcmpl-")
    created = int(time.time())
    if calls:
        return _tool_reply(cid, created, model, n, calls, usage, stream, include_usage)
    if not stream:
        message = {"role": "assistant", "content": a.text, "refusal": None, "annotations": []}
        doc = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(n)],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_simulator",
        }
        return Reply(200, orjson.dumps(doc))

    # Templates: every chunk shares its envelope, only the choices differ
    # (concatenation: several times faster than formatting 30 events).
    head = b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,"service_tier":"default","system_fingerprint":"fp_simulator","choices":[' % (
        cid.encode(),
        created,
        orjson.dumps(model),
    )
    end = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
    index = [b'{"index":%d,"delta":' % i for i in range(n)]
    role = [head + x + b'{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}' + end for x in index]
    texts = list(map(orjson.dumps, pieces(a.text, s.chunk_tokens)))
    post = b'},"logprobs":null,"finish_reason":null}' + end
    if n == 1:
        pre = head + index[0] + b'{"content":'
        events = [[pre + t + post] for t in texts]
    else:
        pres = [head + x + b'{"content":' for x in index]
        events = [[pre + t + post for pre in pres] for t in texts]
    stop = b'{},"logprobs":null,"finish_reason":"' + finish.encode() + b'"}' + end
    tail = [head + x + stop for x in index]
    if include_usage:
        tail.append(head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n")
    tail.append(b"data: [DONE]\n\n")
    return Reply(200, frames=sse_frames(events, role, tail), content_type=SSE)


def _tools(body: dict) -> list[tuple[str, object]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise Invalid("Invalid type for 'tools': expected an array.", "tools")
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Invalid(f"Missing required parameter: 'tools[{i}].function.name'.", f"tools[{i}].function.name")
        out.append((fn["name"], fn.get("parameters")))
    return out


def _choice(choice: object) -> str | None:
    if isinstance(choice, dict):
        return (choice.get("function") or {}).get("name")
    return choice if isinstance(choice, str) else None


def _tool_reply(cid: str, created: int, model: str, n: int, calls: list, usage: dict, stream: bool, include_usage: bool) -> Reply:
    """Tool calls, whole or streamed as OpenAI does: a delta naming each call, then its arguments in two pieces."""
    made = [(new_id("call_"), name, orjson.dumps(args).decode()) for name, args in calls]
    envelope = {"id": cid, "created": created, "model": model, "system_fingerprint": "fp_simulator"}
    if not stream:
        tool_calls = [{"id": i, "type": "function", "function": {"name": name, "arguments": a}} for i, name, a in made]
        message = {"role": "assistant", "content": None, "tool_calls": tool_calls, "refusal": None, "annotations": []}
        choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": "tool_calls"} for i in range(n)]
        return Reply(200, orjson.dumps({**envelope, "object": "chat.completion", "choices": choices, "usage": usage}))

    def event(i: int, delta: dict, finish: str | None = None) -> bytes:
        doc = {**envelope, "object": "chat.completion.chunk",
               "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            doc["usage"] = None
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    frames = []
    for i in range(n):
        frames.append(event(i, {"role": "assistant", "content": None, "refusal": None}))
        for k, (call_id, name, args) in enumerate(made):
            frames.append(event(i, {"tool_calls": [{"index": k, "id": call_id, "type": "function",
                                                    "function": {"name": name, "arguments": ""}}]}))
            half = len(args) // 2
            for piece in (args[:half], args[half:]):
                frames.append(event(i, {"tool_calls": [{"index": k, "function": {"arguments": piece}}]}))
        frames.append(event(i, {}, "tool_calls"))
    if include_usage:
        frames.append(b"data: " + orjson.dumps({**envelope, "object": "chat.completion.chunk", "choices": [], "usage": usage}) + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return Reply(200, frames=frames, content_type=SSE)


_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small", "text-embedding-3-large")


@_endpoint
def models(req: Request, s: Settings) -> Reply:
    data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in _MODELS]
    return Reply(200, orjson.dumps({"object": "list", "data": data}))


# The real models' output sizes (and the most ``dimensions`` may ask for); other names get 1,536.
_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


@_endpoint
def embeddings(req: Request, s: Settings) -> Reply:
    body = json_object(req.body)
    model = text_field(body, "model", "you must provide a model parameter", "model")
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise Invalid("'input' must be a non-empty string or array.", "input")
    texts = []
    for item in raw:
        if isinstance(item, list) and all(isinstance(t, int) for t in item):
            item = " ".join(map(str, item))  # token ids: each id is a "word"
        if not isinstance(item, str):
            raise Invalid("'input' must be a string, an array of strings or of token arrays.", "input")
        texts.append(item)
    dims = opt_int(body, "dimensions", 1, _DIMENSIONS.get(model, 4096)) or _DIMENSIONS.get(model, 1536)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise Invalid("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    data = []
    for i, text in enumerate(texts):
        vec = embed(text, dims)
        value = base64.b64encode(vec.astype("<f4").tobytes()).decode() if fmt == "base64" else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(words(t) for t in texts)
    doc = {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return Reply(200, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


ROUTES = {
    (b"POST", "/v1/chat/completions"): chat,
    (b"POST", "/v1/embeddings"): embeddings,
    (b"GET", "/v1/models"): models,
}
