"""peer keys pinned on first use

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "peer_keys",
        sa.Column("peer_id", sa.String(length=256), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("peer_id", name=op.f("pk_peer_keys")),
    )


def downgrade() -> None:
    op.drop_table("peer_keys")
