"""Schema migrations (Alembic, scripts in ``migrations/``): ``gateway db upgrade`` and the check at start.

The gateway never serves on a schema older than its code: ``check_schema``
compares the database's revision with the newest script and raises
``SchemaBehind`` with the command that fixes it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaBehind(Exception):
    """The database's schema is older than the code (or absent); the message says what to run."""


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    return cfg


def head() -> str:
    return ScriptDirectory.from_config(_config("sqlite://")).get_current_head()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database to ``revision``; blocking (the CLI's, before any worker starts).

    The migrations run on their own event loop (``migrations/env.py``): called
    from a running loop, they get a thread of their own.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(_config(url), revision)
        return
    with ThreadPoolExecutor(1) as pool:
        pool.submit(command.upgrade, _config(url), revision).result()


async def current(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def check_schema(engine: AsyncEngine) -> None:
    have, want = await current(engine), head()
    if have != want:
        state = "has no gateway schema" if have is None else f"is at schema revision {have}"
        raise SchemaBehind(
            f"the database {engine.url.render_as_string(hide_password=True)} {state}; this gateway needs {want}: "
            "run `gateway db upgrade` (same DATABASE_URL) and start again"
        )
