"""Helpers shared by the services: pagination and the actor of a request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select
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


async def paginate(session: AsyncSession, stmt: Select[Any], *, page: int, limit: int) -> Page[Any]:
    total = await session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    rows = await session.scalars(stmt.offset((page - 1) * limit).limit(limit))
    return Page(items=list(rows), total=int(total or 0), page=page, limit=limit)


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
