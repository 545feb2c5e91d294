"""The suite's clean-up between tests ends a connection an earlier test left in a transaction."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import end_leftover_transactions


def test_a_transaction_left_open_is_ended_and_its_locks_released(pg_database: str) -> None:
    url = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("CREATE TABLE IF NOT EXISTS leftover_probe (id int PRIMARY KEY)")
        admin.execute("INSERT INTO leftover_probe VALUES (1) ON CONFLICT DO NOTHING")
    leaked = psycopg.connect(url)
    leaked.execute("SELECT id FROM leftover_probe WHERE id = 1 FOR UPDATE")  # a row lock, left open
    try:
        with psycopg.connect(url) as conn:
            assert end_leftover_transactions(conn) == ["SELECT id FROM leftover_probe WHERE id = 1 FOR UPDATE"]
            conn.execute("SET lock_timeout = '5s'")
            conn.execute("DELETE FROM leftover_probe")  # the lock is gone: no wait
            conn.execute("DROP TABLE leftover_probe")
            conn.commit()
        with pytest.raises(psycopg.OperationalError):
            leaked.execute("SELECT 1")
    finally:
        leaked.close()
