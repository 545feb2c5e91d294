"""Reading the execution mirror: filters, stats and logs, answered from the registry's indexes."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.errors import NotFound
from registry.models import Execution, ExecutionStatus
from registry.services.common import Page, paginate

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


async def list_executions(
    *, session: AsyncSession, page: int, limit: int, sort: str = "-created_at", **filters: Any
) -> Page[Execution]:
    descending = sort.startswith("-")
    column = SORTS.get(sort.lstrip("-+"), Execution.created_at)
    order = column.desc() if descending else column.asc()
    stmt = _filtered(select(Execution), **filters).order_by(order, Execution.id)
    return await paginate(session, stmt, page=page, limit=limit)


async def stats(*, session: AsyncSession, **filters: Any) -> dict[str, Any]:
    """Counts by status, success rate, mean and p95 duration, overall and per job."""
    counts_stmt = _filtered(select(Execution.status, func.count()), **filters).group_by(Execution.status)
    counts = {status: int(n) for status, n in (await session.execute(counts_stmt)).all()}
    # Aggregates stay in the database: only two numbers come back, whatever the history's size.
    timed = _filtered(select(Execution.duration_ms), **filters).where(Execution.duration_ms.is_not(None))
    sub = timed.subquery()
    n, mean = (await session.execute(select(func.count(), func.avg(sub.c.duration_ms)))).one()
    p95: float | None = None
    if n:
        # Nearest rank: the smallest duration with at least 95 % of the runs at or below it.
        rank = max(0, math.ceil(0.95 * int(n)) - 1)
        value = await session.scalar(timed.order_by(Execution.duration_ms).offset(rank).limit(1))
        p95 = float(value) if value is not None else None
    per_job_rows = (
        await session.execute(
            _filtered(
                select(
                    Execution.job_id,
                    Execution.module_name,
                    Execution.job_type,
                    Execution.status,
                    func.count(),
                    func.avg(Execution.duration_ms),
                ),
                **filters,
            ).group_by(Execution.job_id, Execution.module_name, Execution.job_type, Execution.status)
        )
    ).all()
    per_job: dict[str, dict[str, Any]] = {}
    for job_id, module, job_type, status, n, _avg in per_job_rows:
        key = job_id or f"{module}.{job_type}"
        entry = per_job.setdefault(
            key, {"job_id": job_id, "module": module, "job_type": job_type, "total": 0, "by_status": {}}
        )
        entry["total"] += int(n)
        entry["by_status"][status] = int(n)
    for entry in per_job.values():
        entry["success_rate"] = _rate(entry["by_status"])
    return {
        "total": sum(counts.values()),
        "by_status": {s.value: counts.get(s.value, 0) for s in ExecutionStatus},
        "success_rate": _rate(counts),
        "mean_duration_ms": float(mean) if mean is not None else None,
        "p95_duration_ms": p95,
        "per_job": sorted(per_job.values(), key=lambda e: -e["total"]),
    }


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
