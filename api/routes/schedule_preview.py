"""The next fire times of a cron expression, so a job form can show them before the job is saved."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

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
    dst_nonexistent: Annotated[
        Literal["shift", "skip"], Query(description="A wall time the spring change skips: shift or skip")
    ] = "shift",
    dst_ambiguous: Annotated[
        Literal["first", "both", "skip"], Query(description="A wall time the autumn change repeats: first, both, skip")
    ] = "first",
    after: Annotated[
        datetime | None, Query(description="Preview from this time (default now); naive: in the timezone")
    ] = None,
    _: Actor = Requires("jobs:read"),
) -> SchedulePreview:
    """The next fire times under the job's daylight-saving policy (docs/schedules.md)."""
    dst = {"nonexistent": dst_nonexistent, "ambiguous": dst_ambiguous}
    runs = schedule_preview.preview(cron=cron, timezone=timezone, count=count, dst=dst, after=after)
    return SchedulePreview(cron=cron, timezone=timezone, next_runs=runs)
