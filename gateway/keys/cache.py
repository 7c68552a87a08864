"""This worker's copy of the virtual keys: what admission reads, with no database round trip.

Loaded whole at start, then kept current by asking the database for rows
changed since the last look: every ``refresh_seconds``, and at once when a
worker that changed a key says so on the Redis channel ``<prefix>keys``
(when REDIS_URL is set), so a revoked key stops working everywhere within
milliseconds with Redis and within ``refresh_seconds`` without. A database
that is down leaves the last copy serving.
"""

from __future__ import annotations

import asyncio
import logging
from time import time

from gateway.auth import ApiKey
from gateway.errors import GatewayError
from gateway.keys.store import SECRET_PREFIX, KeyStore, hash_secret, to_api_key

log = logging.getLogger("gateway.keys")

_EXPIRED = GatewayError(401, "This API key has expired.", "invalid_request_error", None, "expired_api_key")
_OVERLAP = 5.0  # seconds re-read at each refresh: commits land out of order, clocks of instances differ


class KeyCache:
    def __init__(self, store: KeyStore, refresh_seconds: float = 5.0, redis_url: str | None = None, prefix: str = "gw:") -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.redis_url = redis_url
        self.channel = prefix + "keys"
        self.by_hash: dict[str, ApiKey] = {}
        self.watermark = 0.0
        self.refreshes = 0
        self.errors = 0
        self._tasks: list[asyncio.Task] = []
        self._redis = None

    def __call__(self, token: str) -> ApiKey | None:
        """The live key for a bearer token, or None; an expired one is a 401 of its own."""
        if not token.startswith(SECRET_PREFIX):
            return None  # not one of ours: no hash for a random or mistyped token
        key = self.by_hash.get(hash_secret(token))
        if key is not None and key.expires_at is not None and key.expires_at <= time():
            raise _EXPIRED
        return key

    async def refresh(self) -> int:
        """Apply the rows changed since the last refresh; the number applied."""
        rows = await self.store.changed_since(self.watermark - _OVERLAP if self.watermark else 0.0)
        for row in rows:
            if row.revoked_at is not None:
                self.by_hash.pop(row.key_hash, None)
            else:
                self.by_hash[row.key_hash] = to_api_key(row)
            self.watermark = max(self.watermark, row.updated_at)
        self.refreshes += 1
        return len(rows)

    async def start(self, load: bool = True) -> None:
        if load:
            await self.refresh()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._poll(), name="keys-refresh"))
        if self.redis_url:
            self._tasks.append(loop.create_task(self._follow(), name="keys-follow"))

    async def changed(self) -> None:
        """A key changed here: refresh this worker now and tell the others."""
        await self.refresh()
        if self._redis is not None:
            try:
                await self._redis.publish(self.channel, b"1")
            except Exception as exc:  # noqa: BLE001 - the others still catch up at their next poll
                log.warning("keys: could not publish a change on Redis: %s", exc)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep serving the last copy
                self.errors += 1
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning("keys: refresh from the database failed (%d so far): %s", self.errors, exc)

    async def _follow(self) -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(self.redis_url)
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        try:
                            await self.refresh()
                        except Exception as exc:  # noqa: BLE001
                            self.errors += 1
                            log.warning("keys: refresh after a change notice failed: %s", exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: polling carries on; re-subscribe later
                log.debug("keys: Redis channel lost (%s); re-subscribing", exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()
