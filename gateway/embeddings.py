"""``POST /v1/embeddings``: the request's checks and the OpenAI response shape, shared by the adapters.

An embeddings request is a second *kind* of request on the chat path
(``ChatRequest.kind == "embeddings"``): admission, the cache (exact input
only), the router (groups, failover, breakers), usage and the finish hook are
the same; only validation here and each adapter's ``build_embeddings`` /
``parse_embeddings`` differ. Providers without an embeddings API refuse it
with a 400 before sending anything.
"""

from __future__ import annotations

import base64

import numpy as np

from gateway.errors import invalid

KIND = "embeddings"
_MAX_INPUTS = 2048  # OpenAI's limit per request


def validate(body: dict) -> None:
    """A 400 naming the first parameter that is wrong."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required and must be a non-empty string.", param="model", code="missing_required_parameter")
    inputs(body)
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise invalid("'encoding_format' must be 'float' or 'base64'.", param="encoding_format", code="invalid_value")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= 65536):
        raise invalid("'dimensions' must be a positive integer.", param="dimensions", code="invalid_value")
    if body.get("stream"):
        raise invalid("Embeddings cannot be streamed.", param="stream", code="invalid_value")


def inputs(body: dict) -> list:
    """The inputs as a list: strings, or token arrays (lists of ints)."""
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(t, int) and not isinstance(t, bool) for t in raw)):
        raw = [raw]
    if not isinstance(raw, list) or not raw or len(raw) > _MAX_INPUTS:
        raise invalid(f"'input' must be a string or a non-empty array of at most {_MAX_INPUTS} inputs.", param="input", code="invalid_value")
    for i, item in enumerate(raw):
        if isinstance(item, str):
            if not item:
                raise invalid(f"'input[{i}]' must not be empty.", param="input", code="invalid_value")
        elif not (isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item)):
            raise invalid(f"'input[{i}]' must be a string or an array of token ids.", param="input", code="invalid_type")
    return raw


def texts(body: dict, label: str) -> list[str]:
    """The inputs as text, for a provider that takes no token ids."""
    out = inputs(body)
    if not all(isinstance(t, str) for t in out):
        raise invalid(f"{label} takes text inputs only, not token ids.", param="input", code="unsupported_parameter")
    return out


def response(model: str, vectors: list[list[float]], encoding: str | None, prompt_tokens: int) -> dict:
    """OpenAI's ``list`` of ``embedding`` objects; base64 is the little-endian float32 bytes, as OpenAI sends."""
    data = []
    for i, v in enumerate(vectors):
        value = base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() if encoding == "base64" else v
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
