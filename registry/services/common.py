"""Helpers shared by the services: pagination and the actor of a request."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, literal_column, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


@dataclass(frozen=True)
class Actor:
    """Who is doing something, for permissions and the audit log."""

    user_id: str | None
    email: str | None
    role: str | None
    ip: str | None = None
    request_id: str | None = None

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        return cls(user_id=None, email=name, role="admin")


@dataclass
class Page(Generic[T]):
    items: list[T]
    total: int
    page: int
    limit: int
    #: False when ``total`` is the planner's estimate (a count would have scanned too many rows).
    total_exact: bool = True
    has_more: bool = False


#: Lists whose filter matches more rows than this answer an estimated total (exact below it).
EXACT_COUNT_CAP = 10_000


async def paginate(session: AsyncSession, stmt: Select[Any], *, page: int, limit: int) -> Page[Any]:
    total = await session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = await session.scalars(stmt.offset((page - 1) * limit).limit(limit))
    count = int(total or 0)
    return Page(items=list(rows), total=count, page=page, limit=limit, has_more=page * limit < count)


async def paginate_large(
    session: AsyncSession, stmt: Select[Any], *, page: int, limit: int, cap: int = EXACT_COUNT_CAP
) -> Page[Any]:
    """``paginate`` for tables that grow without bound: the count stops at ``cap`` rows (an index
    scan of at most ``cap`` entries); above it, ``total`` is the planner's estimate for the filter
    (``total_exact`` false). ``has_more`` is always exact: one row past the page is read."""
    offset = (page - 1) * limit
    rows = list(await session.scalars(stmt.offset(offset).limit(limit + 1)))
    has_more = len(rows) > limit
    if not has_more and (rows or page == 1):
        # The last page: the total is known without counting.
        return Page(items=rows, total=offset + len(rows), page=page, limit=limit)
    bounded = (
        stmt.order_by(None).with_only_columns(literal_column("1"), maintain_column_froms=True).limit(cap + 1).subquery()
    )
    counted = int(await session.scalar(select(func.count()).select_from(bounded)) or 0)
    if counted <= cap:
        return Page(items=rows[:limit], total=counted, page=page, limit=limit, has_more=has_more)
    estimate = await _estimated_rows(session, stmt)
    total = max(estimate or 0, counted, offset + len(rows))
    return Page(items=rows[:limit], total=total, page=page, limit=limit, total_exact=False, has_more=has_more)


async def _estimated_rows(session: AsyncSession, stmt: Select[Any]) -> int | None:
    """The planner's row estimate for ``stmt`` (PostgreSQL); None where there is none."""
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return None
    compiled = (
        stmt.order_by(None)
        .with_only_columns(literal_column("1"), maintain_column_froms=True)
        .compile(dialect=bind.dialect, compile_kwargs={"render_postcompile": True})  # IN lists expanded
    )
    conn = await session.connection()
    try:
        async with conn.begin_nested():
            result = await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params)
            plan = result.scalar()
    except DBAPIError:
        return None  # an estimate is a nicety: the exact count up to the cap still stands
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"]) if plan else None


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
