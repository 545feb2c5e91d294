"""Backfill: run a job's past slots again, with provenance (docs/schedules.md).

``plan`` answers which slots of [from, to) a backfill would run: the schedule's slots under the
job's DST policy, less the slots that already have a run. ``start`` records a :class:`Backfill` and
starts its driver (the maintenance workflow with the task ``backfill:<id>``); the driver calls
:func:`run_batch` until it answers ``done``, sleeping between batches, so a year of minutely slots
never floods the workers. Each slot runs as ``sched-<job>-<nominal time>`` with trigger
``backfill``: the same workflow id the schedule would have given it, so a slot never runs twice.
``cancel`` stops the rest, and cancels the backfill's runs still going.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.db import unit_of_work
from registry.errors import Conflict, InvalidInput, NotFound
from registry.models import Backfill, Execution, ExecutionStatus, Job, Module, ModuleStatus
from registry.services import audit, slots
from registry.services.common import Actor
from registry.services.runs import execution_id_for, job_type_definition, steps_of

#: The maintenance workflow's task prefix of a backfill driver.
TASK_PREFIX = "backfill:"
OVERLAPS = ("skip", "buffer_one", "allow_all", "cancel_other")


def driver_workflow_id(backfill_id: str) -> str:
    return f"autoplat-backfill-{backfill_id}"


@dataclass
class Plan:
    slots: list[slots.Slot]
    already_run: int
    total: int


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def plan(
    *, session: AsyncSession, job: Job, start: datetime, end: datetime, max_slots: int, now: datetime | None = None
) -> Plan:
    """The slots a backfill of [start, end) runs; 422 for a range reversed, in the future or too large."""
    now = now or datetime.now(UTC)
    start, end = _aware(start), _aware(end)
    if not job.schedule:
        raise Conflict(f"job {job.name} has no schedule to backfill", details={"current_state": "unscheduled"})
    if end <= start:
        raise InvalidInput("to must be after from", details=[{"loc": ["body", "to"], "msg": "must be after from"}])
    if end > now:
        raise InvalidInput(
            f"to ({end.isoformat()}) is in the future: a backfill runs past slots only",
            details=[{"loc": ["body", "to"], "msg": "in the future"}],
        )
    found = slots.slots_between(job.schedule, job.timezone, start, end, slots.job_dst(job), limit=max_slots + 1)
    if len(found) > max_slots:
        total = len(
            slots.slots_between(job.schedule, job.timezone, start, end, slots.job_dst(job), limit=10 * max_slots)
        )
        shown = f"{total}" if total <= 10 * max_slots else f"more than {10 * max_slots}"
        raise InvalidInput(
            f"the range holds {shown} slots; a backfill runs at most {max_slots} (AUTOPLAT_BACKFILL_MAX_SLOTS)",
            details=[{"loc": ["body"], "msg": "too many slots", "count": total, "maximum": max_slots}],
        )
    taken = set(
        await session.scalars(
            select(Execution.nominal_at).where(
                Execution.job_id == job.id, Execution.nominal_at >= start, Execution.nominal_at < end
            )
        )
    )
    todo = [s for s in found if s.at not in taken]
    return Plan(slots=todo, already_run=len(found) - len(todo), total=len(found))


async def start(
    *, session: AsyncSession, job: Job, actor: Actor, planned: Plan, start_at: datetime, end_at: datetime, overlap: str
) -> Backfill:
    """Record a backfill of the planned slots (the caller starts its driver after this commits)."""
    module = await session.get(Module, job.module_id)
    if not job.enabled or module is None or module.status != ModuleStatus.ENABLED.value:
        state = (
            "job disabled" if not job.enabled else f"module {job.module_name} {module.status if module else 'missing'}"
        )
        raise Conflict(
            f"cannot backfill {job.name}: {state} (its runs would be skipped); enable it first",
            details={"current_state": "disabled"},
        )
    if overlap not in OVERLAPS:
        raise InvalidInput(
            f"overlap must be one of {', '.join(OVERLAPS)}",
            details=[{"loc": ["body", "overlap"], "msg": f"one of {list(OVERLAPS)}"}],
        )
    row = Backfill(
        job_id=job.id,
        from_at=_aware(start_at),
        to_at=_aware(end_at),
        overlap=overlap,
        status="running",
        slots=[s.at.isoformat() for s in planned.slots],
        started=0,
        workflow_id="",
        requested_by=actor.email or actor.user_id,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    await session.flush()
    row.workflow_id = driver_workflow_id(row.id)
    audit.record(
        session=session,
        actor=actor,
        action="job.backfill",
        target_type="job",
        target_id=job.id,
        details={
            "backfill_id": row.id,
            "from": row.from_at.isoformat(),
            "to": row.to_at.isoformat(),
            "slots": len(planned.slots),
            "already_run": planned.already_run,
            "overlap": overlap,
        },
    )
    return row


async def get(*, session: AsyncSession, job_id: str, backfill_id: str) -> Backfill:
    row = await session.get(Backfill, backfill_id)
    if row is None or row.job_id != job_id:
        raise NotFound(f"backfill {backfill_id} of job {job_id} not found")
    return row


async def cancel(*, session: AsyncSession, job_id: str, backfill_id: str, actor: Actor) -> tuple[Backfill, list[str]]:
    """Stop a backfill: no further slot starts; answers the workflow ids of its runs still going
    (the caller cancels them)."""
    row = await get(session=session, job_id=job_id, backfill_id=backfill_id)
    running: list[str] = []
    if row.status == "running":
        row.status = "cancelled"
        row.finished_at = datetime.now(UTC)
        nominal = [datetime.fromisoformat(s) for s in row.slots[: row.started]]
        if nominal:
            running = list(
                await session.scalars(
                    select(Execution.workflow_id).where(
                        Execution.job_id == job_id,
                        Execution.trigger == "backfill",
                        Execution.nominal_at.in_(nominal),
                        Execution.status.in_([ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value]),
                    )
                )
            )
        audit.record(
            session=session,
            actor=actor,
            action="job.backfill_cancel",
            target_type="job",
            target_id=job_id,
            details={"backfill_id": row.id, "started": row.started, "slots": len(row.slots)},
        )
    return row, running


def as_dict(row: Backfill, *, preview: int = 100) -> dict[str, Any]:
    return {
        "id": row.id,
        "job_id": row.job_id,
        "status": row.status,
        "from": row.from_at,
        "to": row.to_at,
        "overlap": row.overlap,
        "count": len(row.slots),
        "started": row.started,
        "slots": row.slots[:preview],
        "workflow_id": row.workflow_id,
        "requested_by": row.requested_by,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
    }


# --- the driver's batch (an activity of the maintenance worker) -----------------------------------


async def run_batch(
    *, client: Any, sessions: async_sessionmaker[AsyncSession], settings: Any, backfill_id: str
) -> dict[str, Any]:
    """Start the next slots of a backfill: up to ``backfill_batch`` (``allow_all``), or one when no
    run of the job is going (any other overlap: the backfill runs one slot at a time). Never more
    than ``backfill_max_running`` of the backfill's runs at once. Answers ``done`` and how long the
    driver waits before the next batch."""
    from temporalio.common import WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from activities.types import JobInput
    from workflows.schedules import search_attributes, workflow_timeout

    pause = float(settings.backfill_interval_seconds)
    async with sessions() as session:
        row = await session.get(Backfill, backfill_id)
        if row is None or row.status != "running":
            return {"done": True, "status": row.status if row else "missing"}
        job = await session.get(Job, row.job_id)
        module = await session.get(Module, job.module_id) if job is not None else None
        going = await session.scalar(
            select(Execution.id)
            .where(
                Execution.job_id == row.job_id,
                Execution.status.in_([ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value]),
            )
            .limit(1)
        )
        running = len(
            list(
                await session.scalars(
                    select(Execution.id)
                    .where(
                        Execution.job_id == row.job_id,
                        Execution.trigger == "backfill",
                        Execution.status.in_([ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value]),
                    )
                    .limit(int(settings.backfill_max_running))
                )
            )
        )
        todo = list(row.slots[row.started :])
        overlap = row.overlap
        started = row.started
    if job is None or module is None:
        await _finish(sessions, backfill_id, "cancelled")
        return {"done": True, "status": "cancelled", "reason": "the job or its module is gone"}
    if not todo:
        await _finish(sessions, backfill_id, "completed")
        return {"done": True, "status": "completed"}
    if overlap == "allow_all":
        room = max(int(settings.backfill_max_running) - running, 0)
        batch = todo[: min(int(settings.backfill_batch), room)]
    else:
        batch = todo[:1] if going is None else []
    definition = job_type_definition(module.manifest, job.job_type) or {}
    steps = len(steps_of(definition, module.name, job.job_type)) if definition else 1
    for stamp in batch:
        nominal = datetime.fromisoformat(stamp)
        workflow_id = slots.run_workflow_id(job.id, nominal)
        try:
            await client.start_workflow(
                f"{job.module_name}.{job.job_type}",
                JobInput(job_id=job.id, trigger="backfill"),
                id=workflow_id,
                task_queue=settings.task_queue,
                execution_timeout=workflow_timeout(job, steps),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=search_attributes(job.module_name, job.id, "backfill"),
            )
        except WorkflowAlreadyStartedError:
            pass  # the slot has its run (the schedule or an earlier attempt of this batch)
        started += 1
        async with unit_of_work(sessions) as session:
            fresh = await session.get(Backfill, backfill_id, with_for_update=True)
            if fresh is None or fresh.status != "running":
                return {"done": True, "status": fresh.status if fresh else "missing"}
            fresh.started = started
            await slots.record_slot(
                session=session,
                job_id=job.id,
                nominal_at=nominal,
                outcome="ran",
                reason=f"backfill {backfill_id}",
                execution_id=execution_id_for(workflow_id),
            )
    return {"done": False, "started": started, "pause_seconds": pause}


async def _finish(sessions: async_sessionmaker[AsyncSession], backfill_id: str, status: str) -> None:
    async with unit_of_work(sessions) as session:
        row = await session.get(Backfill, backfill_id, with_for_update=True)
        if row is not None and row.status == "running":
            row.status = status
            row.finished_at = datetime.now(UTC)
