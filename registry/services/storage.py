"""Module documents (``ctx.storage``) and job state (``ctx.state``) in the registry database.

Every document function takes the owning module's id and filters by it, so one module's calls
can never touch another's rows. Values are validated by the SDK layer (autoplat.storage) before
they get here. Works on PostgreSQL (JSONB containment) and SQLite (json_extract / json_type).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from registry.errors import Conflict
from registry.models import JobState, Module, ModuleDocument


class StateVersionConflict(Conflict):
    """The job state's version is not the expected one (optimistic concurrency)."""

    def __init__(self, *, job_id: str, expected: int, current: int) -> None:
        super().__init__(
            f"job state of {job_id} is at version {current}, not {expected}",
            details={"expected_version": expected, "current_version": current},
        )
        self.current = current


def _now() -> datetime:
    return datetime.now(UTC)


def _live(now: datetime) -> ColumnElement[bool]:
    return or_(ModuleDocument.expires_at.is_(None), ModuleDocument.expires_at > now)


async def module_id(*, session: AsyncSession, name: str) -> str | None:
    return await session.scalar(select(Module.id).where(Module.name == name))


async def storage_owner(*, session: AsyncSession, name: str) -> tuple[str, bool] | None:
    """The module's id and whether its manifest declares the ``storage`` service (``None``: unknown)."""
    row = (await session.execute(select(Module.id, Module.manifest).where(Module.name == name))).first()
    if row is None:
        return None
    services = ((row.manifest or {}).get("permissions") or {}).get("services") or []
    return str(row.id), "storage" in services


def _insert(session: AsyncSession, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"module storage does not support {dialect}")


async def put_documents(
    *, session: AsyncSession, module_id: str, items: Sequence[tuple[str, Any]], expires_at: datetime | None
) -> None:
    """Insert or replace documents (one statement: all or nothing)."""
    now = _now()
    stmt = _insert(session, ModuleDocument).values(
        [
            {
                "module_id": module_id,
                "key": k,
                "value": v,
                "expires_at": expires_at,
                "created_at": now,
                "updated_at": now,
            }
            for k, v in items
        ]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[ModuleDocument.module_id, ModuleDocument.key],
        set_={"value": stmt.excluded.value, "expires_at": stmt.excluded.expires_at, "updated_at": now},
    )
    await session.execute(stmt)


async def get_document(*, session: AsyncSession, module_id: str, key: str) -> ModuleDocument | None:
    return await session.scalar(
        select(ModuleDocument).where(ModuleDocument.module_id == module_id, ModuleDocument.key == key, _live(_now()))
    )


async def delete_document(*, session: AsyncSession, module_id: str, key: str) -> bool:
    result = await session.execute(
        delete(ModuleDocument)
        .where(ModuleDocument.module_id == module_id, ModuleDocument.key == key, _live(_now()))
        .returning(ModuleDocument.id)
    )
    return result.first() is not None


def _field_equals(session: AsyncSession, name: str, value: Any) -> ColumnElement[bool]:
    if session.get_bind().dialect.name == "postgresql":
        # JSONB containment compares with JSON types (true is not 1), like the in-memory store.
        return type_coerce(ModuleDocument.value, JSONB).contains({name: value})
    path = '$."' + name + '"'
    kind = func.json_type(ModuleDocument.value, path)
    extracted = func.json_extract(ModuleDocument.value, path)
    if value is None:
        return kind == "null"
    if isinstance(value, bool):
        return kind == ("true" if value else "false")
    if isinstance(value, int | float):
        return and_(kind.in_(("integer", "real")), extracted == value)
    return and_(kind == "text", extracted == value)


async def query_documents(
    *, session: AsyncSession, module_id: str, prefix: str, where: dict[str, Any], limit: int, after: str | None = None
) -> list[ModuleDocument]:
    stmt = select(ModuleDocument).where(ModuleDocument.module_id == module_id, _live(_now()))
    if prefix:
        stmt = stmt.where(ModuleDocument.key.startswith(prefix, autoescape=True))
    if after is not None:
        stmt = stmt.where(ModuleDocument.key > after)
    for name, value in where.items():
        stmt = stmt.where(_field_equals(session, name, value))
    return list(await session.scalars(stmt.order_by(ModuleDocument.key).limit(limit)))


async def purge_expired(*, session: AsyncSession, now: datetime | None = None) -> int:
    """Delete expired documents of every module; returns how many."""
    result = await session.execute(
        delete(ModuleDocument)
        .where(ModuleDocument.expires_at.is_not(None), ModuleDocument.expires_at <= (now or _now()))
        .returning(ModuleDocument.id)
    )
    return len(result.all())


# --- job state -----------------------------------------------------------------------------------
async def get_state(*, session: AsyncSession, job_id: str) -> tuple[dict[str, Any], int]:
    row = await session.get(JobState, job_id, populate_existing=True)
    return (dict(row.value or {}), row.version) if row is not None else ({}, 0)


async def set_state(
    *,
    session: AsyncSession,
    job_id: str,
    value: dict[str, Any],
    expected_version: int | None,
    updated_by: str | None = None,
) -> int:
    """Write a job's state; returns the new version.

    Raises:
        StateVersionConflict: ``expected_version`` is given and the stored version differs
            (0 means "never written").
    """
    now = _now()
    if expected_version is None or expected_version == 0:
        stmt = _insert(session, JobState).values(
            job_id=job_id, value=value, version=1, updated_by=updated_by, updated_at=now
        )
        if expected_version is None:
            stmt = stmt.on_conflict_do_update(
                index_elements=[JobState.job_id],
                set_={"value": value, "version": JobState.version + 1, "updated_by": updated_by, "updated_at": now},
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=[JobState.job_id])
        version = await session.scalar(stmt.returning(JobState.version))
    else:
        version = await session.scalar(
            update(JobState)
            .where(JobState.job_id == job_id, JobState.version == expected_version)
            .values(value=value, version=JobState.version + 1, updated_by=updated_by, updated_at=now)
            .returning(JobState.version)
        )
    if version is None:
        _, current = await get_state(session=session, job_id=job_id)
        raise StateVersionConflict(job_id=job_id, expected=expected_version or 0, current=current)
    return int(version)
