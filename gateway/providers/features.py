"""The OpenAI request's tools, tool choice, images and response format, read once for the translating adapters.

Anthropic and Gemini express each of these differently; what the client
asked is read here, checked, and handed over in one plain form, so a bad
shape gets the same 400 (naming the parameter) whichever provider serves it.
"""

from __future__ import annotations

import binascii
import mimetypes
from typing import Any, Callable, NamedTuple

import orjson

from gateway.errors import invalid

# What both Anthropic and Gemini take inline (Anthropic's list; Gemini takes these and more).
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


class Tool(NamedTuple):
    name: str
    description: str | None
    parameters: dict


class Image(NamedTuple):
    media_type: str | None  # None for a URL whose type its name does not tell
    data: str | None  # base64, for a data URL
    url: str | None  # for an http(s) URL


class Format(NamedTuple):
    """``response_format`` asking for JSON: with a schema (json_schema) or without (json_object)."""

    schema: dict | None
    name: str


def tools(body: dict) -> list[Tool]:
    out = []
    for i, t in enumerate(body.get("tools") or ()):
        param = f"tools[{i}]"
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise invalid(f"'{param}' must be {{'type': 'function', 'function': {{...}}}}.", param=param, code="invalid_type")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"'{param}.function.name' is required.", param=f"{param}.function.name", code="missing_required_parameter")
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        elif not isinstance(params, dict):
            raise invalid(f"'{param}.function.parameters' must be an object.", param=f"{param}.function.parameters", code="invalid_type")
        desc = fn.get("description")
        out.append(Tool(name, desc if isinstance(desc, str) and desc else None, params))
    return out


def tool_choice(body: dict, offered: list[Tool]) -> str | None:
    """``auto`` | ``none`` | ``required`` | a tool's name | None (not given)."""
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if isinstance(name, str) and any(t.name == name for t in offered):
            return name
        raise invalid(f"'tool_choice' names a tool that is not in 'tools': {name!r}.", param="tool_choice", code="invalid_value")
    raise invalid(
        "'tool_choice' must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}.",
        param="tool_choice",
        code="invalid_value",
    )


def response_format(body: dict) -> Format | None:
    rf = body.get("response_format")
    if not rf:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return Format(None, "json")
    if kind == "json_schema":
        js = rf.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        if not isinstance(schema, dict):
            raise invalid("'response_format.json_schema.schema' must be an object.", param="response_format.json_schema.schema", code="invalid_type")
        name = js.get("name")
        return Format(schema, name if isinstance(name, str) and name else "response")
    raise invalid("'response_format.type' must be 'text', 'json_object' or 'json_schema'.", param="response_format.type", code="invalid_value")


def image(part: dict, param: str) -> Image:
    """An ``image_url`` part: a base64 data URL, or an http(s) URL the provider fetches itself."""
    iu = part.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu
    if not isinstance(url, str) or not url:
        raise invalid(f"'{param}.image_url.url' is required.", param=f"{param}.image_url.url", code="missing_required_parameter")
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64" or not data:
            raise invalid(f"'{param}.image_url.url' must be a base64 data URL (data:image/png;base64,...).",
                          param=f"{param}.image_url.url", code="invalid_value")
        if media_type not in IMAGE_TYPES:
            raise invalid(f"Image type {media_type!r} is not supported; use one of {', '.join(sorted(IMAGE_TYPES))}.",
                          param=f"{param}.image_url.url", code="invalid_value")
        try:
            binascii.a2b_base64(data[:64].encode() + b"=" * (-min(len(data), 64) % 4))  # a cheap look at the head
        except binascii.Error:
            raise invalid(f"'{param}.image_url.url' is not valid base64.", param=f"{param}.image_url.url", code="invalid_value") from None
        return Image(media_type, data, None)
    if url.startswith(("https://", "http://")):
        guessed, _ = mimetypes.guess_type(url.split("?", 1)[0])
        return Image(guessed if guessed in IMAGE_TYPES else None, None, url)
    raise invalid(f"'{param}.image_url.url' must be an http(s) URL or a data URL.", param=f"{param}.image_url.url", code="invalid_value")


def arguments(call: dict, param: str) -> tuple[str, str, dict]:
    """An assistant message's tool call: ``(id, name, parsed arguments)``."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise invalid(f"'{param}.function.name' is required.", param=f"{param}.function.name", code="missing_required_parameter")
    raw = fn.get("arguments") or "{}"
    try:
        args = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise invalid(f"'{param}.function.arguments' must be a JSON object.", param=f"{param}.function.arguments", code="invalid_value")
    cid = call.get("id")
    return (cid if isinstance(cid, str) else ""), fn["name"], args


def joined_text(content: object, refuse: Callable[[int], Exception]) -> str | None:
    """A string, or a list of text parts joined; None when ``content`` is neither. ``refuse(j)`` for a non-text part."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise refuse(j)
            texts.append(p["text"])
        return "".join(texts)
    return None


def result_text(content: Any, param: str) -> str:
    """A tool message's content as text (a string, or text parts)."""
    def refuse(j: int) -> Exception:
        return invalid(f"'{param}.content[{j}]' must be a text part in a tool message.", param=f"{param}.content", code="invalid_value")
    text = joined_text(content, refuse)
    return "" if text is None else text


def alternate(said: list[tuple[str, list[dict]]], key: str, label: str) -> list[dict]:
    """Turns from (role, parts) pairs: empty ones dropped, neighbours of one role merged, since Claude and
    Gemini both want user and assistant to alternate, where OpenAI accepts two user messages in a row."""
    turns: list[dict] = []
    for role, parts in said:
        if not parts:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1][key].extend(parts)
        else:
            turns.append({"role": role, key: parts})
    if not turns:
        raise invalid(f"{label} needs at least one user or assistant message with content.", param="messages", code="invalid_value")
    return turns


def parts(content: object, i: int, label: str, text: Callable[[str], dict], picture: Callable[[Image, str], dict]) -> list[dict]:
    """One message's content as the provider's parts: ``text(t)`` for each non-empty text, ``picture(img, param)`` per image."""
    if isinstance(content, str):
        return [text(content)] if content else []
    out: list[dict] = []
    for j, part in enumerate(content or ()):
        kind = part.get("type")
        param = f"messages[{i}].content[{j}]"
        if kind == "text":
            t = part.get("text")
            if not isinstance(t, str):
                raise invalid(f"'{param}.text' must be a string.", param=f"{param}.text", code="invalid_type")
            if t:
                out.append(text(t))
        elif kind == "image_url":
            out.append(picture(image(part, param), param))
        else:
            raise invalid(f"Content parts of type '{kind}' are not supported by {label} through this gateway.",
                          param=f"messages[{i}].content", code="unsupported_content")
    return out


def refuse_legacy(msg: dict, i: int, label: str) -> None:
    """The pre-tools ``function`` role and ``function_call``: OpenAI deprecated them; tools say the same."""
    if msg.get("role") == "function" or msg.get("function_call"):
        raise invalid(f"The legacy 'function' role and 'function_call' are not supported by {label}; use tools.",
                      param=f"messages[{i}].role", code="unsupported_parameter")


def system_only_text(parts: list[dict], is_text: Callable[[dict], bool], i: int, label: str) -> None:
    if not all(is_text(p) for p in parts):
        raise invalid(f"{label} takes only text in a system message.", param=f"messages[{i}].content", code="unsupported_content")
