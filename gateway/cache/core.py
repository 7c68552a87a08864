"""The response cache: exact tier, semantic tier, Redis mirror.

Lookup (on the event loop, no I/O, no locks)::

    controls (Cache-Control, x-gateway-cache-*)  -> bypass?
    exact key (blake2b of the normalised request) -> dict          -> hit
    semantic scope; analysis of the last user message (text.analyse)
      -> candidates: its content key -> dict (every prompt the guard
         could pass under 20 content words); long prompts also: hashed
         vector -> top-k of the scope's vector index (>= candidate_threshold)
      -> lexical guard (numbers, negation, languages, identifiers,
         direction, swapped slot, narrower)
      -> verifier cosine >= semantic_threshold (+ margin for a
         narrower question)                                         (executor) -> semantic-hit
    otherwise                                                        -> miss

Store returns at once: the entry is built by a background writer task, put in
the local index, and written to Redis (one pipelined MULTI per batch: HSET,
EXPIRE, XADD to the event stream). Every worker tails the stream (XREAD
BLOCK) and loads the entries others wrote; a worker that starts loads the live
entries with SCAN. Redis Streams rather than pub/sub: a worker that loses its
connection resumes from the last event id it saw instead of silently missing
what was published meanwhile (and does a full resync after an outage).

When Redis is unreachable, lookups and stores go on locally; writes queue in a
bounded backlog that is replayed when Redis answers again; errors are logged
(once per outage) and counted.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import re
import time
import uuid
from collections import Counter, OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

import numpy as np
import orjson

from gateway.cache.embed import HASH_DIM, HashEmbedder, MiniLMVerifier, Verifier, make_verifier, similarity
from gateway.cache.index import VectorIndex
from gateway.cache.keys import RequestView, view
from gateway.cache.text import analyse, content_key, guard, is_long
from gateway.errors import GatewayError

log = logging.getLogger("gateway.cache")

EMBEDDERS = ("minilm", "hash", "openai")
# Entries kept findable under one content key (the newest): prompts that share a key are phrasings of
# one request, and a key that many prompts share ("hi", "hi!", "hello there": no content words) must
# not make a lookup check them all.
KEY_CANDIDATES = 8
_NAMESPACE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEFAULT_TENANT = "default"


@dataclass
class CacheConfig:
    """Every knob of the cache, with production defaults (``[cache]`` in the TOML file)."""

    enabled: bool = True
    ttl_seconds: int = 3600  # CACHE_TTL_SECONDS
    max_ttl_seconds: int = 7 * 86_400  # the most an x-gateway-cache-ttl header may ask for
    semantic: bool = True  # the semantic tier (False: exact matches only)
    semantic_threshold: float = 0.85  # SEMANTIC_THRESHOLD: the verifier's cosine for a semantic hit
    embedder: str = "minilm"  # the verifier: minilm (local, default) | hash (none) | openai (provider)
    embedder_url: str | None = None  # openai: base URL of an OpenAI-compatible API (…/v1)
    embedder_model: str = "text-embedding-3-small"
    embedder_key: str | None = None
    embedder_timeout_seconds: float = 5.0
    verify_window_tokens: int = 128  # minilm: tokens per window (longer prompts: head + tail windows)
    candidate_threshold: float = 0.4  # hashed-vector cosine for a candidate worth checking (paraphrases the guard lets through: >= 0.45)
    candidates: int = 4  # top-k taken from the vector index (long prompts; short ones: every entry of the content key)
    narrow_margin: float = 0.1  # extra similarity asked per content word that differs (counted up to 2)
    # Longer last messages: exact tier only. The guard analyses a query on the loop (~0.35 µs a
    # character: ~1.4 ms at 4,000); the spec's longest prompts are ~2,000 characters.
    max_semantic_chars: int = 4_000
    max_pending_verifications: int = 8  # more waiting than this: answer miss rather than queue
    max_entries: int = 100_000  # per worker; least recently used entries are evicted past it
    max_temperature: float = 1.0  # requests above it are not cached (absent = OpenAI's default, 1)
    cache_tool_calls: bool = False  # requests with tools / answers with tool calls
    cache_multiple_choices: bool = False  # n > 1
    scope_by_key: bool = False  # True: each API key has its own cache
    redis_prefix: str = "gw:cache:"
    stream_maxlen: int = 100_000  # events kept in the Redis stream (approximate)
    write_queue: int = 10_000  # stores waiting for the writer; more are dropped (and counted)
    backlog: int = 10_000  # writes kept while Redis is down, replayed when it returns
    sweep_seconds: float = 1.0  # expiry sweep and index compaction period
    redis_retry_seconds: float = 0.5
    redis_timeout_seconds: float = 2.0

    @classmethod
    def from_mapping(cls, d: dict | None) -> "CacheConfig":
        cfg = cls()
        known = {f.name: f for f in fields(cls)}
        for name, value in (d or {}).items():
            f = known.get(name)
            if f is None:
                raise ValueError(f"cache.{name}: unknown setting (known: {', '.join(sorted(known))})")
            setattr(cfg, name, _coerce(name, f.type, value))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"cache.{name}: {why}, got {getattr(self, name)!r}")

        for name in ("ttl_seconds", "max_ttl_seconds", "max_entries", "candidates", "verify_window_tokens",
                     "max_semantic_chars", "write_queue", "stream_maxlen"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        for name in ("backlog", "max_pending_verifications"):
            if getattr(self, name) < 0:
                raise bad(name, "must not be negative")
        if self.ttl_seconds > self.max_ttl_seconds:
            raise bad("ttl_seconds", f"must not exceed max_ttl_seconds ({self.max_ttl_seconds})")
        if not 0 < self.semantic_threshold <= 1:
            raise bad("semantic_threshold", "must be in (0, 1]")
        if not 0 <= self.candidate_threshold <= 1:
            raise bad("candidate_threshold", "must be in [0, 1]")
        if not 0 <= self.narrow_margin <= 0.5:
            raise bad("narrow_margin", "must be in [0, 0.5]")
        if not 0 <= self.max_temperature <= 2:
            raise bad("max_temperature", "must be in [0, 2]")
        if not 8 <= self.verify_window_tokens <= 512:
            raise bad("verify_window_tokens", "must be in [8, 512]")
        for name in ("sweep_seconds", "redis_retry_seconds", "redis_timeout_seconds", "embedder_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be positive")
        if self.embedder not in EMBEDDERS:
            raise bad("embedder", f"must be one of {', '.join(EMBEDDERS)}")
        if self.embedder == "openai" and not self.embedder_url:
            raise bad("embedder_url", "is required with embedder = 'openai'")
        if self.embedder == "minilm" and self.semantic and self.enabled:
            why = MiniLMVerifier.available()
            if why:
                raise ValueError(f"cache.embedder: 'minilm' cannot load: {why}; or set embedder = 'hash'")
        if not self.redis_prefix:
            raise bad("redis_prefix", "must not be empty")


def _coerce(name: str, kind, value):
    kind = str(kind)
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(f"cache.{name}: must be true or false, got {value!r}")
    if kind.startswith("int"):
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"cache.{name}: must be an integer, got {value!r}") from None
    if kind.startswith("float"):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"cache.{name}: must be a number, got {value!r}") from None
    if value is not None and not isinstance(value, str):
        raise ValueError(f"cache.{name}: must be a string, got {value!r}")
    return value


@dataclass(slots=True)
class CacheResult:
    status: str  # "hit" | "semantic-hit" | "miss" | "bypass"
    response: dict | None = None  # an OpenAI chat.completion
    similarity: float | None = None


_BYPASS = CacheResult("bypass")
_MISS = CacheResult("miss")


class Entry:
    __slots__ = ("key", "rkey", "tenant", "scope", "text", "response", "created", "expires", "label", "analysis",
                 "ckey", "indexed", "windows")

    def __init__(self, key: str, tenant: str, scope: str | None, text: str | None, response: bytes,
                 created: float, expires: float, label: int) -> None:
        self.key = key
        self.rkey = ""
        self.tenant = tenant
        self.scope = scope
        self.text = text
        self.response = response
        self.created = created
        self.expires = expires
        self.label = label
        self.analysis: tuple | None = None  # text.Analysis as a plain tuple
        self.ckey: int | None = None  # text.content_key: where the semantic tier finds it (scope set only)
        self.indexed = False  # also in the vector index (a long prompt)
        self.windows: np.ndarray | None = None


@dataclass(slots=True)
class _Controls:
    no_cache: bool
    no_store: bool
    ttl: int | None
    tenant: str


@dataclass(slots=True)
class _State:
    """What lookup learnt about a request, kept in ``req.meta['cache']`` for store."""

    controls: _Controls
    tenant: str  # the namespace entries are stored under ("<key name>/<namespace>" with scope_by_key)
    view: RequestView | None
    hvec: np.ndarray | None = None
    analysis: tuple | None = None
    ckey: int | None = None


@dataclass
class _Job:
    view: RequestView
    tenant: str
    ttl: int
    raw: bytes
    hvec: np.ndarray | None
    analysis: tuple | None
    ckey: int | None


@dataclass
class _Stats:
    hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    bypasses: int = 0
    stores: int = 0
    store_skipped: int = 0
    store_dropped: int = 0
    evictions: int = 0
    expirations: int = 0
    flushed: int = 0
    verifications: int = 0
    verify_shed: int = 0
    verify_errors: int = 0
    mirrored_in: int = 0
    mirrored_out: int = 0
    loaded: int = 0
    redis_errors: int = 0
    guard: Counter = field(default_factory=Counter)


class Cache:
    def __init__(self, config: CacheConfig, redis_url: str | None) -> None:
        self.config = config
        self.redis_url = redis_url
        self._origin = uuid.uuid4().hex[:12]
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._labels: dict[int, Entry] = {}
        self._next_label = 1
        self._expiry: list[tuple[float, int, str]] = []
        self._index = VectorIndex(HASH_DIM)
        self._by_ckey: dict[int, tuple[int, ...]] = {}  # content key -> labels (a tuple of ints: not GC-tracked)
        self._scope_entries: dict[str, int] = {}  # scope -> entries the semantic tier can find
        self._hasher = HashEmbedder(HASH_DIM)
        self._verifier: Verifier | None = None
        if config.semantic:
            self._verifier = make_verifier(config.embedder, window=config.verify_window_tokens,
                                           url=config.embedder_url, model=config.embedder_model,
                                           key=config.embedder_key, timeout=config.embedder_timeout_seconds)
        self._semantic_on = config.semantic and (self._verifier is not None or config.embedder == "hash")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gw-cache-verify")
        self._build_executor = ThreadPoolExecutor(1, thread_name_prefix="gw-cache-index")
        self._pending_flushes: list[str | None] = []
        self._unanalysed: deque[Entry] = deque()  # entries from Redis whose guard analysis is still to do
        self._backfill_wake: asyncio.Event | None = None
        self._pending_verifications = 0
        self._verifier_error: str | None = None
        self._stats = _Stats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._backlog: deque[Entry] = deque(maxlen=max(config.backlog, 1))
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._started = False
        # Redis
        p = config.redis_prefix
        self._k_entry = p + "e:"
        self._k_stream = p + "events"
        self._redis = None
        self._redis_block = None
        self._up = False
        self._ever_up = False
        self._last_id = "0-0"
        self._last_error: str | None = None
        self._need_resync = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._queue = asyncio.Queue(self.config.write_queue)
        self._backfill_wake = asyncio.Event()
        if self._verifier is not None and not self._verifier.is_async:
            # Load the model now, on the executor: the first lookup need not wait for it.
            self._tasks.append(asyncio.create_task(self._warm(), name="cache-verifier-warm"))
        if self.redis_url:
            import redis.asyncio as aioredis

            t = self.config.redis_timeout_seconds
            self._redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=t, socket_connect_timeout=t,
                                                  decode_responses=False, retry_on_timeout=False)
            self._redis_block = aioredis.Redis.from_url(self.redis_url, socket_timeout=t + 2,
                                                        socket_connect_timeout=t, decode_responses=False,
                                                        retry_on_timeout=False)
            try:
                await self._connect()
            except Exception as exc:  # noqa: BLE001 - any failure: degrade, retry in the background
                self._down(exc)
            self._tasks.append(asyncio.create_task(self._mirror_loop(), name="cache-mirror"))
        self._tasks.append(asyncio.create_task(self._writer(), name="cache-writer"))
        self._tasks.append(asyncio.create_task(self._sweeper(), name="cache-sweeper"))
        self._tasks.append(asyncio.create_task(self._backfill(), name="cache-backfill"))

    async def _warm(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._verifier.warm)
            self._verifier_error = None
        except Exception as exc:  # noqa: BLE001 - degrade to misses, say why
            self._verifier_error = f"{type(exc).__name__}: {exc}"
            log.error("cache: the %s verifier did not load (%s); semantic lookups answer miss until it does",
                      self._verifier.name, self._verifier_error)

    async def close(self) -> None:
        self._closing = True
        if self._queue is not None:
            # Let queued stores reach the index and Redis (bounded wait).
            try:
                await asyncio.wait_for(self._queue.join(), 2.0)
            except (asyncio.TimeoutError, ValueError):
                pass
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._tasks.clear()
        for r in (self._redis, self._redis_block):
            if r is not None:
                try:
                    await r.aclose()
                except Exception:  # noqa: BLE001
                    pass
        if self._verifier is not None:
            await self._verifier.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._build_executor.shutdown(wait=False, cancel_futures=True)

    async def drain(self) -> None:
        """Wait until every store made so far is in the local index (and written to Redis when it is up)."""
        if self._queue is not None:
            await self._queue.join()

    # ------------------------------------------------------------------ controls

    def parse_controls(self, headers: dict[str, str]) -> _Controls:
        no_cache = no_store = False
        cc = headers.get("cache-control")
        if cc:
            for d in cc.lower().split(","):
                d = d.strip()
                if d == "no-store":
                    no_store = True
                elif d == "no-cache" or d == "max-age=0":
                    no_cache = True
        ttl = None
        raw = headers.get("x-gateway-cache-ttl")
        if raw is not None:
            try:
                ttl = int(raw.strip())
            except ValueError:
                ttl = -1
            if not 1 <= ttl <= self.config.max_ttl_seconds:
                raise GatewayError(400, f"x-gateway-cache-ttl must be an integer number of seconds between 1 and "
                                        f"{self.config.max_ttl_seconds}, got {raw!r}.",
                                   "invalid_request_error", None, "invalid_cache_ttl")
        tenant = headers.get("x-gateway-cache-namespace")
        if tenant is None:
            tenant = DEFAULT_TENANT
        elif not _NAMESPACE.match(tenant):
            raise GatewayError(400, "x-gateway-cache-namespace must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' "
                                    f"or '-', got {tenant!r}.", "invalid_request_error", None,
                               "invalid_cache_namespace")
        return _Controls(no_cache, no_store, ttl, tenant)

    def _state(self, req) -> _State:
        st = req.cache_state
        if st is None:
            ctl = req.cache_controls or self.parse_controls(req.headers)
            tenant = ctl.tenant
            if self.config.scope_by_key and req.key is not None:
                tenant = f"{re.sub(r'[^A-Za-z0-9._-]', '_', req.key.name)}/{tenant}"
            v = None
            if not ctl.no_store:
                v = view(req.body, tenant, max_temperature=self.config.max_temperature,
                         cache_tool_calls=self.config.cache_tool_calls,
                         cache_multiple_choices=self.config.cache_multiple_choices)
            st = req.cache_state = _State(ctl, tenant, v)
        return st

    # ------------------------------------------------------------------ lookup

    async def lookup(self, req, controls=None) -> CacheResult:
        if not self.config.enabled:
            return _BYPASS
        st = self._state(req)
        ctl, v = st.controls, st.view
        if ctl.no_store or ctl.no_cache or v is None or not v.cacheable:
            self._stats.bypasses += 1
            return _BYPASS
        now = time.time()
        e = self._entries.get(v.exact)
        if e is not None:
            if e.expires > now:
                self._entries.move_to_end(v.exact)
                self._stats.hits += 1
                return CacheResult("hit", self._response(e), None)
            self._drop(e)
            self._stats.expirations += 1
        if self._semantic_on and v.scope is not None and v.scope in self._scope_entries \
                and len(v.query) <= self.config.max_semantic_chars:
            try:
                cands = self._candidates(st, v, now)
            except Exception as exc:  # noqa: BLE001 - a prompt the analysis chokes on is a miss, not an error
                self._stats.verify_errors += 1
                log.warning("cache: finding semantic candidates failed: %s", exc)
                cands = None
            if cands:
                best, sim = await self._semantic(st, v.query, cands)
                if best is not None and best.key in self._entries and best.expires > time.time():
                    self._entries.move_to_end(best.key)
                    self._stats.semantic_hits += 1
                    # Remember this wording: next time it is an exact hit (local only, no vector).
                    alias = Entry(v.exact, best.tenant, None, None, best.response, best.created, best.expires, 0)
                    alias.rkey = best.rkey
                    self._insert(alias, None)
                    return CacheResult("semantic-hit", self._response(best), round(sim, 4))
        self._stats.misses += 1
        return _MISS

    def _candidates(self, st: _State, v: RequestView, now: float) -> list[tuple[Entry, float | None]]:
        """The entries that may mean the same as the query: (entry, hashed cosine or None).

        Every prompt the guard could pass under its short-prompt rule has the query's content key:
        one dict lookup finds them all. Long prompts may differ in a few words: those are also
        looked for in the vector index (the hashed vectors' nearest, cosine >= candidate_threshold).
        """
        qa = st.analysis
        if qa is None:
            qa = st.analysis = analyse(v.query)
        cands: list[tuple[Entry, float | None]] = []
        st.ckey = content_key(v.scope, qa)
        labels = self._by_ckey.get(st.ckey)
        if labels:
            for label in labels:
                c = self._labels.get(label)
                if c is not None and c.expires > now:
                    cands.append((c, None))
        if is_long(qa) and v.scope in self._index.shards:
            st.hvec = hv = self._hasher.vector(v.query)
            floor = self.config.candidate_threshold
            for label, sim in self._index.search(v.scope, hv, self.config.candidates):
                c = self._labels.get(label)
                if c is not None and sim >= floor and c.expires > now and all(c is not x for x, _ in cands):
                    cands.append((c, sim))
        return cands

    def _response(self, e: Entry) -> dict:
        resp = orjson.loads(e.response)
        resp["id"] = "chatcmpl-" + uuid.uuid4().hex[:24]
        resp["created"] = int(time.time())
        return resp

    async def _semantic(self, st: _State, query: str, cands: list[tuple[Entry, float | None]]) -> tuple[Entry | None, float]:
        """Guard, then verifier: the best candidate that means the same as ``query``, or None."""
        try:
            # The guard runs here, on the loop: the query was analysed once (25-220 µs, kept for
            # this request's own store), the candidates when they were stored, so it is a few
            # comparisons. On a thread it would cost as much CPU, plus the hand-off, and hold the
            # GIL against the loop for up to the switch interval.
            passing, reasons = self._guard(st.analysis, cands)
            if reasons:
                self._stats.guard.update(reasons)
            if not passing:
                return None, 0.0
            if self._verifier is None:  # embedder = "hash": the hashed cosine decides
                best, best_sim = None, 0.0
                for e, hsim, added in passing:
                    if hsim is None:  # found by its content key
                        if st.hvec is None:
                            st.hvec = self._hasher.vector(query)
                        hsim = float(st.hvec @ self._hasher.vector(e.text))
                    if hsim >= self._needed(added) and hsim > best_sim:
                        best, best_sim = e, hsim
                return best, best_sim
        except Exception as exc:  # noqa: BLE001 - a broken guard must never fail a request
            self._stats.verify_errors += 1
            log.warning("cache: semantic guard failed: %s", exc)
            return None, 0.0
        if self._pending_verifications >= self.config.max_pending_verifications:
            self._stats.verify_shed += 1
            return None, 0.0
        self._pending_verifications += 1
        try:
            if self._verifier.is_async:
                return await self._verify_async(query, passing)
            loop = asyncio.get_running_loop()
            # The model releases the GIL while it runs: a thread is worth its hand-off here.
            best, sim = await loop.run_in_executor(self._executor, self._verify, query, passing)
            self._stats.verifications += 1
            return best, sim
        except Exception as exc:  # noqa: BLE001 - a broken verifier must never fail a request
            self._stats.verify_errors += 1
            self._verifier_error = f"{type(exc).__name__}: {exc}"
            log.warning("cache: semantic verification failed: %s", exc)
            return None, 0.0
        finally:
            self._pending_verifications -= 1

    def _guard(self, qa: tuple, cands: list[tuple[Entry, float | None]]):
        passing = []
        reasons: Counter | None = None
        for e, hsim in cands:
            ea = e.analysis
            if ea is None:  # loaded from Redis and not yet reached by the backfill
                ea = e.analysis = analyse(e.text)
            why, added = guard(qa, ea)
            if why is None and self._needed(added) > 1.0:
                why = "differs"  # no similarity could reach the bar: spare the verifier
            if why is not None:
                if reasons is None:
                    reasons = Counter()
                reasons[why] += 1
            else:
                passing.append((e, hsim, added))
        return passing, reasons

    def _needed(self, added: int) -> float:
        return self.config.semantic_threshold + self.config.narrow_margin * min(added, 2)

    def _verify(self, query: str, passing) -> tuple[Entry | None, float]:
        """On the executor: the verifier's similarity of the query and each candidate the guard passed."""
        best, best_sim = None, 0.0
        qw = self._verifier.windows(query)
        for e, _hsim, added in passing:
            w = e.windows
            if w is None:
                w = e.windows = self._verifier.windows(e.text)
            s = similarity(qw, w)
            if s >= self._needed(added) and s > best_sim:
                best, best_sim = e, s
        return best, best_sim

    async def _verify_async(self, query: str, passing) -> tuple[Entry | None, float]:
        todo = [e for e, _h, _a in passing if e.windows is None]
        vecs = await self._verifier.awindows([query] + [e.text for e in todo])
        for e, w in zip(todo, vecs[1:]):
            e.windows = w
        qw = vecs[0]
        self._stats.verifications += 1
        best, best_sim = None, 0.0
        for e, _h, added in passing:
            s = similarity(qw, e.windows)
            if s >= self._needed(added) and s > best_sim:
                best, best_sim = e, s
        return best, best_sim

    # ------------------------------------------------------------------ store

    def store(self, req, response: dict) -> None:
        if not self.config.enabled:
            return
        try:
            st = self._state(req)
        except GatewayError:
            return
        v = st.view
        if st.controls.no_store or v is None or not v.cacheable or not self._storable(response):
            self._stats.store_skipped += 1
            return
        try:
            # A copy of exactly its length: orjson's bytes keep the 4 KB buffer they were written
            # into (measured: 4,098 bytes held for a 84-byte answer), 400 MB at 100,000 entries.
            raw = bytes(memoryview(orjson.dumps(response)))
        except TypeError:
            self._stats.store_skipped += 1
            return
        job = _Job(v, st.tenant, st.controls.ttl or self.config.ttl_seconds, raw, st.hvec, st.analysis, st.ckey)
        if self._queue is None:
            self._queue = asyncio.Queue(self.config.write_queue)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._stats.store_dropped += 1

    def _storable(self, response: dict) -> bool:
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
                made = []
                now = time.time()
                for j in batch:
                    v = j.view
                    text = (v.query if self._semantic_on and v.scope is not None
                            and len(v.query) <= self.config.max_semantic_chars else None)
                    e = Entry(v.exact, j.tenant, v.scope if text else None, text, j.raw, now, now + j.ttl, 0)
                    hv = None
                    if text is not None:
                        try:
                            # Analysed now, once, so that no lookup has to analyse its candidates.
                            e.analysis = a = j.analysis or analyse(text)
                            e.ckey = j.ckey if j.ckey is not None else content_key(v.scope, a)
                            if is_long(a):
                                hv = j.hvec if j.hvec is not None else self._hasher.vector(text)
                        except Exception as exc:  # noqa: BLE001 - keep the answer for exact hits
                            log.warning("cache: analysing a stored prompt failed: %s", exc)
                            e.scope = e.text = e.analysis = e.ckey = None
                            hv = None
                    self._insert(e, hv)
                    made.append((e, hv))
                    self._stats.stores += 1
                if self._redis is not None:
                    if self._up:
                        await self._write_redis(made)
                    else:
                        self._backlog.extend(e for e, _ in made)
            except Exception:  # noqa: BLE001
                log.exception("cache: storing a batch failed")
            finally:
                for _ in batch:
                    q.task_done()

    # ------------------------------------------------------------------ local entries

    def _insert(self, e: Entry, hv: np.ndarray | None) -> None:
        old = self._entries.get(e.key)
        if old is not None:
            self._drop(old)
        e.label = self._next_label
        self._next_label += 1
        e.rkey = f"{self._k_entry}{e.tenant}:{e.key}"
        self._entries[e.key] = e
        self._labels[e.label] = e
        if e.scope is not None and e.ckey is not None:
            labels = self._by_ckey.get(e.ckey)
            self._by_ckey[e.ckey] = (e.label,) if labels is None else labels[1 - KEY_CANDIDATES:] + (e.label,)
            self._scope_entries[e.scope] = self._scope_entries.get(e.scope, 0) + 1
            if hv is not None:
                self._index.add(e.scope, e.label, hv)
                e.indexed = True
        heapq.heappush(self._expiry, (e.expires, e.label, e.key))
        while len(self._entries) > self.config.max_entries:
            _, victim = self._entries.popitem(last=False)
            self._entries[victim.key] = victim  # _drop pops it
            self._drop(victim)
            self._stats.evictions += 1
        if len(self._expiry) > 2 * len(self._entries) + 1024:
            self._expiry = [(x.expires, x.label, x.key) for x in self._entries.values()]
            heapq.heapify(self._expiry)

    def _drop(self, e: Entry) -> None:
        if self._entries.get(e.key) is e:
            del self._entries[e.key]
        if self._labels.pop(e.label, None) is None or e.scope is None or e.ckey is None:
            return
        labels = self._by_ckey.get(e.ckey)
        if labels is not None:
            rest = tuple(x for x in labels if x != e.label)
            if rest:
                self._by_ckey[e.ckey] = rest
            else:
                del self._by_ckey[e.ckey]
        n = self._scope_entries.get(e.scope, 0) - 1
        if n > 0:
            self._scope_entries[e.scope] = n
        else:
            self._scope_entries.pop(e.scope, None)
        if e.indexed:
            self._index.remove(e.scope, e.label)

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_seconds)
            try:
                self._sweep(time.time())
                await self._index.compact(self._build_executor)
            except Exception:  # noqa: BLE001
                log.exception("cache: sweep failed")

    async def _backfill(self) -> None:
        """Analyse the entries that came from Redis, in slices of ~2 ms at most every other 2 ms.

        A warm start loads up to max_entries at once: analysing them there would
        delay start-up by seconds, leaving it to lookups would make their first
        misses slow.
        """
        todo = self._unanalysed
        while True:
            if not todo:
                self._backfill_wake.clear()
                await self._backfill_wake.wait()
            end = time.perf_counter() + 0.002
            try:
                while todo and time.perf_counter() < end:
                    e = todo.popleft()
                    if e.analysis is None and self._labels.get(e.label) is e:
                        e.analysis = analyse(e.text)
            except Exception:  # noqa: BLE001
                log.exception("cache: analysing a loaded entry failed")
            await asyncio.sleep(0.002)

    def _sweep(self, now: float) -> int:
        n = 0
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, label, key = heapq.heappop(heap)
            e = self._labels.get(label)
            if e is not None and e.expires <= now:
                self._drop(e)
                n += 1
        self._stats.expirations += n
        return n

    # ------------------------------------------------------------------ admin

    def stats(self) -> dict:
        s = self._stats
        lookups = s.hits + s.semantic_hits + s.misses
        return {
            "entries": len(self._entries),
            "hits": s.hits,
            "semantic_hits": s.semantic_hits,
            "misses": s.misses,
            "bypasses": s.bypasses,
            "hit_rate": round((s.hits + s.semantic_hits) / lookups, 4) if lookups else None,
            "stores": s.stores,
            "store_skipped": s.store_skipped,
            "store_dropped": s.store_dropped,
            "evictions": s.evictions,
            "expirations": s.expirations,
            "flushed": s.flushed,
            "max_entries": self.config.max_entries,
            "ttl_seconds": self.config.ttl_seconds,
            "semantic": self.config.semantic,
            "embedder": self.config.embedder if self.config.semantic else None,
            "verifier": None if self._verifier is None else {
                "name": self._verifier.name, "ready": self._verifier.ready,
                "graph": getattr(self._verifier, "graph", None), "error": self._verifier_error},
            "semantic_threshold": self.config.semantic_threshold,
            "candidate_threshold": self.config.candidate_threshold,
            "verifications": s.verifications,
            "verify_shed": s.verify_shed,
            "verify_errors": s.verify_errors,
            "guard_rejects": dict(s.guard),
            "index": {"scopes": len(self._scope_entries), "content_keys": len(self._by_ckey),
                      "vector_scopes": len(self._index.shards), "hnsw_scopes": self._index.hnsw_shards(),
                      "vectors": len(self._index), "rebuilds": self._index.rebuilds},
            "redis": {
                "configured": self.redis_url is not None,
                "up": self._up,
                "errors": s.redis_errors,
                "last_error": self._last_error,
                "backlog": len(self._backlog),
                "mirrored_in": s.mirrored_in,
                "mirrored_out": s.mirrored_out,
                "loaded": s.loaded,
            },
        }

    async def flush(self, namespace: str | None) -> int:
        """Drop a namespace (``x-gateway-cache-namespace``; None: every entry), here, in Redis and in every worker."""
        if namespace is not None and not all(_NAMESPACE.match(p) for p in namespace.split("/", 1)):
            raise ValueError(f"invalid cache namespace {namespace!r}")
        local = self._flush_local(namespace)
        self._backlog = deque((e for e in self._backlog if not _in_namespace(e.tenant, namespace)),
                              maxlen=self._backlog.maxlen)
        remote = 0
        if self._redis is not None and not self._up:
            self._pending_flushes.append(namespace)  # done in Redis (and told) when it is back
        elif self._redis is not None:
            try:
                remote = await self._flush_redis(namespace)
            except Exception as exc:  # noqa: BLE001
                self._pending_flushes.append(namespace)
                self._down(exc)
        return max(local, remote)

    async def _flush_redis(self, namespace: str | None) -> int:
        if namespace is None:
            patterns = [f"{self._k_entry}*"]
        else:
            patterns = [f"{self._k_entry}{namespace}:*"]
            if "/" not in namespace:
                patterns.append(f"{self._k_entry}*/{namespace}:*")
        remote = 0
        for pattern in patterns:
            batch = []
            async for k in self._redis.scan_iter(match=pattern.encode(), count=1000):
                batch.append(k)
                if len(batch) >= 1000:
                    remote += await self._redis.unlink(*batch)
                    batch = []
            if batch:
                remote += await self._redis.unlink(*batch)
        await self._redis.xadd(self._k_stream, {"o": self._origin, "op": "flush",
                                                "t": namespace if namespace is not None else "*"},
                               maxlen=self.config.stream_maxlen, approximate=True)
        return remote

    def _flush_local(self, namespace: str | None) -> int:
        victims = [e for e in self._entries.values() if _in_namespace(e.tenant, namespace)]
        for e in victims:
            self._drop(e)
        self._stats.flushed += len(victims)
        return len(victims)

    # ------------------------------------------------------------------ Redis mirror

    def _down(self, exc: BaseException) -> None:
        self._stats.redis_errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._up or not self._ever_up and self._stats.redis_errors == 1:
            log.error("cache: Redis unreachable (%s); serving from the local cache, retrying", self._last_error)
        self._up = False
        self._need_resync = True

    async def _connect(self) -> None:
        """Ping, note the stream position, load every live entry, then mark Redis up."""
        await self._redis.ping()
        # A Redis that lost its data (restarted without persistence) has no event stream:
        # then this worker writes back every live entry it holds, not only its backlog.
        wiped = self._ever_up and not await self._redis.exists(self._k_stream)
        if not self._ever_up or wiped:
            # First contact: start from now (_load_all brings the state). On a reconnection
            # keep our position instead, so the mirror replays what was published while we
            # were away; a flush, above all, is an event that loading entries cannot replay.
            last = await self._redis.xrevrange(self._k_stream, count=1)
            if last:
                self._last_id = last[0][0].decode()
        while self._pending_flushes:  # flushes asked for while Redis was away
            await self._flush_redis(self._pending_flushes[0])
            self._pending_flushes.pop(0)
        await self._load_all()
        if wiped or self._backlog:
            now = time.time()
            source = list(self._entries.values()) if wiped else list(self._backlog)
            pending = [e for e in source if self._entries.get(e.key) is e and e.expires > now]
            self._backlog.clear()
            for i in range(0, len(pending), 256):
                try:
                    await self._write_redis([(e, None) for e in pending[i:i + 256]], raise_errors=True)
                except Exception:
                    self._backlog.extend(pending[i + 256:])  # the failed chunk is back already
                    raise
                await asyncio.sleep(0)
        if not self._up and self._ever_up:
            log.warning("cache: Redis is back; mirror resumed")
        self._up = self._ever_up = True
        self._need_resync = False

    async def _mirror_loop(self) -> None:
        while not self._closing:
            try:
                if not self._up:
                    await asyncio.sleep(self.config.redis_retry_seconds)
                    await self._connect()
                    continue
                resp = await self._redis_block.xread({self._k_stream: self._last_id}, count=512, block=1000)
                if resp:
                    await self._apply_events(resp[0][1])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._down(exc)

    async def _apply_events(self, msgs) -> None:
        keys = []
        for mid, f in msgs:
            self._last_id = mid.decode() if isinstance(mid, bytes) else mid
            if f.get(b"o", b"").decode() == self._origin:
                continue
            op = f.get(b"op")
            if op == b"set":
                keys.append(f[b"k"])
            elif op == b"flush":
                t = f.get(b"t", b"*").decode()
                self._flush_local(None if t == "*" else t)
        if keys:
            n = await self._fetch(keys)
            self._stats.mirrored_in += n

    async def _fetch(self, keys: list[bytes]) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        rows = await pipe.execute()
        n = 0
        now = time.time()
        for k, row in zip(keys, rows):
            if row and self._decode(row, now):
                n += 1
        return n

    def _decode(self, row: dict, now: float) -> bool:
        try:
            m = orjson.loads(row[b"m"])
            if m["e"] <= now:
                return False
            old = self._entries.get(m["k"])
            if old is not None and old.created >= m["c"]:
                return False
            e = Entry(m["k"], m["t"], m.get("s"), m.get("x"), row[b"r"], m["c"], m["e"], 0)
            hv = None
            raw = row.get(b"h")
            if e.scope is not None and e.text:
                e.ckey = m.get("ck")
                indexed = bool(raw)  # the writer sends a vector for long prompts only
                if e.ckey is None:  # written by a version without content keys
                    e.analysis = analyse(e.text)
                    e.ckey = content_key(e.scope, e.analysis)
                    indexed = is_long(e.analysis)
                if indexed:
                    if raw:
                        hv = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
                    if hv is None or hv.shape[0] != HASH_DIM:
                        hv = self._hasher.vector(e.text)
            self._insert(e, hv)
            if e.text is not None and e.analysis is None and self._semantic_on:
                self._unanalysed.append(e)
                if self._backfill_wake is not None:
                    self._backfill_wake.set()
            return True
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
            return False

    async def _load_all(self) -> None:
        batch: list[bytes] = []
        n = 0
        async for k in self._redis.scan_iter(match=(self._k_entry + "*").encode(), count=1000):
            batch.append(k)
            if len(batch) >= 500:
                n += await self._fetch(batch)
                batch = []
                await asyncio.sleep(0)
        if batch:
            n += await self._fetch(batch)
        self._stats.loaded += n

    async def _write_redis(self, made: list[tuple[Entry, np.ndarray | None]], raise_errors: bool = False) -> None:
        now = time.time()
        pipe = self._redis.pipeline(transaction=True)
        count = 0
        for e, hv in made:
            ttl = int(e.expires - now + 0.999)
            if ttl <= 0:
                continue
            if hv is None and e.indexed:
                hv = self._hasher.vector(e.text)
            meta = {"k": e.key, "t": e.tenant, "s": e.scope, "x": e.text, "c": e.created, "e": e.expires}
            if e.ckey is not None:
                meta["ck"] = e.ckey
            mapping = {"m": orjson.dumps(meta), "r": e.response}
            if hv is not None:
                mapping["h"] = hv.astype(np.float16).tobytes()
            pipe.hset(e.rkey, mapping=mapping)
            pipe.expire(e.rkey, ttl)
            pipe.xadd(self._k_stream, {"o": self._origin, "op": "set", "k": e.rkey},
                      maxlen=self.config.stream_maxlen, approximate=True)
            count += 1
        if not count:
            return
        try:
            await pipe.execute()
            self._stats.mirrored_out += count
        except Exception as exc:  # noqa: BLE001
            self._down(exc)
            self._backlog.extend(e for e, _ in made)
            if raise_errors:
                raise


def _in_namespace(tenant: str, namespace: str | None) -> bool:
    return namespace is None or tenant == namespace or tenant.endswith("/" + namespace)


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
