"""The tables, as SQLAlchemy Core metadata (what the queries use; the migrations create them).

Times are epoch seconds (a float), the same on both databases; ``day`` is the
UTC date the roll-ups and reports group by.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL's ledger needs 64 bits.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),  # the ledger's and the budget's key
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # sha256 of the secret, never the secret
    sa.Column("prefix", sa.String(16), nullable=False),  # the secret's first characters, to tell keys apart
    sa.Column("owner", sa.String(200)),
    sa.Column("team", sa.String(200)),
    sa.Column("models", sa.JSON),  # null: every model
    sa.Column("admin", sa.Boolean, nullable=False, default=False),
    sa.Column("requests_per_minute", sa.Integer),
    sa.Column("burst", sa.Integer),
    sa.Column("tokens_per_minute", sa.Integer),
    sa.Column("budget_usd", sa.Float),
    sa.Column("budget_period", sa.String(8)),  # day | month
    sa.Column("expires_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False, index=True),  # what a worker's refresh asks for
    sa.Column("revoked_at", sa.Float),
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("key_name", sa.String(200)),
    sa.Column("model", sa.String(200)),
    sa.Column("provider", sa.String(32)),
    sa.Column("deployment", sa.String(200)),
    sa.Column("surface", sa.String(8), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("cache", sa.String(16)),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cached_tokens", sa.Integer, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("upstream_ms", sa.Float, nullable=False),
    sa.Column("overhead_ms", sa.Float, nullable=False),
    sa.Column("first_chunk_ms", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error_type", sa.String(16)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("client_gone", sa.Boolean, nullable=False),
    # No usage arrived (a stream cut before it): the tokens and cost are the gateway's estimate (migration 0002).
    sa.Column("usage_estimated", sa.Boolean, nullable=False, server_default=sa.false()),
    # No secondary index (migration 0003): nothing reads rows by request or by day, and each one cost every
    # insert a B-tree insertion. A lookup by request id is a scan, rare and off the request path.
)

# One row per (day, key, model), added to in the ledger's own transactions: reports read these, not the ledger.
usage_daily = sa.Table(
    "usage_daily",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("key_name", sa.String(200), primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),  # "" when admission refused before the model was known
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("cached_requests", sa.BigInteger, nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    sa.Column("cached_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
)

# A budget's spent + reserved amount for one period ("<key>:<period label>"), shared by the workers and
# instances of a database without Redis: reserved with one conditional UPDATE, settled in the ledger's batch.
budget_spend = sa.Table(
    "budget_spend",
    metadata,
    sa.Column("slot", sa.String(220), primary_key=True),
    sa.Column("amount", sa.Float, nullable=False),
)
