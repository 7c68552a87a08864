"""The ledger's writer: a bounded buffer and one task per worker that empties it in batches.

``add`` is all the request path does: append a tuple to a deque. The task
takes up to ``batch`` rows, inserts them and adds them to the daily roll-ups
in one transaction, and only then drops them from the buffer, so a failed
write loses nothing: the rows wait (the database is down, restarting, locked)
and the task retries with a capped backoff. The buffer is bounded; past the
bound new rows are refused, counted in ``overflow`` and logged, never dropped
silently. Roll-up rows are upserted in sorted (day, key, model) order, so two
workers' transactions lock them in the same order and cannot deadlock.

The batch goes to the driver itself through the pool's connection (asyncpg's
COPY, sqlite3's executemany in aiosqlite's thread): SQLAlchemy's per-row
parameter processing measured ~30 µs of event-loop time per row, as much as
a whole proxied request, against ~2 µs this way. The writer keeps that one
connection checked out between batches: a checkout per batch (the pool's
pre-ping round trip and its greenlet) was ~40 % of the writer's loop time
(py-spy, PostgreSQL, 1,400 req/s). A batch that fails drops the connection,
and the retry checks out a fresh one (pre-pinged), so a database restart
costs one failed attempt, never a row.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import monotonic

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.rows import COLUMNS

log = logging.getLogger("gateway.ledger")

_SUMS = ("requests", "errors", "cached_requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd")
_DAY, _KEY, _MODEL, _STATUS, _CACHE = (COLUMNS.index(c) for c in ("day", "key_name", "model", "status", "cache"))
_PROMPT, _COMPLETION, _CACHED, _COST = (COLUMNS.index(c) for c in ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd"))


def _upsert_sql(param) -> str:
    cols = ("day", "key_name", "model", *_SUMS)
    values = ", ".join(param(i + 1) for i in range(len(cols)))
    sets = ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in _SUMS)
    return (
        f"INSERT INTO usage_daily ({', '.join(cols)}) VALUES ({values}) "
        f"ON CONFLICT (day, key_name, model) DO UPDATE SET {sets}"
    )


def rollup(rows: list[tuple]) -> list[tuple]:
    """The batch summed per (day, key, model), sorted: the order every writer locks roll-up rows in."""
    sums: dict[tuple, list] = {}
    for r in rows:
        k = (r[_DAY], r[_KEY] or "", r[_MODEL] or "")
        s = sums.get(k)
        if s is None:
            s = sums[k] = [0, 0, 0, 0, 0, 0, 0.0]
        s[0] += 1
        s[1] += r[_STATUS] != 200
        if r[_CACHE] == "hit" or r[_CACHE] == "semantic-hit":
            s[2] += 1  # answered from the cache: no provider tokens consumed (the row keeps what was replayed)
            continue
        s[3] += r[_PROMPT]
        s[4] += r[_COMPLETION]
        s[5] += r[_CACHED]
        s[6] += r[_COST]
    return [(*k, *s) for k, s in sorted(sums.items())]


class LedgerWriter:
    def __init__(self, engine: AsyncEngine, max_buffer: int = 100_000, batch: int = 1000, interval: float = 0.25) -> None:
        self.engine = engine
        self.max_buffer = max_buffer
        self.batch = batch
        self.interval = interval  # longest a row waits in a quiet worker before its batch is written
        self.buffer: deque[tuple] = deque()
        self.written = 0
        self.batches = 0
        self.overflow = 0  # rows refused because the buffer was full (logged)
        self.failures = 0  # batches that failed and were retried
        self.last_error: str | None = None
        self._postgres = engine.dialect.name == "postgresql"
        if self._postgres:
            self._upsert = _upsert_sql(lambda i: f"${i}")
        else:
            self._insert = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
            self._upsert = _upsert_sql(lambda i: "?")
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._overflow_logged = 0.0
        self._conn = None  # the pool connection kept between batches (AsyncConnection), and its driver connection
        self._raw = None

    # --- the request path ----------------------------------------------------------------

    def add(self, row: tuple) -> None:
        buf = self.buffer
        if len(buf) >= self.max_buffer:
            self.overflow += 1
            now = monotonic()
            if now - self._overflow_logged >= 5.0:  # loud, but not a log line per request
                self._overflow_logged = now
                log.error(
                    "ledger buffer full (%d rows, database unreachable: %s): %d usage rows refused so far",
                    len(buf), self.last_error, self.overflow,
                )
            return
        buf.append(row)
        self._idle.clear()
        if len(buf) >= self.batch:
            self._wake.set()

    # --- the writer task -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            # Coalesce: a batch per ``interval`` unless a full one is waiting (or flush/close asks), since each
            # transaction costs ~2-3 ms of this loop whatever its size.
            if len(self.buffer) < self.batch and not self._closing:
                if not self.buffer:
                    self._idle.set()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                except TimeoutError:
                    pass
                self._wake.clear()
            if not self.buffer:
                self._idle.set()
                if self._closing:
                    return
                continue
            rows = [self.buffer[i] for i in range(min(self.batch, len(self.buffer)))]
            try:
                await self._write(rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any database failure: keep the rows, retry later
                self.failures += 1
                first = self.last_error is None
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                if first:
                    log.warning("ledger write failed (%s); %d rows wait in the buffer, retrying", self.last_error, len(self.buffer))
                if self._closing and backoff >= 2.0:
                    return  # shutting down and the database is still away: close() reports what is left
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if self.last_error is not None:
                log.warning("ledger writes resumed; %d rows still buffered", len(self.buffer) - len(rows))
                self.last_error = None
            backoff = 0.1
            for _ in range(len(rows)):
                self.buffer.popleft()
            self.written += len(rows)
            self.batches += 1

    async def _write(self, rows: list[tuple]) -> None:
        daily = rollup(rows)
        raw = self._raw
        if raw is None:
            conn = await self.engine.connect()
            try:
                raw = (await conn.get_raw_connection()).driver_connection
            except BaseException:
                await conn.close()
                raise
            self._conn, self._raw = conn, raw
        try:
            if self._postgres:
                async with raw.transaction():
                    await raw.copy_records_to_table("usage", records=rows, columns=COLUMNS)
                    await raw.executemany(self._upsert, daily)
            else:
                try:
                    await raw.executemany(self._insert, rows)
                    await raw.executemany(self._upsert, daily)
                    await raw.commit()
                except BaseException:
                    await raw.rollback()
                    raise
        except BaseException:
            await self._release(invalidate=True)
            raise

    async def _release(self, invalidate: bool = False) -> None:
        """Give the kept connection back to the pool (``invalidate``: closed, after a failure)."""
        conn, self._conn, self._raw = self._conn, None, None
        if conn is None:
            return
        try:
            if invalidate:
                await conn.invalidate()
            await conn.close()
        except Exception:  # noqa: BLE001 - a dead connection may fail to close; the pool forgets it either way
            pass

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every row added so far is written (True) or ``timeout`` passes (False)."""
        if not self.buffer:
            return True
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered (up to ``timeout``), then stop; rows that could not be written are logged as lost."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        await self._release()
        if self.buffer:
            log.error("ledger: %d usage rows not written at shutdown (database: %s)", len(self.buffer), self.last_error)

    def stats(self) -> dict:
        return {
            "buffered": len(self.buffer), "written": self.written, "batches": self.batches,
            "overflow": self.overflow, "failed_batches": self.failures, "last_error": self.last_error,
        }
