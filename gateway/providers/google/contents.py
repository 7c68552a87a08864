"""OpenAI messages, tools and response_format → Gemini ``contents``, ``tools``, ``toolConfig`` and JSON output.

- Content parts: text → ``text``; ``image_url`` → ``inlineData`` (a data URL)
  or ``fileData`` (an http(s) URL, which Gemini fetches itself; its type comes
  from the file name, and a URL whose name does not tell an image type is
  refused with a 400, since ``fileData`` needs one and the gateway does not
  fetch on the client's behalf).
- Assistant ``tool_calls`` → ``functionCall`` parts of a ``model`` turn;
  ``tool`` messages → ``functionResponse`` parts of a user turn, named after
  the call they answer (Gemini matches results by name). A result that is a
  JSON object is sent as is; anything else as ``{"result": text}``.
- ``tools`` → one ``functionDeclarations`` tool; ``tool_choice`` auto / none /
  required / named → ``functionCallingConfig`` AUTO / NONE / ANY / ANY with
  ``allowedFunctionNames``.
- ``response_format`` json_object → ``responseMimeType: application/json``;
  json_schema → that plus ``responseSchema``.

Schemas go through ``schema()``: Gemini's ``Schema`` is an OpenAPI subset, so
JSON Schema keywords it does not have (``additionalProperties``, ``$schema``,
``strict``...) are dropped rather than refused by Google.
"""

from __future__ import annotations

import orjson

from gateway.errors import invalid
from gateway.providers import features

LABEL = "Google"

# The keywords of Gemini's Schema (google-genai types.Schema), in JSON Schema spelling.
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "items", "properties", "required",
    "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum", "minProperties", "maxProperties",
    "pattern", "anyOf", "propertyOrdering", "default", "example",
})


def schema(s: object) -> object:
    """A JSON Schema in Gemini's subset: unknown keywords dropped, ``type: [x, "null"]`` as ``nullable``."""
    if not isinstance(s, dict):
        return s
    out: dict = {}
    for k, v in s.items():
        if k not in _SCHEMA_KEYS:
            continue
        if k == "properties" and isinstance(v, dict):
            v = {name: schema(sub) for name, sub in v.items()}
        elif k == "items":
            v = schema(v)
        elif k == "anyOf" and isinstance(v, list):
            v = [schema(sub) for sub in v]
        elif k == "type" and isinstance(v, list):
            kinds = [t for t in v if t != "null"]
            if len(kinds) != len(v):
                out["nullable"] = True
            v = kinds[0] if kinds else "null"
        out[k] = v
    return out


def _image(img: features.Image, param: str) -> dict:
    if img.url is None:
        return {"inlineData": {"mimeType": img.media_type, "data": img.data}}
    if img.media_type is None:
        raise invalid(
            f"{LABEL} needs an image URL's type; this URL's file name does not end in .png, .jpg, .gif or .webp. "
            "Send the image as a data URL instead.",
            param=f"{param}.image_url.url",
            code="unsupported_content",
        )
    return {"fileData": {"mimeType": img.media_type, "fileUri": img.url}}


def _parts(content: object, i: int) -> list[dict]:
    return features.parts(content, i, LABEL, lambda t: {"text": t}, _image)


def _response(text: str) -> dict:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        obj = None
    return obj if isinstance(obj, dict) else {"result": text}


def convert(body: dict, out: dict, config: dict) -> None:
    """Fill ``out`` (the Gemini request) with contents, systemInstruction, tools and toolConfig; JSON output in ``config``."""
    system: list[dict] = []
    said: list[tuple[str, list[dict]]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the results that answer them
    for i, msg in enumerate(body["messages"]):
        role = msg.get("role")
        if role in ("system", "developer"):
            parts = _parts(msg.get("content"), i)
            features.system_only_text(parts, lambda p: "text" in p, i, LABEL)
            system.extend(parts)
            continue
        features.refuse_legacy(msg, i, LABEL)
        if role == "tool":
            tid = msg.get("tool_call_id")
            name = names.get(tid) if isinstance(tid, str) else None
            if name is None:
                raise invalid(f"'messages[{i}].tool_call_id' does not answer a tool call of an earlier assistant message.",
                              param=f"messages[{i}].tool_call_id", code="invalid_value")
            text = features.result_text(msg.get("content"), f"messages[{i}]")
            parts = [{"functionResponse": {"name": name, "response": _response(text)}}]
            role = "user"
        else:
            parts = _parts(msg.get("content"), i)
            if role == "assistant":
                role = "model"
                for k, call in enumerate(msg.get("tool_calls") or ()):
                    cid, name, args = features.arguments(call, f"messages[{i}].tool_calls[{k}]")
                    names[cid] = name
                    parts.append({"functionCall": {"name": name, "args": args}})
        said.append((role, parts))
    out["contents"] = features.alternate(said, "parts", LABEL)
    if system:
        out["systemInstruction"] = {"parts": system}
    offered = features.tools(body)
    choice = features.tool_choice(body, offered)
    if offered:
        decls = []
        for t in offered:
            d: dict = {"name": t.name, "parameters": schema(t.parameters)}
            if t.description:
                d["description"] = t.description
            decls.append(d)
        out["tools"] = [{"functionDeclarations": decls}]
        if choice is not None:
            mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}.get(choice, "ANY")
            fcc: dict = {"mode": mode}
            if mode == "ANY" and choice != "required":
                fcc["allowedFunctionNames"] = [choice]
            out["toolConfig"] = {"functionCallingConfig": fcc}
    fmt = features.response_format(body)
    if fmt is not None:
        config["responseMimeType"] = "application/json"
        if fmt.schema is not None:
            config["responseSchema"] = schema(fmt.schema)
