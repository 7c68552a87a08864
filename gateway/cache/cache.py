"""The response cache: exact tier, semantic tier, Redis mirror, behind one small class.

Lookup (on the event loop, no I/O, no locks)::

    controls (Cache-Control, x-gateway-cache-*)   -> bypass?          controls.py
    exact key (blake2b of the normalised request) -> dict -> hit      keys.py, entries.py
    semantic scope -> candidates -> guard -> verifier -> semantic-hit  semantic.py
    otherwise                                     -> miss

Store returns at once: a background writer task analyses the prompt, puts the
entry in the local index and hands it to the Redis mirror (mirror.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import orjson

from gateway.cache.config import CacheConfig
from gateway.cache.controls import Controls, parse_controls, ttl_error, valid_namespace
from gateway.cache.entries import INDEX_STATIC, Entries, Entry
from gateway.cache.keys import RequestView, view
from gateway.cache.mirror import Mirror
from gateway.cache.semantic import Semantic
from gateway.errors import GatewayError

log = logging.getLogger("gateway.cache")


@dataclass(slots=True)
class CacheResult:
    status: str  # "hit" | "semantic-hit" | "miss" | "bypass"
    response: dict | None = None  # an OpenAI chat.completion
    similarity: float | None = None


_BYPASS = CacheResult("bypass")
_MISS = CacheResult("miss")


@dataclass(slots=True)
class LookupState:
    """What lookup learnt about a request, kept in ``req.cache_state`` so store need not redo it."""

    controls: Controls
    tenant: str  # the namespace entries are stored under ("<key name>/<namespace>" with scope_by_key)
    view: RequestView | None
    hvec: np.ndarray | None = None
    svec: np.ndarray | None = None  # the query's static vector (short prompts, minilm), kept for store
    analysis: tuple | None = None
    ckey: int | None = None


@dataclass(slots=True)
class _Job:
    state: LookupState
    ttl: int
    raw: bytes


class Cache:
    CLOSE_WAIT_SECONDS = 2.0  # close(): how long queued stores may take to reach the index (and Redis)

    def __init__(self, config: CacheConfig, redis_url: str | None) -> None:
        self.config = config
        self.redis_url = redis_url
        self.entries = Entries(config.max_entries, config.redis_prefix + "e:")
        self.semantic = Semantic(config, self.entries)
        self.mirror = Mirror(config, redis_url, self.entries, self.semantic) if redis_url else None
        self._index_executor = ThreadPoolExecutor(1, thread_name_prefix="gw-cache-index")  # HNSW rebuilds
        v = self.semantic.verifier
        self._shared = v if getattr(v, "shared", False) and self.semantic.static is not None else None
        self._queue: asyncio.Queue[_Job] | None = None
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self.hits = self.semantic_hits = self.misses = self.bypasses = 0
        self.stores = self.store_skipped = self.store_dropped = 0
        self.store_dropped_at_close = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def redis_client(self):
        """The mirror's Redis client (for health checks), or None without REDIS_URL or before start()."""
        return self.mirror.client if self.mirror is not None else None

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._queue = asyncio.Queue(self.config.write_queue)
        v = self.semantic.verifier
        if v is not None and not v.is_async:
            self._tasks.append(asyncio.create_task(self.semantic.warm(), name="cache-verifier-warm"))
        if self.mirror is not None:
            self._tasks.append(await self.mirror.start())
        self._tasks.append(asyncio.create_task(self._writer(), name="cache-writer"))
        self._tasks.append(asyncio.create_task(self._sweeper(), name="cache-sweeper"))
        self._tasks.append(asyncio.create_task(self.semantic.backfill(), name="cache-backfill"))
        if self.semantic.static is not None and v is not None and not v.is_async:
            self._tasks.append(asyncio.create_task(self.semantic.pre_embed(), name="cache-pre-embed"))
        if getattr(v, "shared", False):  # connects, and has stored short prompts embedded ahead of use
            self._tasks.append(asyncio.create_task(v.run(self._live), name="cache-shared-verifier"))

    async def close(self) -> None:
        if self.mirror is not None:
            self.mirror.closing = True
        if self._queue is not None:
            # Let queued stores reach the index and Redis (bounded wait); those it cannot wait for are
            # dropped, and counted (store_dropped, store_dropped_at_close).
            try:
                await asyncio.wait_for(self._queue.join(), self.CLOSE_WAIT_SECONDS)
            except (asyncio.TimeoutError, ValueError):
                pass
            left = self._queue.qsize()
            if left:
                self.store_dropped += left
                self.store_dropped_at_close += left
                log.warning("cache: %d queued stores dropped at shutdown (the writer did not reach them in %g s)",
                            left, self.CLOSE_WAIT_SECONDS)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._tasks.clear()
        if self.mirror is not None:
            await self.mirror.close()
        await self.semantic.close()
        self._index_executor.shutdown(wait=False, cancel_futures=True)

    async def drain(self) -> None:
        """Wait until every store made so far is in the local index (and written to Redis when it is up)."""
        if self._queue is not None:
            await self._queue.join()

    # ------------------------------------------------------------------ lookup

    def _state(self, req, controls: Controls | None = None) -> LookupState:
        st = req.cache_state
        if st is None:
            if controls is None:
                controls = parse_controls(req.headers, self.config.max_ttl_seconds)
            elif controls.ttl is not None and controls.ttl > self.config.max_ttl_seconds:
                raise ttl_error(str(controls.ttl), self.config.max_ttl_seconds)
            tenant = controls.tenant
            if self.config.scope_by_key and req.key is not None:
                tenant = f"{re.sub(r'[^A-Za-z0-9._-]', '_', req.key.name)}/{tenant}"
            v = None
            if not controls.no_store:
                v = view(req.body, tenant, max_temperature=self.config.max_temperature,
                         cache_tool_calls=self.config.cache_tool_calls,
                         cache_multiple_choices=self.config.cache_multiple_choices)
            st = req.cache_state = LookupState(controls, tenant, v)
        return st

    async def lookup(self, req, controls: Controls | None = None) -> CacheResult:
        """The cached answer for a request. ``controls``: parsed by admission (else parsed here, same 400s)."""
        if not self.config.enabled:
            return _BYPASS
        st = self._state(req, controls)
        ctl, v = st.controls, st.view
        if ctl.no_store or ctl.no_cache or v is None or not v.cacheable:
            self.bypasses += 1
            return _BYPASS
        now = time.time()
        e = self.entries.live(v.exact, now)
        if e is not None:
            self.hits += 1
            return CacheResult("hit", _response(e), None)
        if self.semantic.on and v.scope is not None and v.scope in self.entries.scope_entries \
                and len(v.query) <= self.config.max_semantic_chars:
            best, sim = await self.semantic.find(st, v, now)
            if best is not None and best.expires > time.time() and self.entries.touch(best):
                self.semantic_hits += 1
                # Remember this wording: next time it is an exact hit (local only, no vector).
                alias = Entry(v.exact, best.tenant, None, None, best.response, best.created, best.expires, 0)
                self.entries.insert(alias, None)
                return CacheResult("semantic-hit", _response(best), round(sim, 4))
        self.misses += 1
        return _MISS

    # ------------------------------------------------------------------ store

    def store(self, req, response: dict) -> None:
        """Queue an answer for storing; returns at once (the writer task does the work)."""
        if not self.config.enabled:
            return
        try:
            st = self._state(req)
        except GatewayError:
            return
        v = st.view
        if st.controls.no_store or v is None or not v.cacheable or not self._storable(response):
            self.store_skipped += 1
            return
        try:
            # A copy of exactly its length: orjson's bytes keep the 4 KB buffer they were written
            # into (measured: 4,098 bytes held for a 84-byte answer), 400 MB at 100,000 entries.
            raw = bytes(memoryview(orjson.dumps(response)))
        except TypeError:
            self.store_skipped += 1
            return
        if self._queue is None:
            self._queue = asyncio.Queue(self.config.write_queue)
        try:
            self._queue.put_nowait(_Job(st, st.controls.ttl or self.config.ttl_seconds, raw))
        except asyncio.QueueFull:
            self.store_dropped += 1

    def _storable(self, response: dict) -> bool:
        if isinstance(response, dict) and response.get("object") == "list":  # embeddings: keyed by their exact input
            return bool(response.get("data")) and isinstance(response["data"], list)
        choices = response.get("choices") if isinstance(response, dict) else None
        if not choices or not isinstance(choices, list):
            return False
        if len(choices) > 1 and not self.config.cache_multiple_choices:
            return False
        for c in choices:
            msg = c.get("message") if isinstance(c, dict) else None
            if not isinstance(msg, dict):
                return False
            if c.get("finish_reason") == "content_filter":
                return False
            if (msg.get("tool_calls") or msg.get("function_call")) and not self.config.cache_tool_calls:
                return False
            if msg.get("content") is None and not msg.get("tool_calls") and not msg.get("function_call"):
                return False
        return True

    async def _writer(self) -> None:
        q = self._queue
        while True:
            job = await q.get()
            batch = [job]
            while len(batch) < 128 and not q.empty():
                batch.append(q.get_nowait())
            try:
                now, later = time.time(), []
                made = [self._entry(j, now, later) for j in batch]
                # The batch's vectors in one usearch add per scope, before the next await: a lookup
                # never sees an entry findable by its content key and not yet by its vector.
                self.entries.index_many(later)
                self._embed_later(later)
                if self.mirror is not None:
                    await self.mirror.send(made)
            except Exception:  # noqa: BLE001
                log.exception("cache: storing a batch failed")
            finally:
                for _ in batch:
                    q.task_done()

    def _entry(self, j: _Job, now: float, later: list) -> tuple[Entry, np.ndarray | None]:
        st, v = j.state, j.state.view
        text = (v.query if self.semantic.on and v.scope is not None
                and len(v.query) <= self.config.max_semantic_chars else None)
        e = Entry(v.exact, st.tenant, v.scope if text else None, text, j.raw, now, now + j.ttl, 0)
        hv = sv = None
        if text is not None:
            try:
                hv, sv = self.semantic.prepare(e, v.scope, st.analysis, st.ckey, st.hvec, st.svec)
            except Exception as exc:  # noqa: BLE001 - keep the answer for exact hits
                log.warning("cache: analysing a stored prompt failed: %s", exc)
                e.scope = e.text = e.analysis = e.ckey = None
                hv = sv = None
        self.entries.insert(e, hv, sv, later)
        self.stores += 1
        return e, hv

    def _embed_later(self, later: list) -> None:
        """The short prompts just indexed: to the verifier, to be embedded when it is idle."""
        embed = self._shared.embed_later if self._shared is not None else self.semantic.embed_later
        for flag, e, _vec in later:
            if flag == INDEX_STATIC and e.indexed & INDEX_STATIC:
                embed(e)

    def _live(self, e: Entry) -> bool:
        return self.entries.labels.get(e.label) is e

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_seconds)
            try:
                self.entries.sweep(time.time())
                await self.entries.index.compact(self._index_executor)
                await self.entries.sindex.compact(self._index_executor)
            except Exception:  # noqa: BLE001
                log.exception("cache: sweep failed")

    # ------------------------------------------------------------------ admin

    def stats(self) -> dict:
        lookups = self.hits + self.semantic_hits + self.misses
        cfg, ent, index, sem = self.config, self.entries, self.entries.index, self.semantic.stats()
        return {
            "entries": len(ent),
            "hits": self.hits,
            "semantic_hits": self.semantic_hits,
            "misses": self.misses,
            "bypasses": self.bypasses,
            "hit_rate": round((self.hits + self.semantic_hits) / lookups, 4) if lookups else None,
            "stores": self.stores,
            "store_skipped": self.store_skipped,
            "store_dropped": self.store_dropped,
            "store_dropped_at_close": self.store_dropped_at_close,
            "evictions": ent.evictions,
            "expirations": ent.expirations,
            "flushed": ent.flushed,
            "max_entries": cfg.max_entries,
            "ttl_seconds": cfg.ttl_seconds,
            "semantic": cfg.semantic,
            "embedder": cfg.embedder if cfg.semantic else None,
            "verifier": sem["verifier"] if not getattr(self.semantic.verifier, "shared", False)
            else {**sem["verifier"], **self.semantic.verifier.state()},
            "semantic_threshold": cfg.semantic_threshold,
            "candidate_threshold": cfg.candidate_threshold,
            "verifications": sem["verifications"],
            "verify_shed": sem["verify_shed"],
            "verify_pending": sem["verify_pending"],
            "verify_errors": sem["verify_errors"],
            "guard_rejects": sem["guard_rejects"],
            "index": {"scopes": len(ent.scope_entries), "content_keys": len(ent.by_ckey),
                      "vector_scopes": len(index.shards), "hnsw_scopes": index.hnsw_shards(),
                      "vectors": len(index), "rebuilds": index.rebuilds,
                      "static_vectors": len(ent.sindex), "static_hnsw_scopes": ent.sindex.hnsw_shards(),
                      "hnsw_searches": self.semantic.searches.searches,
                      "hnsw_search_calls": self.semantic.searches.calls},
            "redis": self.mirror.stats() if self.mirror is not None else {
                "configured": False, "up": False, "errors": 0, "last_error": None, "backlog": 0,
                "mirrored_in": 0, "mirrored_out": 0, "loaded": 0},
        }

    async def flush(self, namespace: str | None) -> int:
        """Drop a namespace (``x-gateway-cache-namespace``; None: every entry), here, in Redis and in every worker."""
        if namespace is not None and not valid_namespace(namespace):
            raise ValueError(f"invalid cache namespace {namespace!r}")
        local = self.entries.flush(namespace)
        remote = await self.mirror.flush(namespace) if self.mirror is not None else 0
        return max(local, remote)


def _response(e: Entry) -> dict:
    resp = orjson.loads(e.response)
    resp["id"] = "chatcmpl-" + uuid.uuid4().hex[:24]
    resp["created"] = int(time.time())
    return resp
