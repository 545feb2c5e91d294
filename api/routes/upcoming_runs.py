"""The next scheduled runs across the registry's jobs (the dashboard's and the jobs list's "next run")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Requires, SessionDep
from api.schemas.common import ERROR_RESPONSES
from api.schemas.schedule_preview import UpcomingRunRead
from registry.services import schedule_preview
from registry.services.common import Actor

router = APIRouter(prefix="/upcoming-runs", tags=["jobs"], responses=ERROR_RESPONSES)


@router.get("", response_model=list[UpcomingRunRead])
async def list_upcoming_runs(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 10,
    module: Annotated[str | None, Query(max_length=50)] = None,
    _: Actor = Requires("jobs:read"),
) -> list[UpcomingRunRead]:
    """Each enabled scheduled job's next fire time (enabled modules only), soonest first."""
    runs = await schedule_preview.upcoming_runs(session=session, limit=limit, module=module)
    return [UpcomingRunRead.model_validate(run, from_attributes=True) for run in runs]
