"""Clients that authenticate with private_key_jwt: their method, public keys, used jtis.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(
            sa.Column(
                "auth_method",
                sa.String(32),
                nullable=False,
                server_default="client_secret_basic",
            )
        )
        batch.add_column(sa.Column("jwks", sa.JSON, nullable=True))
        batch.add_column(sa.Column("jwks_uri", sa.Text, nullable=True))
    op.create_table(
        "assertion_jtis",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("jti_digest", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_assertion_jtis_expires_at", "assertion_jtis", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_assertion_jtis_expires_at", table_name="assertion_jtis")
    op.drop_table("assertion_jtis")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("jwks_uri")
        batch.drop_column("jwks")
        batch.drop_column("auth_method")
