"""owners' seals on file records, owners' signatures on tombstones

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 20:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_key", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("seal", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("tombstones", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delete_ts", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("delete_sig", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tombstones", schema=None) as batch_op:
        batch_op.drop_column("delete_sig")
        batch_op.drop_column("delete_ts")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("seal")
        batch_op.drop_column("owner_key")
