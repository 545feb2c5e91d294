"""The triggers that keep ``execution_counts`` in step with ``executions`` (migration 0005).

Kept here, importable, because SQLite loses a table's triggers whenever Alembic's batch mode
rebuilds the table: a later migration that alters ``executions`` in batch mode must call
:func:`recreate_sqlite` after it (``tests/test_migrations.py`` checks the triggers at head).
"""

from __future__ import annotations

from typing import Any

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


def create(op: Any) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        for statement in PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def drop(op: Any) -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON executions" if postgres else f"DROP TRIGGER IF EXISTS {name}")
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS executions_count()")


def recreate_sqlite(op: Any) -> None:
    """After a batch-mode rebuild of ``executions`` on SQLite (a no-op on PostgreSQL, which keeps them)."""
    if op.get_bind().dialect.name == "sqlite":
        drop(op)
        create(op)


TRIGGERS = ("executions_count_insert", "executions_count_delete", "executions_count_update")
