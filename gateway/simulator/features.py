"""What the simulated providers do with tools and structured output, decided the same way for all three.

Deterministic, so tests can rely on it:

- **Tool calls.** When tools are offered, the choice allows them (not ``none``) and
  the conversation ends with the user (not with a tool result), the model calls:
  the named tool when the choice names one; else the tools listed in a
  ``[[tools: a, b]]`` marker in the last user message (several: parallel calls);
  else the first tool. Arguments are an example of each tool's parameter schema.
  After a tool result the model answers in text, quoting the result.
- **JSON.** Asked for JSON, the answer is an example of the schema (every
  property), or ``{"answer": <the usual text>}`` without one.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_MARKER = re.compile(r"\[\[tools:\s*([^\]]*)\]\]")


def example(schema: Any, text: str = "sim") -> Any:
    """A value that satisfies the common JSON Schema shapes (type, enum, properties, items, anyOf)."""
    if not isinstance(schema, dict):
        return text
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return example(schema[key][0], text)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = kind.lower() if isinstance(kind, str) else ("object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: example(sub, text) for name, sub in props.items()}
    if kind == "array":
        return [example(schema.get("items"), text)]
    if kind == "integer":
        return max(1, int(schema.get("minimum") or 1))
    if kind == "number":
        return float(schema.get("minimum") or 1.5)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text


def plan_calls(tools: list[tuple[str, Any]], choice: str | None, last_user: str, after_tool: bool) -> list[tuple[str, dict]]:
    """The tool calls the model makes: ``[(name, arguments)]``; empty for a text answer.

    ``tools``: ``(name, parameter schema)`` in the order offered; ``choice``: ``auto`` (or
    None), ``none``, ``required`` or a tool's name.
    """
    if not tools or choice == "none" or after_tool:
        return []
    schemas = dict(tools)
    if choice not in (None, "auto", "required"):
        names = [choice] if choice in schemas else []
    else:
        m = _MARKER.search(last_user)
        names = [n.strip() for n in m.group(1).split(",") if n.strip() in schemas] if m else []
        names = names or [tools[0][0]]
    calls = []
    for name in names:
        args = example(schemas[name])
        calls.append((name, args if isinstance(args, dict) else {}))
    return calls


def json_answer(schema: Any, text: str) -> str:
    """The JSON text of an answer asked for as JSON."""
    if isinstance(schema, dict):
        return orjson.dumps(example(schema, text)).decode()
    return orjson.dumps({"answer": text}).decode()
