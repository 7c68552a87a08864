"""A cached answer replayed as a stream: the ``chat.completion.chunk`` dicts a live stream would send."""

from __future__ import annotations


def replay_chunks(response: dict, include_usage: bool = False, piece_chars: int = 48) -> list[dict]:
    """A cached ``chat.completion`` as ``chat.completion.chunk`` dicts, as a live stream would send them.

    Per choice: a role chunk, content chunks of about ``piece_chars`` characters
    (split after whitespace), tool-call chunks, a finish chunk; then, with
    ``include_usage``, the usage chunk (``choices: []``).
    """
    base = {"id": response.get("id"), "object": "chat.completion.chunk", "created": response.get("created"),
            "model": response.get("model")}
    if response.get("system_fingerprint") is not None:
        base["system_fingerprint"] = response["system_fingerprint"]
    out: list[dict] = []

    def chunk(index: int, delta: dict, finish=None, logprobs=None) -> dict:
        c = {"index": index, "delta": delta, "finish_reason": finish}
        if logprobs is not None:
            c["logprobs"] = logprobs
        return {**base, "choices": [c]}

    for i, choice in enumerate(response.get("choices") or ()):
        index = choice.get("index", i)
        msg = choice.get("message") or {}
        first = {"role": msg.get("role", "assistant"), "content": ""}
        if msg.get("refusal") is not None:
            first["refusal"] = None
        out.append(chunk(index, first))
        content = msg.get("content")
        if content:
            for piece in _pieces(content, piece_chars):
                out.append(chunk(index, {"content": piece}))
        if msg.get("refusal"):
            out.append(chunk(index, {"refusal": msg["refusal"]}))
        for j, tc in enumerate(msg.get("tool_calls") or ()):
            fn = tc.get("function") or {}
            out.append(chunk(index, {"tool_calls": [{"index": j, "id": tc.get("id"), "type": tc.get("type", "function"),
                                                     "function": {"name": fn.get("name"),
                                                                  "arguments": fn.get("arguments", "")}}]}))
        out.append(chunk(index, {}, choice.get("finish_reason") or "stop"))
    if include_usage and response.get("usage") is not None:
        out.append({**base, "choices": [], "usage": response["usage"]})
    return out


def _pieces(text: str, size: int) -> list[str]:
    pieces = []
    start = 0
    n = len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            cut = text.rfind(" ", start + 1, end)
            if cut > start:
                end = cut + 1
        pieces.append(text[start:end])
        start = end
    return pieces
