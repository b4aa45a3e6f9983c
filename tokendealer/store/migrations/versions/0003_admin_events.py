"""Administrative audit events (who changed which client or key, when).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(200), nullable=True),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(200), nullable=True),
        sa.Column("actor_user", sa.String(200), nullable=True),
        sa.Column("actor_host", sa.String(200), nullable=True),
        sa.Column("actor_source", sa.String(200), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_index("ix_admin_events_time", "admin_events", ["time"])


def downgrade() -> None:
    op.drop_index("ix_admin_events_time", table_name="admin_events")
    op.drop_table("admin_events")
