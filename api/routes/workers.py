"""``GET /workers``: who polls the platform's task queues; and the ``waiting`` field of an execution
(workflows/waiting.py reads both from Temporal)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import Requires, SessionDep, StateDep
from api.schemas.common import ERROR_RESPONSES
from api.schemas.observability import WaitingRead, WorkerRead, WorkersRead
from api.state import AppState
from registry.models import Execution, ExecutionStatus, Job, Module
from registry.services.common import Actor
from workflows import waiting

log = logging.getLogger(__name__)

router = APIRouter(prefix="/workers", tags=["workers"], responses=ERROR_RESPONSES)


@router.get("", response_model=WorkersRead)
async def list_workers(session: SessionDep, state: StateDep, _: Actor = Requires("executions:read")) -> WorkersRead:
    """Workers polling the platform's task queue and the task queues modules ask for, with their last
    poll (workers that stopped polling more than 90 s ago are left out)."""
    queues = await _task_queues(session, state.settings.task_queue)
    found = await waiting.workers(await state.temporal(), queues)
    return WorkersRead(
        task_queues=queues,
        workers=[
            WorkerRead(
                identity=p.identity,
                task_queue=queue,
                task_types=sorted(p.task_types),  # type: ignore[arg-type]
                last_seen=p.last_seen,
                rate_per_second=p.rate_per_second,
            )
            for queue, pollers in found.items()
            for p in pollers
        ],
    )


async def _task_queues(session: AsyncSession, default: str) -> list[str]:
    queues = {default}
    for manifest in await session.scalars(select(Module.manifest)):
        for job in (manifest or {}).get("jobs") or []:
            if isinstance(job, dict) and isinstance(job.get("taskQueue"), str) and job["taskQueue"]:
                queues.add(job["taskQueue"])
    return sorted(queues)


async def waiting_for(state: AppState, session: AsyncSession, row: Execution) -> WaitingRead | None:
    """Why ``row``'s run runs no handler now; None when final or when a step is running."""
    if ExecutionStatus(row.status).is_final:
        return None
    if row.status == ExecutionStatus.RUNNING.value and any(
        isinstance(s, dict) and s.get("status") == "RUNNING" for s in row.steps or []
    ):
        return None
    module = await session.scalar(select(Module.status).where(Module.name == row.module_name))
    job = await session.scalar(select(Job.enabled).where(Job.id == row.job_id)) if row.job_id else None
    try:
        client = await state.temporal()
    except Exception as exc:  # noqa: BLE001 - the reason is that Temporal is down
        return WaitingRead(code="temporal_unavailable", message=str(exc))
    reason = await waiting.waiting_reason(
        client,
        workflow_id=row.workflow_id,
        run_id=row.run_id,
        module=row.module_name,
        module_status=module,
        job_enabled=job,
    )
    if reason is None:
        return None
    return WaitingRead(
        code=reason.code,  # type: ignore[arg-type]
        message=reason.message,
        task_queue=reason.task_queue,
        since=reason.since,
        until=reason.until,
        attempt=reason.attempt,
    )
