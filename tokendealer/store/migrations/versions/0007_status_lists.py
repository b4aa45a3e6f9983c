"""Status lists: index blocks per client, client-wide revocations, one token's bit.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "status_blocks",
        sa.Column("list_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("start", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("client_version", sa.Integer, nullable=False),
        sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_status_blocks_client_id", "status_blocks", ["client_id"])
    op.create_table(
        "status_marks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("below_version", sa.Integer, nullable=True),
        sa.Column("marked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_status_marks_client_id", "status_marks", ["client_id"])
    op.create_index("ix_status_marks_marked_at", "status_marks", ["marked_at"])
    with op.batch_alter_table("revoked_tokens") as batch:
        batch.add_column(sa.Column("status_list", sa.Integer, nullable=True))
        batch.add_column(sa.Column("status_idx", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("revoked_tokens") as batch:
        batch.drop_column("status_idx")
        batch.drop_column("status_list")
    op.drop_table("status_marks")
    op.drop_table("status_blocks")
