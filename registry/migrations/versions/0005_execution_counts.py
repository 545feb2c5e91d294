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

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = "hour, job_key, module_name, job_type, status"

PG_FUNCTION = f"""
CREATE FUNCTION executions_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE execution_counts
           SET n = n - 1,
               duration_n = duration_n - (OLD.duration_ms IS NOT NULL)::int,
               duration_sum = duration_sum - COALESCE(OLD.duration_ms, 0)
         WHERE hour = date_trunc('hour', OLD.created_at, 'UTC') AND job_key = COALESCE(OLD.job_id, '')
           AND module_name = OLD.module_name AND job_type = OLD.job_type AND status = OLD.status;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO execution_counts ({KEY}, n, duration_n, duration_sum)
        VALUES (date_trunc('hour', NEW.created_at, 'UTC'), COALESCE(NEW.job_id, ''), NEW.module_name,
                NEW.job_type, NEW.status, 1, (NEW.duration_ms IS NOT NULL)::int, COALESCE(NEW.duration_ms, 0))
        ON CONFLICT ({KEY}) DO UPDATE
           SET n = execution_counts.n + 1,
               duration_n = execution_counts.duration_n + EXCLUDED.duration_n,
               duration_sum = execution_counts.duration_sum + EXCLUDED.duration_sum;
    END IF;
    RETURN NULL;
END $$
"""

COUNTED = "status, duration_ms, job_id, created_at, module_name, job_type"
CHANGED = " OR ".join(f"OLD.{c.strip()} IS DISTINCT FROM NEW.{c.strip()}" for c in COUNTED.split(","))

PG_TRIGGERS = [
    "CREATE TRIGGER executions_count_insert AFTER INSERT ON executions "
    "FOR EACH ROW EXECUTE FUNCTION executions_count()",
    "CREATE TRIGGER executions_count_delete AFTER DELETE ON executions "
    "FOR EACH ROW EXECUTE FUNCTION executions_count()",
    f"CREATE TRIGGER executions_count_update AFTER UPDATE OF {COUNTED} ON executions "
    f"FOR EACH ROW WHEN ({CHANGED}) EXECUTE FUNCTION executions_count()",
]

# SQLite stores datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' text (SQLAlchemy's format): the hour
# keeps that format so that it compares with bound datetimes.
SQLITE_HOUR = "strftime('%Y-%m-%d %H:00:00.000000', {row}.created_at)"
SQLITE_ADD = f"""
    INSERT INTO execution_counts ({KEY}, n, duration_n, duration_sum)
    VALUES ({SQLITE_HOUR.format(row="NEW")}, COALESCE(NEW.job_id, ''), NEW.module_name, NEW.job_type,
            NEW.status, 1, NEW.duration_ms IS NOT NULL, COALESCE(NEW.duration_ms, 0))
    ON CONFLICT ({KEY}) DO UPDATE
       SET n = n + 1, duration_n = duration_n + excluded.duration_n,
           duration_sum = duration_sum + excluded.duration_sum;
"""
SQLITE_REMOVE = f"""
    UPDATE execution_counts
       SET n = n - 1, duration_n = duration_n - (OLD.duration_ms IS NOT NULL),
           duration_sum = duration_sum - COALESCE(OLD.duration_ms, 0)
     WHERE hour = {SQLITE_HOUR.format(row="OLD")} AND job_key = COALESCE(OLD.job_id, '')
       AND module_name = OLD.module_name AND job_type = OLD.job_type AND status = OLD.status;
"""
SQLITE_TRIGGERS = [
    f"CREATE TRIGGER executions_count_insert AFTER INSERT ON executions BEGIN {SQLITE_ADD} END",
    f"CREATE TRIGGER executions_count_delete AFTER DELETE ON executions BEGIN {SQLITE_REMOVE} END",
    f"CREATE TRIGGER executions_count_update AFTER UPDATE OF {COUNTED} ON executions "
    f"FOR EACH ROW WHEN {CHANGED.replace('IS DISTINCT FROM', 'IS NOT')} BEGIN {SQLITE_REMOVE} {SQLITE_ADD} END",
]

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
        sa.PrimaryKeyConstraint("hour", "job_key", "module_name", "job_type", "status", name=op.f("pk_execution_counts")),
    )
    op.create_index("ix_execution_counts_job_hour", "execution_counts", ["job_key", "hour"])
    op.create_index("ix_execution_counts_module_hour", "execution_counts", ["module_name", "hour"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        for statement in PG_TRIGGERS:
            op.execute(statement)
        hour = "date_trunc('hour', created_at, 'UTC')"
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)
        hour = SQLITE_HOUR.format(row="executions")
    op.execute(BACKFILL.format(key=KEY, hour=hour))


def downgrade() -> None:
    for name in ("insert", "delete", "update"):
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS executions_count_{name} ON executions")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS executions_count_{name}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS executions_count()")
    op.drop_table("execution_counts")
