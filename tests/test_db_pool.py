"""The connection pool replaces a connection the database dropped while it sat idle."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from registry import db


async def backend_pid(engine: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


def terminate(url: str, pid: int) -> None:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_an_idle_connection_killed_by_the_server_is_replaced(migrated, monkeypatch):
    engine = db.create_engine(migrated)
    try:
        first = await backend_pid(engine)
        terminate(migrated, first)
        monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)  # the connection counts as idle: pinged
        second = await backend_pid(engine)
        assert second != first
    finally:
        await engine.dispose()


async def test_without_the_ping_the_dead_connection_fails_once_then_the_pool_recovers(migrated, monkeypatch):
    engine = db.create_engine(migrated)
    try:
        first = await backend_pid(engine)
        terminate(migrated, first)
        monkeypatch.setattr(db, "IDLE_PING_SECONDS", 3600.0)  # in steady use: not pinged
        with pytest.raises(DBAPIError):
            await backend_pid(engine)
        assert await backend_pid(engine) != first  # the pool was recycled after the failure
    finally:
        await engine.dispose()


async def test_a_rollback_that_fails_does_not_replace_the_error_that_ended_the_unit(migrated):
    """A unit cut by a cancellation whose connection is gone: the rollback fails too, and the
    cancellation, not the rollback's error, is what the caller sees (a loop that survives errors
    would otherwise take a stop for a failure and go on)."""
    import asyncio

    engine = db.create_engine(migrated)
    sessions = db.create_session_factory(engine)
    try:
        with pytest.raises(asyncio.CancelledError):
            async with db.unit_of_work(sessions) as session:
                pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
                terminate(migrated, pid)
                raise asyncio.CancelledError
    finally:
        await engine.dispose()
