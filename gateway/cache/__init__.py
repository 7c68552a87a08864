"""The response cache (exact + semantic tiers, in-process usearch index, Redis mirror).

    cache = Cache(CacheConfig.from_mapping(settings), redis_url)
    await cache.start()
    controls = parse_controls(headers)      # admission: the 400s for bad x-gateway-cache-* headers
    result = await cache.lookup(req, controls)  # CacheResult(status, response, similarity)
    cache.store(req, completion)            # returns at once; work happens off the request path
    cache.stats(); await cache.flush(namespace)
    replay_chunks(completion)               # a hit as chat.completion.chunk dicts, for SSE replay
"""

try:
    # onnxruntime must be loaded before usearch: the other order crashes the
    # process (segfault in onnxruntime's module init; onnxruntime 1.32 with usearch 2.26).
    import onnxruntime  # noqa: F401
except ImportError:  # the minilm embedder then reports itself unavailable
    pass

from gateway.cache.cache import Cache, CacheResult
from gateway.cache.config import CacheConfig
from gateway.cache.controls import Controls, parse_controls
from gateway.cache.replay import replay_chunks

__all__ = ["Cache", "CacheConfig", "CacheResult", "Controls", "parse_controls", "replay_chunks"]
