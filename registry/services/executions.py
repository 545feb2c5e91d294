"""Reading the execution mirror: filters, stats and logs, answered from the registry's indexes."""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from registry.errors import Conflict, NotFound
from registry.models import Artifact, Execution, ExecutionCount, ExecutionStatus
from registry.services.common import Page, paginate_large

SORTS = {
    "created_at": Execution.created_at,
    "started_at": Execution.started_at,
    "finished_at": Execution.finished_at,
    "duration_ms": Execution.duration_ms,
    "status": Execution.status,
}


async def get_execution(*, session: AsyncSession, execution_id: str) -> Execution:
    execution = await session.get(Execution, execution_id)
    if execution is None:
        raise NotFound(f"execution {execution_id} not found")
    return execution


def _filtered(
    stmt: Any,
    *,
    job_id: str | None = None,
    module: str | None = None,
    job_type: str | None = None,
    status: str | None = None,
    trigger: str | None = None,
    event_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Select[Any]:
    if job_id:
        stmt = stmt.where(Execution.job_id == job_id)
    if module:
        stmt = stmt.where(Execution.module_name == module)
    if job_type:
        stmt = stmt.where(Execution.job_type == job_type)
    if status:
        statuses = [s.strip().upper() for s in status.split(",") if s.strip()]
        stmt = stmt.where(Execution.status.in_(statuses))
    if trigger:
        stmt = stmt.where(Execution.trigger == trigger)
    if event_id:
        stmt = stmt.where(Execution.event_id == event_id)
    if since:
        stmt = stmt.where(Execution.created_at >= since)
    if until:
        stmt = stmt.where(Execution.created_at < until)
    return stmt


#: Columns a list never needs; the JSON ones are read only when asked.
_HEAVY = {"steps": Execution.steps, "config": Execution.config, "result": Execution.result, "error": Execution.error}


async def list_executions(
    *,
    session: AsyncSession,
    page: int,
    limit: int,
    sort: str = "-created_at",
    heavy: Collection[str] = tuple(_HEAVY),
    **filters: Any,
) -> Page[Execution]:
    """A page of executions, newest first by default. Logs are never read; the JSON columns only
    those in ``heavy``. Counting stops at 10,000 matching rows (``paginate_large``)."""
    descending = sort.startswith("-")
    column = SORTS.get(sort.lstrip("-+"), Execution.created_at)
    order = column.desc() if descending else column.asc()
    skipped = [Execution.logs, *(c for name, c in _HEAVY.items() if name not in heavy)]
    stmt = _filtered(select(Execution).options(*(defer(c, raiseload=True) for c in skipped)), **filters)
    return await paginate_large(session, stmt.order_by(order, Execution.id), page=page, limit=limit)


#: p95 duration is exact over this many most recent timed runs matching the filter.
P95_WINDOW = 1_000


def _utc(at: datetime | None) -> datetime | None:
    """Naive datetimes are UTC, as everywhere in the API."""
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _hour_floor(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _hour_ceil(at: datetime) -> datetime:
    floor = _hour_floor(at)
    return floor if floor == at else floor + timedelta(hours=1)


async def stats(
    *,
    session: AsyncSession,
    job_id: str | None = None,
    module: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """Counts by status, success rate, mean and p95 duration, overall and per job.

    Whole hours come from ``execution_counts`` (kept by triggers), the partial hours at the edges of
    ``[since, until)`` from ``executions`` (at most two hours of rows): exact counts and means at any
    history size. The p95 is exact over the ``P95_WINDOW`` most recent timed runs in the range."""
    since, until = _utc(since), _utc(until)
    groups: dict[tuple[str | None, str, str, str], list[int]] = {}

    def add(job: str | None, module_name: str, job_type: str, status: str, n: int, dn: int, ds: int) -> None:
        entry = groups.setdefault((job or None, module_name, job_type, status), [0, 0, 0])
        entry[0] += int(n)
        entry[1] += int(dn or 0)
        entry[2] += int(ds or 0)

    # Whole hours: [first_hour, last_hour).
    first_hour = _hour_ceil(since) if since else None
    last_hour = _hour_floor(until) if until else None
    if first_hour is None or last_hour is None or first_hour < last_hour:
        counted = select(
            ExecutionCount.job_key,
            ExecutionCount.module_name,
            ExecutionCount.job_type,
            ExecutionCount.status,
            func.sum(ExecutionCount.n),
            func.sum(ExecutionCount.duration_n),
            func.sum(ExecutionCount.duration_sum),
        ).group_by(ExecutionCount.job_key, ExecutionCount.module_name, ExecutionCount.job_type, ExecutionCount.status)
        if job_id:
            counted = counted.where(ExecutionCount.job_key == job_id)
        if module:
            counted = counted.where(ExecutionCount.module_name == module)
        if first_hour is not None:
            counted = counted.where(ExecutionCount.hour >= first_hour)
        if last_hour is not None:
            counted = counted.where(ExecutionCount.hour < last_hour)
        for row in (await session.execute(counted)).all():
            add(*row)
        edges = [(since, first_hour), (last_hour, until)] if first_hour and last_hour else []
        if since and not last_hour:
            edges = [(since, first_hour)]
        if until and not first_hour:
            edges = [(last_hour, until)]
    else:
        edges = [(since, until)]  # the range lies within one hour
    for lo, hi in edges:
        if lo is None or hi is None or lo >= hi:
            continue
        raw = _filtered(
            select(
                Execution.job_id,
                Execution.module_name,
                Execution.job_type,
                Execution.status,
                func.count(),
                func.count(Execution.duration_ms),
                func.coalesce(func.sum(Execution.duration_ms), 0),
            ),
            job_id=job_id,
            module=module,
            since=lo,
            until=hi,
        ).group_by(Execution.job_id, Execution.module_name, Execution.job_type, Execution.status)
        for row in (await session.execute(raw)).all():
            add(*row)

    counts: dict[str, int] = {}
    timed_n = timed_sum = 0
    per_job: dict[str, dict[str, Any]] = {}
    for (job, module_name, job_type, status), (n, dn, ds) in groups.items():
        if n <= 0:
            continue
        counts[status] = counts.get(status, 0) + n
        timed_n += dn
        timed_sum += ds
        key = job or f"{module_name}.{job_type}"
        entry = per_job.setdefault(
            key, {"job_id": job, "module": module_name, "job_type": job_type, "total": 0, "by_status": {}}
        )
        entry["total"] += n
        entry["by_status"][status] = entry["by_status"].get(status, 0) + n
    for entry in per_job.values():
        entry["success_rate"] = _rate(entry["by_status"])
    p95, sample = await _p95(session, job_id=job_id, module=module, since=since, until=until)
    return {
        "total": sum(counts.values()),
        "by_status": {s.value: counts.get(s.value, 0) for s in ExecutionStatus},
        "success_rate": _rate(counts),
        "mean_duration_ms": timed_sum / timed_n if timed_n else None,
        "p95_duration_ms": p95,
        "p95_sample": sample,
        "per_job": sorted(per_job.values(), key=lambda e: -e["total"]),
    }


async def _p95(session: AsyncSession, **filters: Any) -> tuple[float | None, int]:
    """Nearest-rank p95 of the durations of the most recent ``P95_WINDOW`` timed runs."""
    recent = (
        _filtered(select(Execution.duration_ms.label("d")), **filters)
        .where(Execution.duration_ms.is_not(None))
        .order_by(Execution.created_at.desc())
        .limit(P95_WINDOW)
        .subquery()
    )
    n = int(await session.scalar(select(func.count()).select_from(recent)) or 0)
    if not n:
        return None, 0
    rank = max(0, math.ceil(0.95 * n) - 1)
    value = await session.scalar(select(recent.c.d).order_by(recent.c.d).offset(rank).limit(1))
    return (float(value) if value is not None else None), n


def _rate(counts: dict[str, int]) -> float | None:
    finished = sum(n for s, n in counts.items() if s in ("COMPLETED", "FAILED", "TIMED_OUT"))
    if not finished:
        return None
    return round(counts.get("COMPLETED", 0) / finished, 4)


def parse_logs(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            entries.append({"level": "INFO", "message": line})
    return entries


# --- deleting runs: one by an admin, old ones by the maintenance schedule --------------------------

#: Statuses after which a run can be deleted (a running one must be cancelled first).
_FINAL = tuple(s.value for s in ExecutionStatus if s.is_final)


async def _drop(session: AsyncSession, ids: list[str]) -> list[str]:
    """Delete the runs and their artifacts' rows; returns the artifact files to remove once committed."""
    files = list(
        await session.scalars(
            select(Artifact.path).where(
                Artifact.execution_id.in_(ids), Artifact.storage == "fs", Artifact.path.is_not(None)
            )
        )
    )
    await session.execute(delete(Artifact).where(Artifact.execution_id.in_(ids)))
    await session.execute(delete(Execution).where(Execution.id.in_(ids)))
    return [f for f in files if f]


async def delete_execution(*, session: AsyncSession, execution_id: str) -> tuple[Execution, list[str]]:
    """Delete one finished run with its artifacts. Returns the row as it was and the artifact files
    (relative to AUTOPLAT_ARTIFACTS_DIR) to remove after the commit.

    Raises:
        NotFound: no such execution.
        Conflict: the run is not final yet (cancel it, or wait for it to end).
    """
    execution = await session.get(Execution, execution_id, with_for_update=True)
    if execution is None:
        raise NotFound(f"execution {execution_id} not found")
    if execution.status not in _FINAL:
        raise Conflict(
            f"execution {execution_id} is {execution.status}: cancel it or wait until it ends before deleting it",
            details={"current_state": execution.status, "final_states": list(_FINAL)},
        )
    files = await _drop(session, [execution_id])
    session.expunge(execution)
    return execution, files


async def delete_finished_before(
    *, session: AsyncSession, days: int, limit: int = 1000, now: datetime | None = None
) -> tuple[int, list[str]]:
    """Delete up to ``limit`` final runs created more than ``days`` ago (oldest first) with their
    artifacts: one batch of the retention (the caller repeats while a batch is full). Returns the
    count and the artifact files to remove after the commit. Runs not final are never deleted."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    ids = list(
        await session.scalars(
            select(Execution.id)
            .where(Execution.created_at < cutoff, Execution.status.in_(_FINAL))
            .order_by(Execution.created_at)
            .limit(limit)
        )
    )
    if not ids:
        return 0, []
    return len(ids), await _drop(session, ids)
