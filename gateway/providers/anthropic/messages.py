"""OpenAI messages, tools and response_format → the Anthropic Messages request's blocks.

- Content parts: text → ``text`` blocks; ``image_url`` → ``image`` blocks (a
  data URL as a ``base64`` source, an http(s) URL as a ``url`` source:
  Anthropic fetches it itself, so the gateway never does).
- Assistant ``tool_calls`` → ``tool_use`` blocks; ``tool`` messages →
  ``tool_result`` blocks in a user turn (consecutive results share one turn,
  as parallel calls need).
- ``tools`` → ``{name, description, input_schema}``; ``tool_choice`` auto /
  none / required / named → ``auto`` / ``none`` / ``any`` / ``tool``;
  ``parallel_tool_calls: false`` → ``disable_parallel_tool_use``.
- ``response_format`` json_object / json_schema → one forced tool whose input
  schema is the requested schema (any object for json_object); the adapter
  returns its input as the message content. Anthropic's native structured
  output is a beta for some models only; the forced tool works on every Claude
  model with tools. Combined with the client's own tools it is refused (the
  forced tool would stop the model from calling theirs).
"""

from __future__ import annotations

from gateway.errors import invalid
from gateway.providers import features

LABEL = "Anthropic"
JSON_TOOL = "gateway_json_response"  # the forced tool when response_format asks for JSON; its input is the answer


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


def _image(img: features.Image, param: str) -> dict:
    if img.url is not None:
        return {"type": "image", "source": {"type": "url", "url": img.url}}
    return {"type": "image", "source": {"type": "base64", "media_type": img.media_type, "data": img.data}}


def _blocks(content: object, i: int) -> list[dict]:
    return features.parts(content, i, LABEL, _text, _image)


def convert(body: dict, out: dict) -> None:
    """Fill ``out`` (the Anthropic request) with system, messages, tools and tool_choice."""
    system: list[str] = []
    said: list[tuple[str, list[dict]]] = []
    for i, msg in enumerate(body["messages"]):
        role = msg.get("role")
        if role in ("system", "developer"):
            blocks = _blocks(msg.get("content"), i)
            features.system_only_text(blocks, lambda b: b["type"] == "text", i, LABEL)
            system.extend(b["text"] for b in blocks)
            continue
        features.refuse_legacy(msg, i, LABEL)
        if role == "tool":
            tid = msg.get("tool_call_id")
            if not isinstance(tid, str) or not tid:
                raise invalid(f"'messages[{i}].tool_call_id' is required.", param=f"messages[{i}].tool_call_id", code="missing_required_parameter")
            blocks = [{"type": "tool_result", "tool_use_id": tid, "content": features.result_text(msg.get("content"), f"messages[{i}]")}]
            role = "user"
        else:
            blocks = _blocks(msg.get("content"), i)
            if role == "assistant":
                for k, call in enumerate(msg.get("tool_calls") or ()):
                    cid, name, args = features.arguments(call, f"messages[{i}].tool_calls[{k}]")
                    blocks.append({"type": "tool_use", "id": cid, "name": name, "input": args})
        said.append((role, blocks))
    turns = features.alternate(said, "content", LABEL)
    for t in turns:  # one plain text block is sent as a string, as most clients do
        c = t["content"]
        if len(c) == 1 and c[0]["type"] == "text":
            t["content"] = c[0]["text"]
    out["messages"] = turns
    if system:
        out["system"] = "\n\n".join(system)
    _tools(body, out)


def _tools(body: dict, out: dict) -> None:
    offered = features.tools(body)
    choice = features.tool_choice(body, offered)
    fmt = features.response_format(body)
    if fmt is not None:
        if offered:
            raise invalid(f"{LABEL} cannot combine 'response_format' with 'tools' through this gateway; send one of them.",
                          param="response_format", code="unsupported_parameter")
        schema = fmt.schema if fmt.schema is not None else {"type": "object"}
        desc = "Respond by calling this tool with the answer as its input."
        out["tools"] = [{"name": JSON_TOOL, "description": desc, "input_schema": schema}]
        out["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
        return
    if not offered:
        return
    defs = []
    for t in offered:
        d: dict = {"name": t.name, "input_schema": t.parameters}
        if t.description:
            d["description"] = t.description
        defs.append(d)
    out["tools"] = defs
    tc: dict | None = None
    if choice == "none":
        tc = {"type": "none"}
    elif choice == "required":
        tc = {"type": "any"}
    elif choice not in (None, "auto"):
        tc = {"type": "tool", "name": choice}
    if body.get("parallel_tool_calls") is False and choice != "none":
        tc = tc or {"type": "auto"}
        tc["disable_parallel_tool_use"] = True
    if tc is not None:
        out["tool_choice"] = tc
