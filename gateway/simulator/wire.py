"""The three providers' wire formats: validation, answers, SSE events, errors.

Each handler takes a parsed ``Request`` and the provider's ``Settings`` and
returns a ``Reply``; the server decides when (latency) and how fast
(tokens_per_second) it goes out. Answers are deterministic functions of the
request ("Simulated openai reply to: <first words of the last user turn>"
followed by filler), so tests and cache tests can tell them apart.

Streams are returned as *frames*: the bytes written at once, one per content
chunk, with the provider's opening events glued to the first frame and its
closing events to the last, so pacing only ever waits between content chunks.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import time
import zlib
from dataclasses import dataclass
from urllib.parse import parse_qs

import numpy as np
import orjson

from gateway.simulator.settings import Settings


@dataclass(slots=True)
class Request:
    method: bytes
    path: str
    query: str
    headers: dict[bytes, bytes]  # lower-cased names
    body: bytes
    keep_alive: bool = True


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes = b""
    frames: list[bytes] | None = None  # set for a stream (sent with chunked encoding)
    content_type: bytes = b"application/json"
    headers: bytes = b""  # extra header lines, each ending in \r\n


class Invalid(Exception):
    """A request the real API would refuse with a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# ---------------------------------------------------------------- answers

_FILLER = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi ut "
    "aliquip ex ea commodo consequat duis aute irure dolor in reprehenderit in voluptate velit esse cillum"
).split()
_FILLER_LONG = list(itertools.islice(itertools.cycle(_FILLER), 4096))


@dataclass(slots=True)
class Answer:
    text: str
    tokens: int
    end: str  # "end" | "length" | "stop_sequence"
    stop_sequence: str | None = None


def answer(provider: str, last_user: str, tokens: int, max_tokens: int | None, stops: list[str]) -> Answer:
    """The text a provider "generates", cut by a stop sequence or max_tokens like the real thing."""
    words = ["Simulated", provider, "reply", "to:", *last_user.split()[:8]]
    if len(words) < tokens:
        need = tokens - len(words)
        words += _FILLER_LONG[:need] if need <= len(_FILLER_LONG) else list(itertools.islice(itertools.cycle(_FILLER), need))
    else:
        del words[tokens:]
    text = " ".join(words)
    if stops:
        first: tuple[int, str] | None = None
        for stop in stops:
            at = text.find(stop) if stop else -1
            if at >= 0 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            cut = text[: first[0]]
            used = len(cut.split())
            if max_tokens is None or used <= max_tokens:
                return Answer(cut, used, "stop_sequence", first[1])
    if max_tokens is not None and max_tokens < len(words):
        return Answer(" ".join(words[:max_tokens]), max_tokens, "length")
    return Answer(text, len(words), "end")


def pieces(text: str, per_chunk: int) -> list[str]:
    """Split an answer into streamed pieces whose concatenation is exactly ``text``."""
    words = text.split(" ")
    if per_chunk == 1:
        return [words[0], *[" " + w for w in words[1:]]]
    out = [" ".join(words[i : i + per_chunk]) for i in range(0, len(words), per_chunk)]
    return [out[0], *[" " + p for p in out[1:]]]


def _words(text: str) -> int:
    return len(text.split())


_id_prefix = os.urandom(4).hex()
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}{_id_prefix}{next(_ids):012x}"


def _json_object(body: bytes) -> dict:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"We could not parse the JSON body of your request. ({exc})") from None
    if not isinstance(obj, dict):
        raise Invalid("The request body must be a JSON object.")
    return obj


def _opt_int(obj: dict, name: str, low: int = 1, high: int = 1_000_000) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"Invalid '{name}': expected an integer between {low} and {high}, got {value!r}.", name)
    return value


def _opt_number(obj: dict, name: str, low: float, high: float) -> None:
    value = obj.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise Invalid(f"{name}: range: {low:g}..{high:g}", name)


def _stops(value: object, name: str, limit: int | None) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise Invalid(f"Invalid '{name}': expected a string or a list of strings.", name)
    if limit is not None and len(stops) > limit:
        raise Invalid(f"Invalid '{name}': at most {limit} sequences.", name)
    return stops


def _sse_frames(events: list[list[bytes]], head: list[bytes], tail: list[bytes]) -> list[bytes]:
    """Join per-piece events into frames: ``head`` goes with the first, ``tail`` with the last."""
    events[0] = head + events[0]
    events[-1] = events[-1] + tail
    return [b"".join(e) for e in events]


SSE = b"text/event-stream"

# ---------------------------------------------------------------- OpenAI

_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Country, region, or territory not supported."),
    404: ("invalid_request_error", None, "The requested resource does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def openai_error(status: int, message: str | None = None, param: str | None = None, code: str | None = None) -> Reply:
    etype, default_code, default_message = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None, "Simulated error."))
    err = {"message": message or default_message, "type": etype, "param": param, "code": code or default_code}
    return Reply(status, orjson.dumps({"error": err}))


def _openai_auth(req: Request, s: Settings) -> Reply | None:
    auth = req.headers.get(b"authorization", b"")
    key = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
    if not key:
        return openai_error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if s.api_key is not None and key.decode("latin-1") != s.api_key:
        return openai_error(401, "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.")
    return None


def _openai_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


_OPENAI_ROLES = frozenset(("system", "developer", "user", "assistant", "tool", "function"))
_OPENAI_FINISH = {"end": "stop", "stop_sequence": "stop", "length": "length"}


def openai_chat(req: Request, s: Settings) -> Reply:
    denied = _openai_auth(req, s)
    if denied is not None:
        return denied
    try:
        body = _json_object(req.body)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Invalid("you must provide a model parameter", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise Invalid("Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages")
        prompt = 0
        last_user = ""
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in _OPENAI_ROLES:
                raise Invalid(f"Invalid value for 'messages[{i}].role'.", f"messages[{i}].role")
            text = _openai_text(m.get("content"))
            prompt += _words(text)
            if m["role"] == "user":
                last_user = text
        n = _opt_int(body, "n", 1, 128) or 1
        max_tokens = _opt_int(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = _opt_int(body, "max_tokens")
        stops = _stops(body.get("stop"), "stop", 4)
        _opt_number(body, "temperature", 0, 2)
        stream = body.get("stream") is True
        options = body.get("stream_options")
        if options is not None and not stream:
            raise Invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
        include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    except Invalid as exc:
        return openai_error(400, exc.message, exc.param)

    a = answer("openai", last_user, s.response_tokens, max_tokens, stops)
    finish = _OPENAI_FINISH[a.end]
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": a.tokens * n,
        "total_tokens": prompt + a.tokens * n,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    cid = new_id("chatcmpl-")
    created = int(time.time())
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
    return Reply(200, frames=_sse_frames(events, role, tail), content_type=SSE)


_OPENAI_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small", "text-embedding-3-large")


def openai_models(req: Request, s: Settings) -> Reply:
    denied = _openai_auth(req, s)
    if denied is not None:
        return denied
    data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in _OPENAI_MODELS]
    return Reply(200, orjson.dumps({"object": "list", "data": data}))


_WORD = re.compile(r"\w+")
_word_vectors: dict[tuple[str, int], np.ndarray] = {}


def _word_vector(word: str, dims: int) -> np.ndarray:
    vec = _word_vectors.get((word, dims))
    if vec is None:
        if len(_word_vectors) > 100_000:
            _word_vectors.clear()
        rng = np.random.default_rng(zlib.crc32(word.encode()))
        vec = _word_vectors[(word, dims)] = rng.standard_normal(dims, dtype=np.float32)
    return vec


def embed(text: str, dims: int = 256) -> np.ndarray:
    """A unit vector that is the sum of one fixed random vector per word: shared words, similar texts."""
    words = _WORD.findall(text.lower()) or [""]
    vec = np.sum([_word_vector(w, dims) for w in words], axis=0, dtype=np.float32)
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm else vec


def openai_embeddings(req: Request, s: Settings) -> Reply:
    denied = _openai_auth(req, s)
    if denied is not None:
        return denied
    try:
        body = _json_object(req.body)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Invalid("you must provide a model parameter", "model")
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
        dims = _opt_int(body, "dimensions", 1, 4096) or 256
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise Invalid("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    except Invalid as exc:
        return openai_error(400, exc.message, exc.param)
    data = []
    for i, text in enumerate(texts):
        vec = embed(text, dims)
        value = base64.b64encode(vec.astype("<f4").tobytes()).decode() if fmt == "base64" else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(_words(t) for t in texts)
    doc = {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return Reply(200, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


# ---------------------------------------------------------------- Anthropic

_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ANTHROPIC_MESSAGES = {
    429: "Number of requests has exceeded your rate limit. Please try again later.",
    500: "Internal server error",
    529: "Overloaded",
}


def anthropic_error(status: int, message: str | None = None) -> Reply:
    etype = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    err = {"type": etype, "message": message or _ANTHROPIC_MESSAGES.get(status, "Simulated error.")}
    return Reply(status, orjson.dumps({"type": "error", "error": err, "request_id": new_id("req_")}))


def _anthropic_auth(req: Request, s: Settings) -> Reply | None:
    key = req.headers.get(b"x-api-key")
    if not key:
        return anthropic_error(401, "x-api-key header is required")
    if s.api_key is not None and key.decode("latin-1") != s.api_key:
        return anthropic_error(401, "invalid x-api-key")
    if not req.headers.get(b"anthropic-version"):
        return anthropic_error(400, "anthropic-version: header is required")
    return None


def _anthropic_text(content: object, where: str) -> str:
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


_ANTHROPIC_STOP = {"end": "end_turn", "stop_sequence": "stop_sequence", "length": "max_tokens"}


def anthropic_messages(req: Request, s: Settings) -> Reply:
    denied = _anthropic_auth(req, s)
    if denied is not None:
        return denied
    try:
        body = _json_object(req.body)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Invalid("model: Field required")
        if body.get("max_tokens") is None:
            raise Invalid("max_tokens: Field required")
        max_tokens = _opt_int(body, "max_tokens", 1, 1_000_000)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise Invalid("messages: at least one message is required")
        prompt = 0
        system = body.get("system")
        if system is not None:
            prompt += _words(_anthropic_text(system, "system"))
        last_user = ""
        for i, m in enumerate(messages):
            role = m.get("role") if isinstance(m, dict) else None
            if role not in ("user", "assistant"):
                raise Invalid(
                    f'messages.{i}.role: Input should be \'user\' or \'assistant\''
                    + ('; use the top-level "system" parameter for system prompts' if role == "system" else "")
                )
            text = _anthropic_text(m.get("content"), f"messages.{i}.content")
            prompt += _words(text)
            if role == "user":
                last_user = text
        _opt_number(body, "temperature", 0, 1)
        _opt_number(body, "top_p", 0, 1)
        stops = _stops(body.get("stop_sequences"), "stop_sequences", None)
        if not isinstance(body.get("stream", False), bool):
            raise Invalid("stream: Input should be a valid boolean")
        stream = body.get("stream") is True
    except Invalid as exc:
        return anthropic_error(400, exc.message)

    a = answer("anthropic", last_user, s.response_tokens, max_tokens, stops)
    reason = _ANTHROPIC_STOP[a.end]
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
    return Reply(200, frames=_sse_frames(events, head, tail), content_type=SSE)


def anthropic_models(req: Request, s: Settings) -> Reply:
    denied = _anthropic_auth(req, s)
    if denied is not None:
        return denied
    ids = ("claude-sonnet-4-20250514", "claude-3-5-haiku-20241022")
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-05-14T00:00:00Z"} for m in ids]
    return Reply(200, orjson.dumps({"data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}))


# ---------------------------------------------------------------- Google Gemini

_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_GOOGLE_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}


def google_error(status: int, message: str | None = None) -> Reply:
    name = _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    err = {"code": status, "message": message or _GOOGLE_MESSAGES.get(status, "Simulated error."), "status": name}
    return Reply(status, orjson.dumps({"error": err}))


def _google_key(req: Request) -> str:
    key = req.headers.get(b"x-goog-api-key")
    if key:
        return key.decode("latin-1")
    if "key=" in req.query:
        return parse_qs(req.query).get("key", [""])[0]
    return ""


def _google_auth(req: Request, s: Settings) -> Reply | None:
    key = _google_key(req)
    if not key:
        return google_error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API key or other form of API consumer identity to call this API.",
        )
    if s.api_key is not None and key != s.api_key:
        return google_error(400, "API key not valid. Please pass a valid API key.")
    return None


def _google_text(content: object, where: str) -> str:
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
        raise Invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    return " ".join(p["text"] for p in content["parts"] if isinstance(p, dict) and isinstance(p.get("text"), str))


_GOOGLE_FINISH = {"end": "STOP", "stop_sequence": "STOP", "length": "MAX_TOKENS"}


def google_generate(req: Request, s: Settings, model: str, stream: bool) -> Reply:
    denied = _google_auth(req, s)
    if denied is not None:
        return denied
    try:
        body = _json_object(req.body)
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise Invalid("* GenerateContentRequest.contents: contents is not specified")
        prompt = 0
        system = body.get("systemInstruction", body.get("system_instruction"))
        if system is not None:
            prompt += _words(_google_text(system, "system_instruction"))
        last_user = ""
        for i, c in enumerate(contents):
            role = c.get("role", "user") if isinstance(c, dict) else None
            if role not in ("user", "model"):
                raise Invalid(f"Please use a valid role: user, model. (contents[{i}].role = {role!r})")
            text = _google_text(c, f"contents[{i}]")
            prompt += _words(text)
            if role == "user":
                last_user = text
        config = body.get("generationConfig", body.get("generation_config")) or {}
        if not isinstance(config, dict):
            raise Invalid("generationConfig must be an object")
        max_tokens = _opt_int(config, "maxOutputTokens")
        if max_tokens is None:
            max_tokens = _opt_int(config, "max_output_tokens")
        count = _opt_int(config, "candidateCount", 1, 8) or _opt_int(config, "candidate_count", 1, 8) or 1
        _opt_number(config, "temperature", 0, 2)
        _opt_number(config, "topP", 0, 1)
        stops = _stops(config.get("stopSequences", config.get("stop_sequences")), "stopSequences", 5)
    except Invalid as exc:
        return google_error(400, exc.message)

    a = answer("google", last_user, s.response_tokens, max_tokens, stops)
    finish = _GOOGLE_FINISH[a.end]
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": a.tokens * count,
        "totalTokenCount": prompt + a.tokens * count,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    rid = new_id("sim")
    if not stream:
        candidates = [
            {"content": {"parts": [{"text": a.text}], "role": "model"}, "finishReason": finish, "index": i} for i in range(count)
        ]
        doc = {"candidates": candidates, "usageMetadata": usage, "modelVersion": model, "responseId": rid}
        return Reply(200, orjson.dumps(doc))

    # Every response but the last is the same template around one text piece.
    parts = pieces(a.text, s.chunk_tokens)
    end = b'],"modelVersion":' + orjson.dumps(model) + b',"responseId":"' + rid.encode() + b'"}'
    pre = b'{"content":{"parts":[{"text":'
    posts = [b'}],"role":"model"},"index":%d}' % i for i in range(count)]
    texts = map(orjson.dumps, parts[:-1])
    if count == 1:
        start, finish_doc = b'{"candidates":[' + pre, posts[0] + end
        docs = [start + t + finish_doc for t in texts]
    else:
        docs = [b'{"candidates":[' + b",".join([pre + t + post for post in posts]) + end for t in texts]
    candidates = [
        {"content": {"parts": [{"text": parts[-1]}], "role": "model"}, "finishReason": finish, "index": i} for i in range(count)
    ]
    docs.append(orjson.dumps({"candidates": candidates, "usageMetadata": usage, "modelVersion": model, "responseId": rid}))
    if "alt=sse" not in req.query:
        # Without alt=sse Google streams one JSON array; clients read it whole.
        return Reply(200, b"[" + b",\r\n".join(docs) + b"]")
    return Reply(200, frames=[b"data: " + d + b"\r\n\r\n" for d in docs], content_type=SSE)


def google_models(req: Request, s: Settings) -> Reply:
    denied = _google_auth(req, s)
    if denied is not None:
        return denied
    names = ("gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro")
    models = [
        {
            "name": f"models/{m}",
            "version": "001",
            "displayName": m,
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 8192,
            "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
        }
        for m in names
    ]
    return Reply(200, orjson.dumps({"models": models}))


# ---------------------------------------------------------------- shared

ERRORS = {"openai": openai_error, "anthropic": anthropic_error, "google": google_error}


def error(provider: str, status: int, retry_after: int | None = None) -> Reply:
    """A provider-shaped error; 429/503/529 carry Retry-After like the real services."""
    reply = ERRORS.get(provider, openai_error)(status)
    if retry_after is not None and status in (429, 503, 529):
        reply.headers = b"retry-after: %d\r\n" % retry_after
    return reply


def overloaded(provider: str, retry_after: int) -> Reply:
    """What each provider sends when it sheds load: 529 for Anthropic, 429 elsewhere."""
    return error(provider, 529 if provider == "anthropic" else 429, retry_after)
