"""OpenAI's response objects, built in one place.

``chat.completion`` and ``chat.completion.chunk`` dicts come from the
adapters (a provider's answer), the pipeline (a stream's usage chunk, a
stream rebuilt for the cache) and the cache (an answer replayed as a stream);
all of them build through these so the shape cannot drift between them.
"""

from __future__ import annotations

COMPLETION = "chat.completion"
CHUNK = "chat.completion.chunk"
_NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def completion(id: str, created: int, model: str, choices: list[dict], usage: dict | None) -> dict:
    return {"id": id, "object": COMPLETION, "created": created, "model": model, "choices": choices, "usage": usage}


def choice(index: int, content: str | None, finish_reason: str | None, message: dict | None = None) -> dict:
    """One choice of a completion; ``message`` replaces the plain assistant text message when given."""
    return {
        "index": index,
        "message": message if message is not None else {"role": "assistant", "content": content, "refusal": None},
        "finish_reason": finish_reason,
        "logprobs": None,
    }


def chunk(id: str, created: int, model: str, delta: dict, finish_reason: str | None = None, index: int = 0) -> dict:
    return {
        "id": id,
        "object": CHUNK,
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage_chunk(id: str, created: int, model: str, usage: dict | None) -> dict:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices, the usage."""
    return {"id": id, "object": CHUNK, "created": created, "model": model, "choices": [], "usage": usage or dict(_NO_USAGE)}


def tool_call(id: str, name: str, arguments: str) -> dict:
    """One call in ``message.tool_calls``; ``arguments`` is JSON text, as OpenAI sends it."""
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_message(content: str | None, calls: list[dict]) -> dict:
    """An assistant message that calls tools (``content`` is None without text)."""
    return {"role": "assistant", "content": content, "refusal": None, "tool_calls": calls}


def tool_call_delta(index: int, arguments: str, id: str | None = None, name: str | None = None) -> dict:
    """A chunk's ``delta`` for call ``index``: the first names it (id, name), the rest add argument text."""
    call: dict = {"index": index}
    if id is not None:
        call["id"] = id
        call["type"] = "function"
        call["function"] = {"name": name, "arguments": arguments}
    else:
        call["function"] = {"arguments": arguments}
    return {"tool_calls": [call]}

