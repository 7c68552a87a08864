"""Google Gemini API (generateContent / streamGenerateContent) ⇄ OpenAI.

Request: system/developer messages become ``systemInstruction``; assistant
turns are role ``model``; turns are merged to alternate; images, tools, tool
results and JSON output are translated in ``contents`` (see there). Passed in
``generationConfig``: max tokens, temperature, top_p, stop, n
(``candidateCount``), seed, presence_penalty, frequency_penalty. Ignored,
because Gemini has no equivalent: user, logit_bias, store, metadata,
reasoning_effort, parallel_tool_calls. Rejected with a 400: the features in
``common.UNSUPPORTED``.

Response: text parts → content; ``functionCall`` parts → ``tool_calls`` (ids
made here when Gemini gives none), and the finish reason ``tool_calls``.

A streamed Gemini event is a whole ``GenerateContentResponse`` holding the next
piece of each candidate, so one event can yield several chunks; a function
call arrives whole, so it is one tool-call delta with all its arguments.
"""

from __future__ import annotations

from functools import lru_cache

import os

import orjson

from gateway import embeddings, shapes
from gateway.errors import GatewayError
from gateway.providers.google.contents import convert
from gateway.providers.base import Deployment, StreamState, UpstreamRequest
from gateway.providers.common import bad_upstream, choice, chunk, completion, error_details, load_object, map_status
from gateway.providers.common import max_tokens, new_id, now, reject_unsupported, role_chunk
from gateway.providers.common import stop_list, usage

LABEL = "Google"

# Gemini's FinishReason values (google-genai's enum) in OpenAI's words. Everything Google withheld is
# content_filter (text or image safety, recitation, blocklists, an unsupported language); a function
# call ends with tool_calls (decided where the parts are read); unknown and later values end as stop.
FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MALFORMED_FUNCTION_CALL": "stop",
    "UNEXPECTED_TOOL_CALL": "stop",
    "TOO_MANY_TOOL_CALLS": "stop",
    "OTHER": "stop",
}

# OpenAI name -> generationConfig name, for the parameters that map one to one.
GENERATION_PARAMS = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("n", "candidateCount"),
    ("seed", "seed"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
)


def finish_reason(reason: str) -> str:
    return FINISH.get(reason, "stop")


@lru_cache(maxsize=256)
def _endpoint(base_url: str, model: str, api_key: str, stream: bool) -> tuple[str, dict[str, str]]:
    action = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"{base_url}/v1beta/models/{model}:{action}", {"x-goog-api-key": api_key, "content-type": "application/json"}


def build_request(body: dict, deployment: Deployment, stream: bool) -> UpstreamRequest:
    reject_unsupported(body, LABEL)
    out: dict = {}
    config: dict = {}
    convert(body, out, config)
    limit = max_tokens(body)
    if limit is not None:
        config["maxOutputTokens"] = limit
    for name, gemini_name in GENERATION_PARAMS:
        value = body.get(name)
        if value is not None:
            config[gemini_name] = value
    stop = stop_list(body)
    if stop:
        config["stopSequences"] = stop
    if config:
        out["generationConfig"] = config
    url, headers = _endpoint(deployment.base_url, deployment.model, deployment.api_key, stream)
    return UpstreamRequest("POST", url, dict(headers), orjson.dumps(out))


def _usage(meta: dict) -> dict:
    """Gemini counts thinking tokens apart; OpenAI counts them as completion tokens."""
    prompt = meta.get("promptTokenCount") or 0
    completion_tokens = (meta.get("candidatesTokenCount") or 0) + (meta.get("thoughtsTokenCount") or 0)
    return usage(prompt, completion_tokens, meta.get("totalTokenCount") or prompt + completion_tokens)


def _text(candidate: dict) -> str:
    """Join the text parts; thought summaries and non-text parts are not the answer."""
    parts = (candidate.get("content") or {}).get("parts") or ()
    return "".join(p.get("text") or "" for p in parts if not p.get("thought"))


def _calls(candidate: dict) -> list[dict]:
    """The candidate's function calls as OpenAI tool calls."""
    calls = []
    for p in (candidate.get("content") or {}).get("parts") or ():
        fc = p.get("functionCall")
        if fc:
            cid = fc.get("id") or "call_" + os.urandom(12).hex()
            calls.append(shapes.tool_call(cid, fc["name"], orjson.dumps(fc.get("args") or {}).decode()))
    return calls


def _finish(candidate: dict, calls: bool) -> str | None:
    reason = candidate.get("finishReason")
    if not reason:
        return None
    finish = finish_reason(reason)
    return "tool_calls" if calls and finish == "stop" else finish


def _choice(i: int, c: dict) -> dict:
    calls = _calls(c)
    text = _text(c)
    finish = _finish(c, bool(calls)) or "stop"
    if calls:
        return shapes.choice(c.get("index", i), None, finish, shapes.tool_message(text or None, calls))
    return choice(c.get("index", i), text, finish)


def _blocked(obj: dict) -> bool:
    """A prompt blocked before any generation: no candidates, only promptFeedback."""
    return not obj.get("candidates") and bool((obj.get("promptFeedback") or {}).get("blockReason"))


def parse_response(data: bytes, deployment: Deployment) -> dict:
    obj = load_object(data, LABEL)
    if obj.get("error"):
        raise _embedded_error(obj, data)
    try:
        candidates = obj.get("candidates") or []
        if not isinstance(candidates, list):
            raise bad_upstream(LABEL, "'candidates' is not an array")
        if not candidates and not _blocked(obj):
            raise bad_upstream(LABEL, "no candidates")
        choices = [_choice(i, c) for i, c in enumerate(candidates)] or [choice(0, "", "content_filter")]
        response_id = obj.get("responseId")
        return completion(
            f"chatcmpl-{response_id}" if response_id else new_id(),
            obj.get("modelVersion") or deployment.model,
            choices,
            _usage(obj.get("usageMetadata") or {}),
        )
    except (AttributeError, TypeError, KeyError) as exc:
        raise bad_upstream(LABEL, f"unexpected response shape ({exc})") from None


def new_stream(body: dict, deployment: Deployment) -> StreamState:
    state = StreamState(new_id(), deployment.model, now())  # positional: keywords would build a dict
    state.extra["started"] = set()  # candidate indexes that got their role chunk
    state.extra["calls"] = {}  # candidate index -> tool calls sent so far
    return state


def parse_stream_event(data: bytes, state: StreamState) -> list[dict]:
    obj = load_object(data, LABEL)
    if obj.get("error"):
        raise _embedded_error(obj, data)
    try:
        started: set = state.extra["started"]
        if not started:  # the first event names the response
            if obj.get("responseId"):
                state.id = f"chatcmpl-{obj['responseId']}"
            state.model = obj.get("modelVersion") or state.model
        meta = obj.get("usageMetadata")
        if meta:
            state.usage = _usage(meta)  # cumulative: the last one reported wins
        out: list[dict] = []
        candidates = obj.get("candidates")
        if not candidates:
            if _blocked(obj):
                state.finish_reason = "content_filter"
                if 0 not in started:
                    started.add(0)
                    out.append(role_chunk(state))
                out.append(chunk(state, {}, "content_filter"))
            return out
        for i, candidate in enumerate(candidates):
            index = candidate.get("index", i)
            if index not in started:
                started.add(index)
                out.append(role_chunk(state, index))
            text = _text(candidate)
            if text:
                out.append(chunk(state, {"content": text}, None, index))
            sent = state.extra["calls"]
            for call in _calls(candidate):
                k = sent.get(index, 0)
                sent[index] = k + 1
                fn = call["function"]
                out.append(chunk(state, shapes.tool_call_delta(k, fn["arguments"], call["id"], fn["name"]), None, index))
            reason = _finish(candidate, index in sent)
            if reason:
                state.finish_reason = reason
                out.append(chunk(state, {}, reason, index))
        return out
    except (AttributeError, TypeError, KeyError) as exc:
        raise bad_upstream(LABEL, f"unexpected stream event shape ({exc!r})") from None


@lru_cache(maxsize=256)
def _embed_endpoint(base_url: str, model: str, api_key: str, batch: bool) -> tuple[str, dict[str, str]]:
    action = "batchEmbedContents" if batch else "embedContent"
    return f"{base_url}/v1beta/models/{model}:{action}", {"x-goog-api-key": api_key, "content-type": "application/json"}


def build_embeddings(body: dict, deployment: Deployment) -> UpstreamRequest:
    """One input: ``embedContent``; several: ``batchEmbedContents`` (one request each, answered in order)."""
    texts = embeddings.texts(body, LABEL)
    dims = body.get("dimensions")
    one: list[dict] = []
    for t in texts:
        r: dict = {"content": {"parts": [{"text": t}]}}
        if dims is not None:
            r["outputDimensionality"] = dims
        one.append(r)
    batch = len(one) > 1
    if batch:
        name = f"models/{deployment.model}"
        out: dict = {"requests": [{"model": name, **r} for r in one]}
    else:
        out = one[0]
    url, headers = _embed_endpoint(deployment.base_url, deployment.model, deployment.api_key, batch)
    return UpstreamRequest("POST", url, dict(headers), orjson.dumps(out))


def parse_embeddings(data: bytes, body: dict, deployment: Deployment) -> dict:
    """Gemini reports no token counts for embeddings, so usage is 0 (the gateway does not guess)."""
    obj = load_object(data, LABEL)
    if obj.get("error"):
        raise _embedded_error(obj, data)
    try:
        found = obj["embeddings"] if "embeddings" in obj else [obj["embedding"]]
        vectors = [e["values"] for e in found]
    except (KeyError, TypeError) as exc:
        raise bad_upstream(LABEL, f"unexpected embeddings shape ({exc!r})") from None
    return embeddings.response(deployment.model, vectors, body.get("encoding_format"), 0)


def map_error(status: int, data: bytes) -> GatewayError:
    # Gemini answers a bad API key with 400 INVALID_ARGUMENT; it is the
    # gateway's credential that failed, not the client's request.
    if status == 400 and b"API_KEY_INVALID" in data:
        status = 401
    _, message = error_details(data)
    return map_status(LABEL, status, message)


def _embedded_error(obj: dict, data: bytes) -> GatewayError:
    """A Gemini error object in a 200 body or a stream event: its ``code`` is the HTTP status."""
    err = obj.get("error")
    code = err.get("code") if isinstance(err, dict) else None
    return map_error(code if isinstance(code, int) and 400 <= code < 600 else 500, data)
