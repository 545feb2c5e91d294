"""execution counts per hour, kept by triggers, for stats that do not scan the history

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 08:00:00.000000

``execution_counts`` holds, per UTC hour of ``created_at`` and (job, module, job type, status), the
number of executions and the sum of their durations. Database triggers keep it in step with
``executions`` on every insert, update of a counted column and delete, whoever writes (the worker's
mirror, the sweeper, retention, a job's deletion setting ``job_id`` to null): no write path can
forget it. ``GET /executions/stats`` reads whole hours from here and only the partial hours at the
edges of its range from ``executions``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from registry import execution_counts
from registry.execution_counts import KEY, SQLITE_HOUR

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BACKFILL = """
INSERT INTO execution_counts ({key}, n, duration_n, duration_sum)
SELECT {hour}, COALESCE(job_id, ''), module_name, job_type, status, count(*), count(duration_ms),
       COALESCE(sum(duration_ms), 0)
FROM executions
GROUP BY {hour}, COALESCE(job_id, ''), module_name, job_type, status
"""


def upgrade() -> None:
    op.create_table(
        "execution_counts",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_key", sa.String(length=36), nullable=False),
        sa.Column("module_name", sa.String(length=50), nullable=False),
        sa.Column("job_type", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("duration_n", sa.BigInteger(), nullable=False),
        sa.Column("duration_sum", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "job_key", "module_name", "job_type", "status", name=op.f("pk_execution_counts")
        ),
    )
    op.create_index("ix_execution_counts_job_hour", "execution_counts", ["job_key", "hour"])
    op.create_index("ix_execution_counts_module_hour", "execution_counts", ["module_name", "hour"])
    execution_counts.create(op)
    if op.get_bind().dialect.name == "postgresql":
        hour = "date_trunc('hour', created_at, 'UTC')"
    else:
        hour = SQLITE_HOUR.format(row="executions")
    op.execute(BACKFILL.format(key=KEY, hour=hour))


def downgrade() -> None:
    execution_counts.drop(op)
    op.drop_table("execution_counts")
