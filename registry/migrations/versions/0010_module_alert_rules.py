"""Alert rules shipped by modules (docs/alerting.md "Rules shipped by modules"): where a rule comes
from (``origin``, ``module_name``, ``module_rule``), whether an operator changed it (``modified``),
kept it after it left the manifest (``detached``), and why it is paused (its module is disabled).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("alert_rules") as batch:
        batch.add_column(sa.Column("origin", sa.String(16), nullable=False, server_default="api"))
        batch.add_column(sa.Column("module_name", sa.String(50), nullable=True))
        batch.add_column(sa.Column("module_rule", sa.String(200), nullable=True))
        batch.add_column(sa.Column("modified", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("detached", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("paused_reason", sa.String(200), nullable=True))
        batch.create_index("ix_alert_rules_module_name", ["module_name"])


def downgrade() -> None:
    with op.batch_alter_table("alert_rules") as batch:
        batch.drop_index("ix_alert_rules_module_name")
        for column in ("paused_reason", "detached", "modified", "module_rule", "module_name", "origin"):
            batch.drop_column(column)
