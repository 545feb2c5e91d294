"""Alembic migrations up and down on fresh SQLite and PostgreSQL databases, and schema == models."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from registry.migrate import alembic_config, downgrade, upgrade
from registry.models import Base

PG_ADMIN_DSN = os.environ.get("AUTOPLAT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MODEL_TABLES = set(Base.metadata.tables)


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    """A brand-new, empty PostgreSQL database (async URL), dropped afterwards."""
    name = f"autoplat_migr_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_sqlite(tmp_path: Path) -> str:
    # A folder that doesn't exist yet, like the state folder on a fresh machine.
    return f"sqlite+aiosqlite:///{tmp_path / 'state' / 'autoplat.db'}"


def sync_url(url: str) -> str:
    # psycopg 3 serves both sync and async; aiosqlite's sync twin is the stdlib driver.
    return url.replace("sqlite+aiosqlite://", "sqlite://", 1)


def head_revision(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


def snapshot(url: str) -> tuple[set[str], str | None]:
    """The tables present and the revision recorded in alembic_version."""
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            version = None
            if "alembic_version" in tables:
                version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        return tables, version
    finally:
        engine.dispose()


def schema_diff(url: str) -> list:
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_db(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("fresh_sqlite" if request.param == "sqlite" else "fresh_pg")


async def test_up_down_up(fresh_db: str):
    head = head_revision(fresh_db)

    await upgrade(fresh_db)
    tables, version = snapshot(fresh_db)
    assert tables == MODEL_TABLES | {"alembic_version"}
    assert version == head

    await downgrade(fresh_db, "base")
    tables, version = snapshot(fresh_db)
    assert tables == {"alembic_version"}
    assert version is None

    await upgrade(fresh_db)
    assert snapshot(fresh_db) == (MODEL_TABLES | {"alembic_version"}, head)


async def test_upgrade_is_idempotent(fresh_db: str):
    await upgrade(fresh_db)
    await upgrade(fresh_db)
    assert snapshot(fresh_db) == (MODEL_TABLES | {"alembic_version"}, head_revision(fresh_db))


async def test_every_revision_steps_down_and_up(fresh_db: str):
    """Walk the history one revision at a time, so each downgrade() is exercised on its own."""
    script = ScriptDirectory.from_config(alembic_config(fresh_db))
    revisions = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    for rev in revisions:
        await upgrade(fresh_db, rev)
        assert snapshot(fresh_db)[1] == rev
    for previous in [*reversed(revisions[:-1]), "base"]:
        await downgrade(fresh_db, previous)
        assert snapshot(fresh_db)[1] == (None if previous == "base" else previous)
    assert snapshot(fresh_db)[0] == {"alembic_version"}


async def test_migrated_postgresql_schema_matches_the_models(fresh_pg: str):
    await upgrade(fresh_pg)
    assert schema_diff(fresh_pg) == []


async def test_migrated_sqlite_schema_matches_the_models(fresh_sqlite: str):
    await upgrade(fresh_sqlite)
    assert schema_diff(fresh_sqlite) == []


async def test_schema_diff_detects_drift(fresh_pg: str):
    # The comparison above is only worth something if it can see a difference.
    await upgrade(fresh_pg)
    engine = sa.create_engine(sync_url(fresh_pg))
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE users DROP COLUMN full_name"))
    engine.dispose()
    diff = schema_diff(fresh_pg)
    assert [d[0] for d in diff] == ["add_column"]
    assert diff[0][3].name == "full_name"


def triggers_on_executions(url: str) -> set[str]:
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                query = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'executions'::regclass AND NOT tgisinternal"
            else:
                query = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'executions'"
            return {row[0] for row in conn.execute(sa.text(query))}
    finally:
        engine.dispose()


async def test_execution_count_triggers_survive_every_later_migration(fresh_db: str):
    """SQLite drops a table's triggers when batch mode rebuilds it: at head (and after stepping
    down to 0005 and up again) the triggers that keep execution_counts must all be there."""
    from registry.execution_counts import TRIGGERS

    await upgrade(fresh_db)
    assert triggers_on_executions(fresh_db) == set(TRIGGERS)
    await downgrade(fresh_db, "0005")
    assert triggers_on_executions(fresh_db) == set(TRIGGERS)
    await upgrade(fresh_db)
    assert triggers_on_executions(fresh_db) == set(TRIGGERS)
