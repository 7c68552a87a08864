"""What a request is, for the cache: its exact key, its semantic scope, its query.

* exact key: blake2b-128 over the orjson (sorted keys) of the tenant namespace,
  every body field that can change the answer (model, sampling parameters,
  tools, response_format, ...) and the normalised messages. Fields that cannot
  change the answer (stream, stream_options, user, metadata) are left out, and
  parameters equal to OpenAI's defaults count as absent.
* scope: the same hash without the last user message: the namespace inside
  which a semantic match is looked for (same model, same parameters, same
  system prompt and earlier turns).
* query: the text of the last user message (None when the last message is
  not a plain-text user message: then only the exact tier applies).
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import blake2b

import orjson

# Body fields that do not change the answer.
IGNORED = frozenset({"messages", "stream", "stream_options", "user", "metadata", "store", "service_tier", "prediction"})
# OpenAI's defaults: a request that spells one out asks the same as one that does not.
DEFAULTS = {"temperature": 1, "top_p": 1, "n": 1, "presence_penalty": 0, "frequency_penalty": 0,
            "parallel_tool_calls": True, "logprobs": False}
_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


@dataclass(slots=True)
class RequestView:
    exact: str  # hex digest
    scope: str | None  # hex digest; None: exact tier only
    query: str | None
    cacheable: bool
    why_not: str | None  # when not cacheable: "temperature", "n", "tools"


def _text(content) -> str | None:
    """A message's content as one string when it is text only, else None."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None
            parts.append(part["text"])
        return "\n".join(parts).strip()
    return None


def _message(m: dict) -> dict:
    out = {"role": m.get("role")}
    content = m.get("content")
    text = _text(content)
    out["content"] = text if text is not None else content
    for k in ("name", "tool_calls", "tool_call_id", "function_call"):
        v = m.get(k)
        if v is not None:
            out[k] = v
    return out


def _digest(obj) -> str:
    return blake2b(orjson.dumps(obj, option=_OPTS), digest_size=16).hexdigest()


def view(body: dict, tenant: str, *, max_temperature: float, cache_tool_calls: bool, cache_multiple_choices: bool) -> RequestView:
    params = {}
    for k, v in body.items():
        if k in IGNORED or v is None:
            continue
        if k in DEFAULTS:
            d = DEFAULTS[k]
            if v == d and isinstance(v, bool) == isinstance(d, bool):
                continue
        params[k] = v
    messages = [_message(m) for m in body.get("messages") or ()]
    exact = _digest((tenant, params, messages))
    why_not = None
    temperature = body.get("temperature")
    if (1.0 if temperature is None else temperature) > max_temperature:
        why_not = "temperature"
    elif (body.get("n") or 1) > 1 and not cache_multiple_choices:
        why_not = "n"
    elif (body.get("tools") or body.get("functions")) and not cache_tool_calls:
        why_not = "tools"
    scope = query = None
    if messages and messages[-1]["role"] == "user" and isinstance(messages[-1]["content"], str):
        query = messages[-1]["content"]
        if query:
            scope = _digest((tenant, params, messages[:-1]))
        else:
            query = None
    return RequestView(exact, scope, query, why_not is None, why_not)
