"""usage.usage_estimated: a row whose tokens and cost the gateway estimated (a stream cut before its usage).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant server default: PostgreSQL adds it without rewriting the table, SQLite with ADD COLUMN.
    op.add_column("usage", sa.Column("usage_estimated", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("usage_estimated")
