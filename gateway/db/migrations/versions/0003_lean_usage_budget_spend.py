"""The ledger's secondary indexes dropped; budget_spend: a budget's amount shared through the database.

Revision ID: 0003
Revises: 0002

Nothing reads the ``usage`` table by request id or by (day, key): reports and
budgets read the daily roll-ups. Each index cost every ledger insert a B-tree
insertion (SQLite: ~40 % of the insert's time). ``budget_spend`` holds each
budget's spent + reserved amount per period for the workers and instances that
share the database but no Redis.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_usage_request_id", table_name="usage")
    op.drop_index("ix_usage_day_key", table_name="usage")
    op.create_table(
        "budget_spend",
        sa.Column("slot", sa.String(220), primary_key=True),
        sa.Column("amount", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budget_spend")
    op.create_index("ix_usage_day_key", "usage", ["day", "key_name"])
    op.create_index("ix_usage_request_id", "usage", ["request_id"])
