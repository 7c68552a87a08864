"""The Redis mirror: every worker's entries in Redis, and every worker loading what the others wrote.

Writes are one pipelined MULTI per batch (HSET, EXPIRE, XADD to the event
stream). Every worker tails the stream (XREAD BLOCK) and loads the entries
others wrote; a worker that starts loads the live entries with SCAN. Redis
Streams rather than pub/sub: a worker that loses its connection resumes from
the last event id it saw instead of silently missing what was published
meanwhile (and does a full resync after an outage).

When Redis is unreachable the cache goes on locally; writes queue in a bounded
backlog that is replayed when Redis answers again, flushes are replayed too;
errors are logged (once per outage) and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import orjson

from gateway.cache.controls import in_namespace
from gateway.cache.embed import HASH_DIM
from gateway.cache.entries import INDEX_HASHED, Entries, Entry
from gateway.cache.text import content_key, is_long, key_analysis

if TYPE_CHECKING:
    from gateway.cache.config import CacheConfig
    from gateway.cache.semantic import Semantic

log = logging.getLogger("gateway.cache")


class Mirror:
    def __init__(self, config: CacheConfig, url: str, entries: Entries, semantic: Semantic) -> None:
        self.config = config
        self.url = url
        self.entries = entries
        self.semantic = semantic
        self.origin = uuid.uuid4().hex[:12]  # this worker's events are skipped when it reads them back
        self.k_entry = config.redis_prefix + "e:"
        self.k_stream = config.redis_prefix + "events"
        self.backlog: deque[Entry] = deque(maxlen=max(config.backlog, 1))
        self.up = False
        # Set by close before it cancels the loop: redis-py may turn a cancellation inside XREAD into a
        # connection error, which the loop would take for an outage and go on.
        self.closing = False
        self._pending_flushes: list[str | None] = []
        self._redis = None
        self._redis_block = None  # its own connection: XREAD BLOCK holds one
        self._ever_up = False
        self._last_id = "0-0"
        self.last_error: str | None = None
        self.errors = 0
        self.mirrored_in = 0
        self.mirrored_out = 0
        self.loaded = 0

    @property
    def client(self):
        return getattr(self, "_redis", None)

    async def start(self) -> asyncio.Task:
        """Connect and load (a failure only degrades); the task that tails the stream and reconnects."""
        import redis.asyncio as aioredis

        t = self.config.redis_timeout_seconds
        self._redis = aioredis.Redis.from_url(self.url, socket_timeout=t, socket_connect_timeout=t,
                                              decode_responses=False, retry_on_timeout=False)
        self._redis_block = aioredis.Redis.from_url(self.url, socket_timeout=t + 2, socket_connect_timeout=t,
                                                    decode_responses=False, retry_on_timeout=False)
        try:
            await self._connect()
        except Exception as exc:  # noqa: BLE001 - any failure: degrade, retry in the background
            self._down(exc)
        return asyncio.create_task(self._loop(), name="cache-mirror")

    async def close(self) -> None:
        for r in (self._redis, self._redis_block):
            if r is not None:
                try:
                    await r.aclose()
                except Exception:  # noqa: BLE001
                    pass

    def stats(self) -> dict:
        return {"configured": True, "up": self.up, "errors": self.errors, "last_error": self.last_error,
                "backlog": len(self.backlog), "mirrored_in": self.mirrored_in, "mirrored_out": self.mirrored_out,
                "loaded": self.loaded}

    async def send(self, made: list[tuple[Entry, np.ndarray | None]]) -> None:
        """Write new entries (with their hashed vector, if any), or keep them for when Redis is back."""
        if self.up:
            await self._write(made)
        else:
            self.backlog.extend(e for e, _ in made)

    async def flush(self, namespace: str | None) -> int:
        """Drop a namespace in Redis and tell every worker; replayed later when Redis is away."""
        self.backlog = deque((e for e in self.backlog if not in_namespace(e.tenant, namespace)),
                             maxlen=self.backlog.maxlen)
        if not self.up:
            self._pending_flushes.append(namespace)  # done in Redis (and told) when it is back
            return 0
        try:
            return await self._flush(namespace)
        except Exception as exc:  # noqa: BLE001
            self._pending_flushes.append(namespace)
            self._down(exc)
            return 0

    async def _flush(self, namespace: str | None) -> int:
        if namespace is None:
            patterns = [f"{self.k_entry}*"]
        else:
            patterns = [f"{self.k_entry}{namespace}:*"]
            if "/" not in namespace:
                patterns.append(f"{self.k_entry}*/{namespace}:*")
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
        await self._redis.xadd(self.k_stream, {"o": self.origin, "op": "flush",
                                               "t": namespace if namespace is not None else "*"},
                               maxlen=self.config.stream_maxlen, approximate=True)
        return remote

    def _down(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.up or not self._ever_up and self.errors == 1:
            log.error("cache: Redis unreachable (%s); serving from the local cache, retrying", self.last_error)
        self.up = False

    async def _connect(self) -> None:
        """Ping, note the stream position, load every live entry, then mark Redis up."""
        await self._redis.ping()
        # A Redis that lost its data (restarted without persistence) has no event stream:
        # then this worker writes back every live entry it holds, not only its backlog.
        wiped = self._ever_up and not await self._redis.exists(self.k_stream)
        if not self._ever_up or wiped:
            # First contact: start from now (_load_all brings the state). On a reconnection
            # keep our position instead, so the mirror replays what was published while we
            # were away; a flush, above all, is an event that loading entries cannot replay.
            last = await self._redis.xrevrange(self.k_stream, count=1)
            if last:
                self._last_id = last[0][0].decode()
        while self._pending_flushes:  # flushes asked for while Redis was away
            await self._flush(self._pending_flushes[0])
            self._pending_flushes.pop(0)
        await self._load_all()
        if wiped or self.backlog:
            now = time.time()
            by_key = self.entries.by_key
            source = list(by_key.values()) if wiped else list(self.backlog)
            pending = [e for e in source if by_key.get(e.key) is e and e.expires > now]
            self.backlog.clear()
            for i in range(0, len(pending), 256):
                try:
                    await self._write([(e, None) for e in pending[i:i + 256]], raise_errors=True)
                except Exception:
                    self.backlog.extend(pending[i + 256:])  # the failed chunk is back already
                    raise
                await asyncio.sleep(0)
        if not self.up and self._ever_up:
            log.warning("cache: Redis is back; mirror resumed")
        self.up = self._ever_up = True

    async def _loop(self) -> None:
        while not self.closing:
            try:
                if not self.up:
                    await asyncio.sleep(self.config.redis_retry_seconds)
                    await self._connect()
                    continue
                resp = await self._redis_block.xread({self.k_stream: self._last_id}, count=512, block=1000)
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
            if f.get(b"o", b"").decode() == self.origin:
                continue
            op = f.get(b"op")
            if op == b"set":
                keys.append(f[b"k"])
            elif op == b"flush":
                t = f.get(b"t", b"*").decode()
                self.entries.flush(None if t == "*" else t)
        if keys:
            self.mirrored_in += await self._fetch(keys)

    async def _fetch(self, keys: list[bytes]) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        rows = await pipe.execute()
        n = 0
        now = time.time()
        for row in rows:
            if row and self._decode(row, now):
                n += 1
        return n

    def _decode(self, row: dict, now: float) -> bool:
        try:
            m = orjson.loads(row[b"m"])
            if m["e"] <= now:
                return False
            old = self.entries.by_key.get(m["k"])
            if old is not None and old.created >= m["c"]:
                return False
            e = Entry(m["k"], m["t"], m.get("s"), m.get("x"), row[b"r"], m["c"], m["e"], 0)
            hv = None
            raw = row.get(b"h")
            if e.scope is not None and e.text:
                e.ckey = m.get("ck")
                indexed = bool(raw)  # the writer sends a vector for long prompts only
                if e.ckey is None:  # written by a version without content keys
                    e.analysis = key_analysis(e.text)
                    e.ckey = content_key(e.scope, e.analysis)
                    indexed = is_long(e.analysis)
                if indexed:
                    if raw:
                        hv = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
                    if hv is None or hv.shape[0] != HASH_DIM:
                        hv = self.semantic.hasher.vector(e.text)
            self.entries.insert(e, hv)
            if e.text is not None and self.semantic.on and (e.analysis is None or self.semantic.static is not None):
                self.semantic.analyse_later(e)  # the analysis, and the static vector of a short prompt
            return True
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
            return False

    async def _load_all(self) -> None:
        batch: list[bytes] = []
        n = 0
        async for k in self._redis.scan_iter(match=(self.k_entry + "*").encode(), count=1000):
            batch.append(k)
            if len(batch) >= 500:
                n += await self._fetch(batch)
                batch = []
                await asyncio.sleep(0)
        if batch:
            n += await self._fetch(batch)
        self.loaded += n

    async def _write(self, made: list[tuple[Entry, np.ndarray | None]], raise_errors: bool = False) -> None:
        now = time.time()
        pipe = self._redis.pipeline(transaction=True)
        count = 0
        for e, hv in made:
            ttl = int(e.expires - now + 0.999)
            if ttl <= 0:
                continue
            if hv is None and e.indexed & INDEX_HASHED:
                hv = self.semantic.hasher.vector(e.text)
            meta = {"k": e.key, "t": e.tenant, "s": e.scope, "x": e.text, "c": e.created, "e": e.expires}
            if e.ckey is not None:
                meta["ck"] = e.ckey
            mapping = {"m": orjson.dumps(meta), "r": e.response}
            if hv is not None:
                mapping["h"] = hv.astype(np.float16).tobytes()
            pipe.hset(e.rkey, mapping=mapping)
            pipe.expire(e.rkey, ttl)
            pipe.xadd(self.k_stream, {"o": self.origin, "op": "set", "k": e.rkey},
                      maxlen=self.config.stream_maxlen, approximate=True)
            count += 1
        if not count:
            return
        try:
            await pipe.execute()
            self.mirrored_out += count
        except Exception as exc:  # noqa: BLE001
            self._down(exc)
            self.backlog.extend(e for e, _ in made)
            if raise_errors:
                raise
