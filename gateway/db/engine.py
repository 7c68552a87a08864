"""The async engine and its pool, from the DATABASE_* settings."""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def create_engine(url: str, pool_size: int = 20, max_overflow: int = 40, pool_timeout: float = 30.0) -> AsyncEngine:
    """One pool per process. ``pool_pre_ping``: after a database restart the next batch must not fail on a dead connection."""
    if url.startswith("postgresql"):
        # A hung server must fail the batch (which then waits in the buffer) instead of holding the writer forever.
        connect_args: dict = {"command_timeout": 30, "timeout": pool_timeout}
    else:
        # SQLite has one writer at a time: wait for another worker's batch to commit instead of failing at once.
        connect_args = {"timeout": pool_timeout}
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
        connect_args=connect_args,
    )
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_wal)
    return engine


def _sqlite_wal(dbapi_conn, record) -> None:
    # WAL: readers (reports, key refreshes) never wait on the ledger's writer, and commits need one fsync less.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def settings_engine(settings) -> AsyncEngine:
    return create_engine(
        settings.database_url, settings.database_pool_size, settings.database_max_overflow, settings.database_pool_timeout
    )
