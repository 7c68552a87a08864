"""Google Gemini's wire format in the simulator: generateContent, streamGenerateContent (SSE or a JSON array), models."""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson

from gateway.simulator.features import json_answer, plan_calls
from gateway.simulator.settings import Settings
from gateway.simulator.wire import SSE, Handler, Invalid, Reply, Request, answer, embed, endpoint, json_object
from gateway.simulator.wire import error_words, new_id, opt_int, opt_number, pieces, read_turns, stops_list, words

AUTH_HEADER = b"x-goog-api-key"
OVERLOADED = 429

_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ABORTED",
    429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}


def error(status: int, message: str | None = None, reason: str | None = None) -> Reply:
    name, message = error_words(status, message, _STATUS, _MESSAGES, "INTERNAL", "FAILED_PRECONDITION")
    err: dict = {"code": status, "message": message, "status": name}
    if reason:  # Google's machine-readable why, as the real API sends it in an ErrorInfo detail
        err["details"] = [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}}
        ]
    return Reply(status, orjson.dumps({"error": err}))


def _key(req: Request) -> str:
    key = req.headers.get(b"x-goog-api-key")
    if key:
        return key.decode("latin-1")
    if "key=" in req.query:
        return parse_qs(req.query).get("key", [""])[0]
    return ""


def _auth(req: Request, s: Settings) -> Reply | None:
    key = _key(req)
    if not key:
        return error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API key or other form of API consumer identity to call this API.",
        )
    if s.api_key is not None and key != s.api_key:
        return error(400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID")
    return None


_endpoint = endpoint(_auth, lambda exc: error(400, exc.message))


def _text(content: object, where: str) -> str:
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
        raise Invalid(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    texts = []
    for j, p in enumerate(content["parts"]):
        if not isinstance(p, dict):
            raise Invalid(f"* GenerateContentRequest.{where}.parts[{j}]: must be an object")
        if isinstance(p.get("text"), str):
            texts.append(p["text"])
        elif "inlineData" in p:
            d = p["inlineData"]
            if not isinstance(d, dict) or not d.get("mimeType") or not isinstance(d.get("data"), str):
                raise Invalid(f"* GenerateContentRequest.{where}.parts[{j}].inline_data: mimeType and data are required")
        elif "fileData" in p:
            d = p["fileData"]
            if not isinstance(d, dict) or not d.get("fileUri") or not d.get("mimeType"):
                raise Invalid(f"* GenerateContentRequest.{where}.parts[{j}].file_data: fileUri and mimeType are required")
        elif "functionCall" in p:
            fc = p["functionCall"]
            if not isinstance(fc, dict) or not fc.get("name"):
                raise Invalid(f"* GenerateContentRequest.{where}.parts[{j}].function_call.name: Name cannot be empty.")
        elif "functionResponse" in p:
            fr = p["functionResponse"]
            if not isinstance(fr, dict) or not fr.get("name"):
                raise Invalid(f"* GenerateContentRequest.{where}.parts[{j}].function_response.name: Name cannot be empty.")
            if not isinstance(fr.get("response"), dict):
                raise Invalid(f"* GenerateContentRequest.{where}.parts[{j}].function_response.response: must be an object")
            texts.append("tool result " + orjson.dumps(fr["response"]).decode())
    return " ".join(texts)


def _tools(body: dict) -> tuple[list[tuple[str, object]], str | None]:
    out = []
    for i, t in enumerate(body.get("tools") or ()):
        for j, d in enumerate((t or {}).get("functionDeclarations") or ()):
            if not isinstance(d, dict) or not d.get("name"):
                raise Invalid(f"* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Name cannot be empty.")
            out.append((d["name"], d.get("parameters") or d.get("parametersJsonSchema")))
    fcc = ((body.get("toolConfig") or {}).get("functionCallingConfig")) or {}
    mode = fcc.get("mode", "AUTO")
    if mode not in ("AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"):
        raise Invalid(f"Invalid value at 'tool_config.function_calling_config.mode' ({mode!r})")
    names = fcc.get("allowedFunctionNames")
    if names and mode != "ANY":
        raise Invalid("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: only allowed with mode ANY")
    if mode == "NONE":
        return out, "none"
    if mode == "ANY":
        return out, names[0] if names else "required"
    return out, None


def _parts_with(c: dict, key: str) -> bool:
    return any(isinstance(p, dict) and key in p for p in c.get("parts") or ())


def _turn(i: int, c: object) -> tuple[str, str]:
    role = c.get("role", "user") if isinstance(c, dict) else None
    if role not in ("user", "model"):
        raise Invalid(f"Please use a valid role: user, model. (contents[{i}].role = {role!r})")
    return role, _text(c, f"contents[{i}]")


_FINISH = {"end": "STOP", "stop_sequence": "STOP", "length": "MAX_TOKENS"}


@_endpoint
def generate(req: Request, s: Settings, model: str, stream: bool) -> Reply:
    body = json_object(req.body)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Invalid("* GenerateContentRequest.contents: contents is not specified")
    prompt = 0
    system = body.get("systemInstruction", body.get("system_instruction"))
    if system is not None:
        prompt += words(_text(system, "system_instruction"))
    prompt, last_user = read_turns(contents, _turn, prompt)
    config = body.get("generationConfig", body.get("generation_config")) or {}
    if not isinstance(config, dict):
        raise Invalid("generationConfig must be an object")
    max_tokens = opt_int(config, "maxOutputTokens")
    if max_tokens is None:
        max_tokens = opt_int(config, "max_output_tokens")
    count = opt_int(config, "candidateCount", 1, 8) or opt_int(config, "candidate_count", 1, 8) or 1
    opt_number(config, "temperature", 0, 2)
    opt_number(config, "topP", 0, 1)
    stops = stops_list(config.get("stopSequences", config.get("stop_sequences")), "stopSequences", 5)

    mime = config.get("responseMimeType", "text/plain")
    schema = config.get("responseSchema")
    if schema is not None and mime != "application/json":
        raise Invalid("* GenerateContentRequest.generation_config.response_schema: responseSchema needs responseMimeType application/json")
    tools, choice = _tools(body)
    after_tool = isinstance(contents[-1], dict) and _parts_with(contents[-1], "functionResponse")
    calls = plan_calls(tools, choice, last_user, after_tool)
    a = answer("google", last_user, s.response_tokens, max_tokens, stops)
    if mime == "application/json":
        a.text, a.end = json_answer(schema, a.text), "end"
    finish = _FINISH[a.end]
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": a.tokens * count,
        "totalTokenCount": prompt + a.tokens * count,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    rid = new_id("sim")
    if calls:
        # A function call comes whole, in one response (streamed: one event), as Gemini sends it.
        parts = [{"functionCall": {"name": name, "args": args}} for name, args in calls]
        candidates = [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": i} for i in range(count)]
        doc = orjson.dumps({"candidates": candidates, "usageMetadata": usage, "modelVersion": model, "responseId": rid})
        if not stream:
            return Reply(200, doc)
        if "alt=sse" not in req.query:
            return Reply(200, b"[" + doc + b"]")
        return Reply(200, frames=[b"data: " + doc + b"\r\n\r\n"], content_type=SSE)
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


# The real models' output sizes (outputDimensionality may ask for fewer).
_DIMENSIONS = {"gemini-embedding-001": 3072, "text-embedding-004": 768}


def _embed_one(r: object, where: str) -> dict:
    if not isinstance(r, dict):
        raise Invalid(f"* {where}: must be an object")
    text = _text(r.get("content"), f"{where}.content")
    if not text:
        raise Invalid(f"* {where}.content.parts: contents.parts must not be empty.")
    return {"values": embed(text, r["_dims"]).tolist()}


@_endpoint
def embed_content(req: Request, s: Settings, model: str, batch: bool) -> Reply:
    body = json_object(req.body)
    full = _DIMENSIONS.get(model, 3072)
    items = body.get("requests") if batch else [body]
    if not isinstance(items, list) or not items:
        raise Invalid("* BatchEmbedContentsRequest.requests: requests is not specified")
    for i, r in enumerate(items):
        if not isinstance(r, dict):
            raise Invalid(f"* requests[{i}]: must be an object")
        if batch and r.get("model") != f"models/{model}":
            raise Invalid(f"* BatchEmbedContentsRequest.requests[{i}].model: model must match models/{model}")
        dims = opt_int(r, "outputDimensionality", 1, full)
        r["_dims"] = dims or full
    done = [_embed_one(r, f"requests[{i}]") for i, r in enumerate(items)]
    return Reply(200, orjson.dumps({"embeddings": done} if batch else {"embedding": done[0]}))


@_endpoint
def models(req: Request, s: Settings) -> Reply:
    names = ("gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro")
    listed = [
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
    return Reply(200, orjson.dumps({"models": listed}))


ROUTES = {(b"GET", "/v1beta/models"): models}
_MODEL_PATHS = ("/v1beta/models/", "/v1/models/")


def match(req: Request) -> Handler | None:
    """``POST /v1beta/models/MODEL:generateContent`` (or ``:streamGenerateContent``): the model is in the path."""
    if req.method == b"POST" and req.path.startswith(_MODEL_PATHS):
        model, _, method = req.path.split("/models/", 1)[1].rpartition(":")
        if model and method in ("generateContent", "streamGenerateContent"):
            stream = method == "streamGenerateContent"
            return lambda r, s: generate(r, s, model, stream)
        if model and method in ("embedContent", "batchEmbedContents"):
            batch = method == "batchEmbedContents"
            return lambda r, s: embed_content(r, s, model, batch)
    return None
