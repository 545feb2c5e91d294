"""Preview of a cron schedule: the next times it would fire, before a job is saved.

The console shows this under the schedule field of the job form; it answers from the same
``registry.manifest.cron`` rules the schedule manager uses, so the preview is what Temporal runs.
"""

from __future__ import annotations

from datetime import datetime

from registry.errors import InvalidInput
from registry.manifest.cron import next_runs, validate_cron, validate_timezone

MAX_PREVIEW = 20


def preview(*, cron: str, timezone: str = "UTC", count: int = 5, after: datetime | None = None) -> list[datetime]:
    """The next ``count`` fire times of ``cron`` in ``timezone``; ``InvalidInput`` names the bad field."""
    problem = validate_cron(cron)
    if problem is not None:
        raise InvalidInput(problem, details=[{"loc": ["query", "cron"], "msg": problem}])
    if not validate_timezone(timezone):
        message = f"unknown timezone: {timezone[:64]!r}"
        raise InvalidInput(message, details=[{"loc": ["query", "timezone"], "msg": message}])
    try:
        return next_runs(cron, timezone, count, after)
    except ValueError as exc:
        raise InvalidInput(str(exc), details=[{"loc": ["query", "cron"], "msg": str(exc)}]) from exc
