"""Traces (docs/observability.md): the trace of an execution, and the trace context an event was
received in, so that the runs it triggers join that trace.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from registry import execution_counts

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(32), nullable=True))
    execution_counts.recreate_sqlite(op)  # SQLite's batch mode rebuilt the table without its triggers
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("traceparent")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("trace_id")
    execution_counts.recreate_sqlite(op)
