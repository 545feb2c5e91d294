"""The audit log: who did what to which target, with which outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.models import AuditLog
from registry.services.common import Actor, Page, paginate


def record(
    *,
    session: AsyncSession,
    actor: Actor,
    action: str,
    target_type: str | None = None,
    target_id: str | None = None,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> AuditLog:
    row = AuditLog(
        actor_id=actor.user_id,
        actor_email=actor.email,
        action=action,
        target_type=target_type,
        target_id=target_id,
        outcome=outcome,
        ip=actor.ip,
        request_id=actor.request_id,
        details=details,
    )
    session.add(row)
    return row


async def insert(
    *,
    session: AsyncSession,
    actor: Actor,
    action: str,
    target_type: str | None = None,
    target_id: str | None = None,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> None:
    """:func:`record` as one INSERT with no ORM object (a hot path: every manual run writes one)."""
    await session.execute(
        _INSERT,
        {
            "actor_id": actor.user_id,
            "actor_email": actor.email,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "outcome": outcome,
            "ip": actor.ip,
            "request_id": actor.request_id,
            "details": details,
        },
    )


_INSERT = cast(Table, AuditLog.__table__).insert()


async def list_entries(
    *,
    session: AsyncSession,
    page: int,
    limit: int,
    actor_id: str | None = None,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    outcome: str | None = None,
    request_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[AuditLog]:
    stmt = select(AuditLog).order_by(AuditLog.id.desc())
    if actor_id:
        stmt = stmt.where(AuditLog.actor_id == actor_id)
    if action:
        if action.endswith("*"):
            # autoescape: a % or _ in the filter is a literal character, not a LIKE wildcard.
            stmt = stmt.where(AuditLog.action.startswith(action.rstrip("*"), autoescape=True))
        else:
            stmt = stmt.where(AuditLog.action == action)
    if target_type:
        stmt = stmt.where(AuditLog.target_type == target_type)
    if target_id:
        stmt = stmt.where(AuditLog.target_id == target_id)
    if outcome:
        stmt = stmt.where(AuditLog.outcome == outcome)
    if request_id:
        stmt = stmt.where(AuditLog.request_id == request_id)
    if since:
        stmt = stmt.where(AuditLog.at >= since)
    if until:
        stmt = stmt.where(AuditLog.at < until)
    return await paginate(session, stmt, page=page, limit=limit)
