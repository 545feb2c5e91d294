"""Schema of the schedule preview (``GET /api/v1/schedule-preview``)."""

from __future__ import annotations

from datetime import datetime

from api.schemas.common import Schema


class SchedulePreview(Schema):
    cron: str
    timezone: str
    next_runs: list[datetime]


class UpcomingRunRead(Schema):
    job_id: str
    job_name: str
    module: str
    job_type: str
    at: datetime
