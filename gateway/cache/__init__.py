"""The response cache (exact + semantic tiers, in-process usearch index, Redis mirror).

    cache = Cache(CacheConfig.from_mapping(settings), redis_url)
    await cache.start()
    controls = parse_controls(headers)      # admission: the 400s for bad x-gateway-cache-* headers
    result = await cache.lookup(req, controls)  # CacheResult(status, response, similarity)
    cache.store(req, completion)            # returns at once; work happens off the request path
    cache.stats(); await cache.flush(namespace)
    replay_chunks(completion)               # a hit as chat.completion.chunk dicts, for SSE replay
"""

import os

if not os.environ.get("GATEWAY_VERIFIER_SOCKET"):  # set where MiniLM runs in the shared verifier process
    try:
        # onnxruntime must be loaded before usearch: the other order crashes the
        # process (segfault in onnxruntime's module init; onnxruntime 1.32 with usearch 2.26).
        import onnxruntime  # noqa: F401
    except ImportError:  # the minilm embedder then reports itself unavailable
        pass

# Resolved on first use, so that the shared verifier process (gateway.cache.verifier), which needs
# only the embedder, does not import the cache, usearch and the Redis client (memory).
_EXPORTS = {"Cache": "cache", "CacheResult": "cache", "CacheConfig": "config", "Controls": "controls",
            "parse_controls": "controls", "replay_chunks": "replay"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.cache' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"gateway.cache.{module}"), name)
    globals()[name] = value
    return value
