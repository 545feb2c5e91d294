"""Schedules you can account for: the slot ledger, the nominal time of a run, pause, DST policy,
jitter and backfills (docs/schedules.md).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from registry import execution_counts

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("dst_nonexistent", sa.String(8), nullable=False, server_default="shift"))
        batch.add_column(sa.Column("dst_ambiguous", sa.String(8), nullable=False, server_default="first"))
        batch.add_column(sa.Column("jitter_seconds", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("schedule_paused", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("schedule_pause_note", sa.Text(), nullable=True))
        batch.add_column(sa.Column("schedule_paused_by", sa.String(320), nullable=True))
        batch.add_column(sa.Column("schedule_paused_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("slots_settled_until", sa.DateTime(timezone=True), nullable=True))
    # The ledger of existing jobs starts now: their earlier runs have no nominal time recorded, so
    # their past slots would all read "missed" (and page whoever alerts on schedule.missed).
    now = datetime.now(UTC)
    jobs = sa.table("jobs", sa.column("slots_settled_until", sa.DateTime(timezone=True)))
    op.execute(
        jobs.update().values(
            slots_settled_until=now.replace(tzinfo=None) if op.get_bind().dialect.name == "sqlite" else now
        )
    )
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("nominal_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_unique_constraint("uq_executions_job_nominal", ["job_id", "nominal_at"])
    execution_counts.recreate_sqlite(op)  # SQLite's batch mode rebuilt the table without its triggers
    op.create_table(
        "schedule_slots",
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("nominal_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("execution_id", sa.String(36), nullable=True),
        sa.Column("dst", sa.String(200), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "backfills",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("from_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("to_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("overlap", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("slots", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("started", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("requested_by", sa.String(320), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("backfills")
    op.drop_table("schedule_slots")
    with op.batch_alter_table("executions") as batch:
        batch.drop_constraint("uq_executions_job_nominal", type_="unique")
        batch.drop_column("nominal_at")
    execution_counts.recreate_sqlite(op)
    with op.batch_alter_table("jobs") as batch:
        for name in (
            "slots_settled_until",
            "schedule_paused_at",
            "schedule_paused_by",
            "schedule_pause_note",
            "schedule_paused",
            "jitter_seconds",
            "dst_ambiguous",
            "dst_nonexistent",
        ):
            batch.drop_column(name)
