"""Preview of a cron schedule (the next times it would fire, before a job is saved) and the next
scheduled runs across the registry's jobs.

The console shows this under the schedule field of the job form; it answers from the same
``registry.manifest.cron`` rules the schedule manager uses, with the job's daylight-saving policy
applied (``registry.services.slots``; default ``shift`` / ``first``), so the preview is what runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.errors import InvalidInput
from registry.manifest.cron import validate_cron, validate_timezone
from registry.models import Job, Module, ModuleStatus
from registry.services.slots import check_dst, next_slots

MAX_PREVIEW = 20
#: Scheduled jobs looked at by ``upcoming_runs`` (a registry has tens to hundreds).
MAX_SCANNED = 2000


def preview(
    *,
    cron: str,
    timezone: str = "UTC",
    count: int = 5,
    after: datetime | None = None,
    dst: dict[str, Any] | None = None,
) -> list[datetime]:
    """The next ``count`` fire times of ``cron`` in ``timezone`` under the DST policy ``dst``
    (default shift / first); ``InvalidInput`` names the bad field."""
    policy = check_dst(dst, ("query", "dst"))
    problem = validate_cron(cron)
    if problem is not None:
        raise InvalidInput(problem, details=[{"loc": ["query", "cron"], "msg": problem}])
    if not validate_timezone(timezone):
        message = f"unknown timezone: {timezone[:64]!r}"
        raise InvalidInput(message, details=[{"loc": ["query", "timezone"], "msg": message}])
    try:
        zone = ZoneInfo(timezone)
        if after is not None and after.tzinfo is None:
            after = after.replace(tzinfo=zone)
        return [s.at.astimezone(zone) for s in next_slots(cron, timezone, count, after, policy)]
    except ValueError as exc:
        raise InvalidInput(str(exc), details=[{"loc": ["query", "cron"], "msg": str(exc)}]) from exc


@dataclass(frozen=True)
class UpcomingRun:
    job_id: str
    job_name: str
    module: str
    job_type: str
    at: datetime


async def upcoming_runs(
    *, session: AsyncSession, limit: int = 10, module: str | None = None, scan: int = MAX_SCANNED
) -> list[UpcomingRun]:
    """The next fire time of each enabled scheduled job (of ``module``), soonest first.

    Computed from the registry's cron and timezone, the same rules the schedule manager gives
    Temporal; jobs whose module is not ENABLED are left out (their runs would be skipped).
    """
    stmt = (
        select(
            Job.id,
            Job.name,
            Job.module_name,
            Job.job_type,
            Job.schedule,
            Job.timezone,
            Job.dst_nonexistent,
            Job.dst_ambiguous,
        )
        .join(Module, Module.id == Job.module_id)
        .where(
            Job.enabled.is_(True),
            Job.schedule.is_not(None),
            Job.schedule_paused.is_(False),
            Module.status == ModuleStatus.ENABLED.value,
        )
        .order_by(Job.id)
        .limit(scan)
    )
    if module:
        stmt = stmt.where(Job.module_name == module)
    runs: list[UpcomingRun] = []
    for job_id, name, module_name, job_type, cron, tz, nonexistent, ambiguous in (await session.execute(stmt)).all():
        if not cron:
            continue
        try:
            at = next_slots(cron, tz, 1, dst={"nonexistent": nonexistent, "ambiguous": ambiguous})
        except (ValueError, KeyError):
            continue
        if at:
            runs.append(UpcomingRun(job_id, name, module_name, job_type, at[0].at.astimezone(ZoneInfo(tz))))
    runs.sort(key=lambda r: r.at)
    return runs[:limit]
