"""The database of virtual keys, budgets and the usage ledger: SQLAlchemy 2 async Core.

SQLite (aiosqlite) by default, a file in the working directory; PostgreSQL
(asyncpg) in production. Nothing on the request path waits on it: keys are
read from a per-worker cache, ledger rows are written in batches by one task
per worker. ``schema`` holds the tables, ``engine`` the pool, ``migrate`` the
Alembic upgrade and the start-up check.
"""

from gateway.db.engine import create_engine
from gateway.db.migrate import SchemaBehind, check_schema, upgrade

__all__ = ["SchemaBehind", "check_schema", "create_engine", "upgrade"]
