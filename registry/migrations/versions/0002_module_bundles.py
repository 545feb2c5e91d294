"""module bundles: code archives stored with each module version

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 11:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("module_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bundle", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("bundle_size", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("source", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("module_versions", schema=None) as batch_op:
        batch_op.drop_column("source")
        batch_op.drop_column("bundle_size")
        batch_op.drop_column("bundle")
