"""The next fire times of a cron expression, so a job form can show them before the job is saved."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Requires
from api.schemas.common import ERROR_RESPONSES
from api.schemas.schedule_preview import SchedulePreview
from registry.services import schedule_preview
from registry.services.common import Actor

router = APIRouter(prefix="/schedule-preview", tags=["jobs"], responses=ERROR_RESPONSES)


@router.get("", response_model=SchedulePreview)
async def preview_schedule(
    cron: Annotated[str, Query(min_length=1, max_length=120, description="5 fields, or 6 with seconds first")],
    timezone: Annotated[str, Query(max_length=64, description="IANA timezone")] = "UTC",
    count: Annotated[int, Query(ge=1, le=schedule_preview.MAX_PREVIEW)] = 5,
    _: Actor = Requires("jobs:read"),
) -> SchedulePreview:
    runs = schedule_preview.preview(cron=cron, timezone=timezone, count=count)
    return SchedulePreview(cron=cron, timezone=timezone, next_runs=runs)
