"""Chat request validation against OpenAI's published schema.

The types come from ``CreateChatCompletionRequest`` in openai/openai-openapi
(the copy the fuzz test runs against is ``tests/data/openai-chat-openapi.json``).
Every value the schema does not allow is a 400 naming its parameter
(``messages[2].content[0].type``), so nothing the client sends can reach a
``TypeError`` further down or a provider as garbage.

Two bounds go beyond the schema, because the body is serialised again
downstream (cache key, OpenAI adapter) and orjson refuses more than 254
levels:

- a value the schema leaves free-form (a tool's JSON Schema, a
  ``json_schema`` response format, a parameter or message key the gateway
  does not know) may nest at most ``MAX_DEPTH`` levels and hold at most
  ``MAX_NODES`` keys and items;
- a model name is 1-``MAX_MODEL_CHARS`` characters of ``MODEL_CHARS``, since
  it goes into a response header, logs, metric labels and cache keys.

Cheap on the hot path: one dict lookup per parameter and per message key;
only free-form values are walked.
"""

from __future__ import annotations

import re
from typing import Callable

from gateway.errors import GatewayError, invalid

MAX_DEPTH = 32
MAX_NODES = 10_000
MAX_MODEL_CHARS = 256
MODEL_CHARS = "letters, digits and . _ - : / @ +"
_MODEL = re.compile(r"[A-Za-z0-9._:/@+-]{1,%d}" % MAX_MODEL_CHARS)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Content part types each role may send (ChatCompletionRequest*MessageContentPart).
_TEXT_ONLY = frozenset({"text"})
PART_TYPES = {
    "system": _TEXT_ONLY,
    "developer": _TEXT_ONLY,
    "tool": _TEXT_ONLY,
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
    "assistant": frozenset({"text", "refusal"}),
}


def _wrong(param: str, what: str) -> GatewayError:
    return invalid(f"'{param}' must be {what}.", param=param, code="invalid_type")


def _not_one_of(param: str, choices, value: object, context: str = "") -> GatewayError:
    return invalid(
        f"'{param}' must be one of {', '.join(choices)}{context}, got {_short(value)}.", param=param, code="invalid_value"
    )


def _out_of_range(param: str, lo, hi, value) -> GatewayError:
    return invalid(f"'{param}' must be between {lo:g} and {hi:g}, got {value!r}.", param=param, code="invalid_value")


def check_free_form(value: object, param: str) -> None:
    """At most MAX_DEPTH levels and MAX_NODES keys and items below ``param``."""
    if not isinstance(value, (dict, list)):
        return
    stack = [(value, 1)]
    nodes = 0
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise invalid(f"'{param}' nests deeper than {MAX_DEPTH} levels.", param=param, code="invalid_value")
        nodes += len(v)
        if nodes > MAX_NODES:
            raise invalid(f"'{param}' holds more than {MAX_NODES} keys and items.", param=param, code="invalid_value")
        for child in v.values() if isinstance(v, dict) else v:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))


# --- value checkers: check(value, param); None is handled by the caller where the schema allows it ---


def _str(value, param):
    if not isinstance(value, str):
        raise _wrong(param, "a string")


def _bool(value, param):
    if not isinstance(value, bool):
        raise _wrong(param, "a boolean")


def _number(lo: float, hi: float) -> Callable:
    def check(value, param):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(param, "a number")
        if not lo <= value <= hi:
            raise _out_of_range(param, lo, hi, value)

    return check


def _integer(lo: int, hi: int) -> Callable:
    def check(value, param):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(param, "an integer")
        if not lo <= value <= hi:
            raise _out_of_range(param, lo, hi, value)

    return check


def _enum(*choices: str) -> Callable:
    allowed = frozenset(choices)

    def check(value, param):
        if not isinstance(value, str) or value not in allowed:
            raise _not_one_of(param, choices, value)

    return check


def _object(fields: dict[str, Callable] | None = None, required: tuple[str, ...] = ()) -> Callable:
    """An object whose known ``fields`` are checked; other keys are free-form."""
    fields = fields or {}

    def check(value, param):
        if not isinstance(value, dict):
            raise _wrong(param, "an object")
        for name in required:
            if value.get(name) is None:
                raise invalid(f"'{param}.{name}' is required.", param=f"{param}.{name}", code="missing_required_parameter")
        for name, v in value.items():
            sub = fields.get(name)
            if sub is None:
                check_free_form(v, f"{param}.{name}")
            elif v is not None:
                sub(v, f"{param}.{name}")

    return check


def _array(item: Callable, lo: int = 0, hi: int = MAX_NODES) -> Callable:
    def check(value, param):
        if not isinstance(value, list):
            raise _wrong(param, "an array")
        if not lo <= len(value) <= hi:
            raise invalid(f"'{param}' must hold {lo} to {hi} items, got {len(value)}.", param=param, code="invalid_value")
        for i, v in enumerate(value):
            item(v, f"{param}[{i}]")

    return check


def _free(value, param):
    check_free_form(value, param)


def _free_object(value, param):
    if not isinstance(value, dict):
        raise _wrong(param, "an object")
    check_free_form(value, param)


def _tagged(variants: dict[str, Callable]) -> Callable:
    """An object told apart by its ``type`` (OpenAI's discriminated unions)."""

    def check(value, param):
        if not isinstance(value, dict):
            raise _wrong(param, "an object")
        kind = value.get("type")
        sub = variants.get(kind) if isinstance(kind, str) else None
        if sub is None:
            raise _not_one_of(f"{param}.type", variants, kind)
        sub(value, param)

    return check


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _string_map(value, param):
    """``metadata``: string keys to string values."""
    if not isinstance(value, dict):
        raise _wrong(param, "an object")
    for k, v in value.items():
        if not isinstance(v, str):
            raise _wrong(f"{param}.{k}", "a string")


_BIAS = _integer(-100, 100)


def _logit_bias(value, param):
    if not isinstance(value, dict):
        raise _wrong(param, "an object")
    bias = _BIAS
    if len(value) > MAX_NODES:
        raise invalid(f"'{param}' holds more than {MAX_NODES} entries.", param=param, code="invalid_value")
    for k, v in value.items():
        bias(v, f"{param}.{k}")


def _stop(value, param):
    if isinstance(value, str):
        return
    if isinstance(value, list) and 1 <= len(value) <= 4 and all(isinstance(s, str) for s in value):
        return
    raise _wrong(param, "a string or an array of 1 to 4 strings")


def _string_or_text_parts(value, param):
    if isinstance(value, str):
        return
    _array(_TEXT_PART, 1)(value, param)


# --- content parts and messages ----------------------------------------------------------

_TEXT_PART = _object({"text": _str, "type": _str}, ("text",))
_PARTS: dict[str, Callable] = {
    "text": _TEXT_PART,
    "image_url": _object({"type": _str, "image_url": _object({"url": _str, "detail": _enum("auto", "low", "high")}, ("url",))}, ("image_url",)),
    "input_audio": _object({"type": _str, "input_audio": _object({"data": _str, "format": _enum("wav", "mp3")}, ("data", "format"))}, ("input_audio",)),
    "file": _object({"type": _str, "file": _object({"file_data": _str, "file_id": _str, "filename": _str})}, ("file",)),
    "refusal": _object({"type": _str, "refusal": _str}, ("refusal",)),
}

_FUNCTION_CALL = _object({"name": _str, "arguments": _str}, ("name", "arguments"))
_TOOL_CALL = _tagged(
    {
        "function": _object({"id": _str, "type": _str, "function": _FUNCTION_CALL}, ("id", "function")),
        "custom": _object({"id": _str, "type": _str, "custom": _object({"name": _str, "input": _str}, ("name", "input"))}, ("id", "custom")),
    }
)
# Message keys besides role and content, by name; any other key is free-form.
_MESSAGE_FIELDS: dict[str, Callable] = {
    "name": _str,
    "tool_call_id": _str,
    "tool_calls": _array(_TOOL_CALL),
    "function_call": _FUNCTION_CALL,
    "refusal": _str,
    "audio": _object({"id": _str}, ("id",)),
}


def _content(role: str, content: object, param: str) -> None:
    if isinstance(content, str):
        return
    if role == "function":
        raise _wrong(param, "a string or null")
    if not isinstance(content, list) or not content:
        raise _wrong(param, "a string or a non-empty array of content parts")
    allowed = PART_TYPES[role]
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise _wrong(p, "an object")
        kind = part.get("type")
        if not isinstance(kind, str) or kind not in allowed:
            raise _not_one_of(f"{p}.type", sorted(allowed), kind, f" for a {role} message")
        _PARTS[kind](part, p)


def _message(i: int, msg: object) -> None:
    param = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise _wrong(param, "an object")
    role = msg.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise _not_one_of(f"{param}.role", sorted(ROLES), role)
    content = msg.get("content")
    if content is None:
        if role != "assistant" and (role != "function" or "content" not in msg):
            # The schema lets an assistant message omit content, and a function message send null.
            raise invalid(f"'{param}.content' is required.", param=f"{param}.content", code="missing_required_parameter")
    elif type(content) is not str:  # a string is valid content for every role: no call for the usual message
        _content(role, content, f"{param}.content")
    for name, value in msg.items():
        if name == "role" or name == "content":
            continue
        check = _MESSAGE_FIELDS.get(name)
        if check is None:
            check_free_form(value, f"{param}.{name}")
        elif value is not None:
            check(value, f"{param}.{name}")
    if role == "tool" and not isinstance(msg.get("tool_call_id"), str):
        raise invalid(f"'{param}.tool_call_id' is required.", param=f"{param}.tool_call_id", code="missing_required_parameter")
    if role == "function" and not isinstance(msg.get("name"), str):
        raise invalid(f"'{param}.name' is required.", param=f"{param}.name", code="missing_required_parameter")


# --- top-level parameters -------------------------------------------------------------------

_FUNCTION_DEF = _object({"name": _str, "description": _str, "parameters": _free_object, "strict": _bool}, ("name",))
_TOOL = _tagged(
    {
        "function": _object({"type": _str, "function": _FUNCTION_DEF}, ("function",)),
        "custom": _object({"type": _str, "custom": _object({"name": _str, "description": _str}, ("name",))}, ("custom",)),
    }
)


_TOOL_MODE = _enum("none", "auto", "required")
_NAMED_TOOL = _tagged(
    {
        "function": _object({"type": _str, "function": _object({"name": _str}, ("name",))}, ("function",)),
        "custom": _object({"type": _str, "custom": _object({"name": _str}, ("name",))}, ("custom",)),
        "allowed_tools": _object({"type": _str}, ("allowed_tools",)),
    }
)
_FUNCTION_MODE = _enum("none", "auto")
_NAMED_FUNCTION = _object({"name": _str}, ("name",))


def _tool_choice(value, param):
    (_TOOL_MODE if isinstance(value, str) else _NAMED_TOOL)(value, param)


def _function_call(value, param):
    (_FUNCTION_MODE if isinstance(value, str) else _NAMED_FUNCTION)(value, param)


_RESPONSE_FORMAT = _tagged(
    {
        "text": _object({"type": _str}),
        "json_object": _object({"type": _str}),
        "json_schema": _object(
            {"type": _str, "json_schema": _object({"name": _str, "description": _str, "schema": _free_object, "strict": _bool}, ("name",))},
            ("json_schema",),
        ),
    }
)

# Parameter → checker; None values are allowed for all of them (the schema's nullable / optional).
PARAMS: dict[str, Callable] = {
    "stream": _bool,
    "stream_options": _object({"include_usage": _bool, "include_obfuscation": _bool}),
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    "max_tokens": _integer(1, 1_000_000),
    "max_completion_tokens": _integer(1, 1_000_000),
    "n": _integer(1, 128),
    "seed": _integer(-(2**63), 2**63 - 1),
    "logprobs": _bool,
    "top_logprobs": _integer(0, 20),
    "logit_bias": _logit_bias,
    "stop": _stop,
    "store": _bool,
    "parallel_tool_calls": _bool,
    "user": _str,
    "safety_identifier": _str,
    "prompt_cache_key": _str,
    "prompt_cache_retention": _enum("in_memory", "24h"),
    "metadata": _string_map,
    "tools": _array(_TOOL),
    "tool_choice": _tool_choice,
    "functions": _array(_FUNCTION_DEF, 1, 128),
    "function_call": _function_call,
    "response_format": _RESPONSE_FORMAT,
    "modalities": _array(_enum("text", "audio")),
    "audio": _object({"format": _enum("wav", "aac", "mp3", "flac", "opus", "pcm16")}, ("voice", "format")),
    "reasoning_effort": _enum("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "service_tier": _enum("auto", "default", "flex", "scale", "priority", "fast"),
    "verbosity": _enum("low", "medium", "high"),
    "prediction": _object({"type": _enum("content"), "content": _string_or_text_parts}, ("type", "content")),
    "web_search_options": _free_object,
    "moderation": _free_object,
    "prompt_cache_options": _free_object,
}


def check_model_name(model: object) -> str:
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required and must be a non-empty string.", param="model", code="missing_required_parameter")
    if _MODEL.fullmatch(model) is None:
        raise invalid(
            f"'model' must be 1 to {MAX_MODEL_CHARS} characters of {MODEL_CHARS}.", param="model", code="invalid_value"
        )
    return model


def validate_chat(body: dict) -> None:
    """Raise a 400 naming the first parameter that is wrong."""
    check_model_name(body.get("model"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array.", param="messages", code="missing_required_parameter")
    for i, msg in enumerate(messages):
        _message(i, msg)
    params = PARAMS
    for name, value in body.items():
        check = params.get(name)
        if check is None:
            if name != "model" and name != "messages":
                check_free_form(value, name)
        elif value is not None:
            check(value, name)
