"""The ledger's writer: a bounded buffer and one task per worker that empties it in batches.

``add`` is all the request path does: append a tuple to a deque. The task
takes up to ``batch`` rows, inserts them, adds them to the daily roll-ups and
applies the budget settles that came with them (``settle``) in one
transaction, and only then drops them from the buffer, so a failed write
loses nothing: the rows wait (the database is down, restarting, locked) and
the task retries with a capped backoff. The buffer is bounded; past the bound
new rows are refused, counted in ``overflow`` and logged, never dropped
silently. Roll-up and budget rows are updated in sorted order, so two
workers' transactions lock them in the same order and cannot deadlock.

Per batch, the work the worker's core does is kept to one call:

* PostgreSQL: asyncpg's binary COPY, then the roll-ups and settles (one
  array-per-column ``unnest`` statement instead cost the worker 8 µs of CPU a
  row against COPY's 5, in batches of 400). The writer keeps its pool
  connection between batches (a checkout per batch, with its pre-ping, was
  ~40 % of the writer's loop time); a batch that fails drops it and the retry
  checks out a fresh one.
* SQLite: the whole transaction in one call to the writer's own thread and
  ``sqlite3`` connection (aiosqlite costs a thread hop per statement), the rows
  as multi-row INSERTs of a few fixed sizes (one ``sqlite3_step`` per
  statement, not one per row; the same SQL texts, so sqlite3's statement
  cache keeps them prepared).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, islice
from time import monotonic

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.rows import COLUMNS

log = logging.getLogger("gateway.ledger")

_SUMS = ("requests", "errors", "cached_requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd")
_DAY, _KEY, _MODEL, _STATUS, _CACHE = (COLUMNS.index(c) for c in ("day", "key_name", "model", "status", "cache"))
_PROMPT, _COMPLETION, _CACHED, _COST = (COLUMNS.index(c) for c in ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd"))
_ADD = ", ".join(f"{c} = usage_daily.{c} + excluded.{c}" for c in _SUMS)
_SQLITE_CHUNKS = (256, 64, 16, 4, 1)  # rows per INSERT statement: any batch in a few statements of prepared SQL
_NO_MS = -1.0  # no first chunk (a plain answer): no time is negative
# The nullable columns of a SQLite row: the listener hands '' (or -1.0) for NULL, since sqlite3 binds None
# only through its adapter lookup; a row with None there (other callers) is stored as NULL all the same.
_SQLITE_VALUE = {c: "nullif(?, '')" for c in ("key_name", "model", "provider", "deployment", "cache", "error_type", "error_code")}
_SQLITE_VALUE["first_chunk_ms"] = f"nullif(?, {_NO_MS})"

_PG_UPSERT = (
    f"INSERT INTO usage_daily (day, key_name, model, {', '.join(_SUMS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(3 + len(_SUMS)))}) ON CONFLICT (day, key_name, model) DO UPDATE SET {_ADD}"
)
_PG_SETTLE = "UPDATE budget_spend SET amount = amount + $2 WHERE slot = $1"
_SQLITE_UPSERT = (
    f"INSERT INTO usage_daily (day, key_name, model, {', '.join(_SUMS)}) VALUES ({', '.join('?' * (3 + len(_SUMS)))}) "
    f"ON CONFLICT (day, key_name, model) DO UPDATE SET {_ADD}"
)
_SQLITE_SETTLE = "UPDATE budget_spend SET amount = amount + ? WHERE slot = ?"


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
    def __init__(self, engine: AsyncEngine, max_buffer: int = 100_000, batch: int = 1000, interval: float = 0.25,
                 busy_timeout: float = 30.0) -> None:
        self.engine = engine
        self.max_buffer = max_buffer
        self.batch = batch
        self.interval = interval  # longest a row waits in a quiet worker before its batch is written
        self.buffer: deque[tuple] = deque()
        self.settles: dict[str, float] = {}  # budget slot → the settles (cost - reserved) not yet written
        self.written = 0
        self.batches = 0
        self.overflow = 0  # rows refused because the buffer was full (logged)
        self.failures = 0  # batches that failed and were retried
        self.last_error: str | None = None
        self._postgres = engine.dialect.name == "postgresql"
        if self._postgres:
            self.day = _same
            self.flags = (False, True)
            self.nil = (None, None)  # (text, float) NULLs: COPY writes None as NULL at no cost
        else:
            self.day = dt.date.isoformat  # how SQLAlchemy stores a Date in SQLite, without sqlite3's adapter call
            self.flags = (0, 1)
            self.nil = ("", _NO_MS)  # bound without an adapter lookup; ``nullif`` in the INSERT makes them NULL
            one = "(" + ", ".join(_SQLITE_VALUE.get(c, "?") for c in COLUMNS) + ")"
            head = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES "
            self._inserts = [(n, head + ", ".join([one] * n)) for n in _SQLITE_CHUNKS]
            # sqlite3 binds None through its adapter lookup, which (no adapter found) asks the protocol type
            # for ``__adapt__`` and formats the AttributeError it then clears: ~0.25 us per NULL, 4 in most
            # rows. A registered adapter that returns None (a C call) binds the same NULL. Process-wide, and
            # harmless to every other sqlite3 user: None still binds as NULL.
            sqlite3.register_adapter(type(None), _NULL)
            self._path = engine.url.database
            self._busy_timeout = busy_timeout
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-sqlite")
            self._sqlite: sqlite3.Connection | None = None  # used in ``_thread`` only
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._overflow_logged = 0.0
        self._conn = None  # PostgreSQL: the pool connection kept between batches (AsyncConnection), its driver's
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
        n = len(buf)
        if n == 1 or n >= self.batch:
            self._wake.set()  # the first row wakes an idle writer (which then lets a batch gather), a full batch a busy one

    def settle(self, slot: str, delta: float) -> None:
        """A budget reservation held in ``budget_spend`` settled to its cost: applied with the next batch."""
        self.settles[slot] = self.settles.get(slot, 0.0) + delta
        if not self.buffer:
            self._wake.set()

    # --- the writer task -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    async def _run(self) -> None:
        backoff = 0.1
        wake = self._wake
        while True:
            if not self.buffer and not self.settles:
                if self._closing:
                    return
                wake.clear()
                await wake.wait()  # idle: no timer ticking until a row comes
                continue
            # Coalesce: rows gather for ``interval`` unless a full batch is waiting (or flush/close asks), since
            # each transaction has a fixed cost whatever its size.
            if len(self.buffer) < self.batch and not self._closing:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), self.interval)
                except TimeoutError:
                    pass
            rows = list(islice(self.buffer, self.batch))
            settles, self.settles = self.settles, {}
            try:
                await self._write(rows, sorted(settles.items()))
            except asyncio.CancelledError:
                self._merge(settles)
                raise
            except Exception as exc:  # noqa: BLE001 - any database failure: keep the rows, retry later
                self._merge(settles)
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

    def _merge(self, settles: dict[str, float]) -> None:
        """Settles of a batch that failed go back in front of any that arrived meanwhile."""
        for slot, delta in self.settles.items():
            settles[slot] = settles.get(slot, 0.0) + delta
        self.settles = settles

    async def _write(self, rows: list[tuple], settles: list[tuple[str, float]]) -> None:
        if not self._postgres:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._write_sqlite, rows, settles)
            return
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
            async with raw.transaction():
                if rows:
                    await raw.copy_records_to_table("usage", records=rows, columns=COLUMNS)
                    await raw.executemany(_PG_UPSERT, rollup(rows))
                if settles:
                    await raw.executemany(_PG_SETTLE, settles)
        except BaseException:
            await self._release(invalidate=True)
            raise

    def _write_sqlite(self, rows: list[tuple], settles: list[tuple[str, float]]) -> None:
        """The batch's transaction, in the writer's thread."""
        conn = self._connect_sqlite()
        try:
            conn.execute("BEGIN IMMEDIATE")  # the write lock first (waiting up to the timeout), never an upgrade later
            i, n = 0, len(rows)
            for size, sql in self._inserts:
                while n - i >= size:
                    conn.execute(sql, list(chain.from_iterable(rows[i:i + size])))
                    i += size
            if rows:
                conn.executemany(_SQLITE_UPSERT, rollup(rows))
            if settles:
                conn.executemany(_SQLITE_SETTLE, [(delta, slot) for slot, delta in settles])
            conn.execute("COMMIT")
        except BaseException:
            self._drop_sqlite(conn)
            raise

    async def run_sqlite(self, fn, *args):
        """``fn(connection, *args)`` in the writer's thread, on its ``sqlite3`` connection (autocommit: ``fn`` opens
        its own transaction, BEGIN IMMEDIATE when it writes: a deferred one that reads first can fail with
        SQLITE_BUSY_SNAPSHOT where another worker committed meanwhile, which no busy timeout waits out)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._call_sqlite, fn, args)

    def _call_sqlite(self, fn, args):
        conn = self._connect_sqlite()
        try:
            return fn(conn, *args)
        except BaseException:
            self._drop_sqlite(conn)
            raise

    def _connect_sqlite(self) -> sqlite3.Connection:
        conn = self._sqlite
        if conn is None:
            conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._sqlite = conn
        return conn

    def _drop_sqlite(self, conn: sqlite3.Connection) -> None:
        self._sqlite = None
        try:
            conn.close()  # an open transaction is rolled back with it
        except Exception:  # noqa: BLE001
            pass

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
        """Wait until every row added (and settle made) so far is written (True) or ``timeout`` passes (False)."""
        deadline = monotonic() + timeout
        while self.buffer or self.settles:
            if monotonic() >= deadline:
                return False
            self._wake.set()
            await asyncio.sleep(0.005)
        return True

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
        if not self._postgres:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._close_sqlite)
            self._thread.shutdown(wait=False)
        if self.buffer or self.settles:
            log.error("ledger: %d usage rows (and %d budget settles) not written at shutdown (database: %s)",
                      len(self.buffer), len(self.settles), self.last_error)

    def _close_sqlite(self) -> None:
        conn, self._sqlite = self._sqlite, None
        if conn is not None:
            conn.close()

    def stats(self) -> dict:
        return {
            "buffered": len(self.buffer), "written": self.written, "batches": self.batches,
            "overflow": self.overflow, "failed_batches": self.failures, "last_error": self.last_error,
        }


def _same(day: dt.date) -> dt.date:
    return day


_NULL = {}.get  # None -> None, without a Python frame
