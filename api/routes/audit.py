"""The audit log, for admins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import PageDep, Requires, SessionDep
from api.schemas.audit import AuditRead
from api.schemas.common import ERROR_RESPONSES, Page
from registry.services import audit
from registry.services.common import Actor

router = APIRouter(prefix="/audit", tags=["audit"], responses=ERROR_RESPONSES)


@router.get("", response_model=Page[AuditRead])
async def list_audit(
    session: SessionDep,
    paging: PageDep,
    actor_id: str | None = None,
    action: Annotated[str | None, Query(max_length=64, description="Exact action, or a prefix ending in *")] = None,
    target_type: str | None = None,
    target_id: str | None = None,
    outcome: Annotated[str | None, Query(pattern="^(success|failure)$")] = None,
    request_id: Annotated[str | None, Query(max_length=64, description="The X-Request-ID of the call")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    _: Actor = Requires("audit:read"),
) -> Page[AuditRead]:
    page, limit = paging
    result = await audit.list_entries(
        session=session,
        page=page,
        limit=limit,
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        outcome=outcome,
        request_id=request_id,
        since=since,
        until=until,
    )
    return Page(items=[AuditRead.model_validate(r) for r in result.items], total=result.total, page=page, limit=limit)
