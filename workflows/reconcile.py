"""The reconciler and the sweeper: make Temporal match the registry, and the mirror match Temporal.

Reconciler (schedules, both ways): a ``job-*`` schedule with no enabled scheduled job is deleted,
a missing one is created, a stale one (job revision, module version, cron, timezone, DST calendars
or paused state differ) is rebuilt; a paused schedule stays paused (its state is the registry's).
Re-creating a schedule never runs a slot twice: a slot's run has one workflow id and one execution.
Sweeper (executions): a row still PENDING/RUNNING whose workflow has
closed without writing its end (terminated from the Web UI, workflow timeout, worker lost) gets
the status Temporal reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, ScheduleActionStartWorkflow, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from registry.db import unit_of_work
from registry.models import Execution, ExecutionStatus, Job, Module
from registry.services import runs
from registry.settings import Settings
from workflows.schedules import (
    SCHEDULE_PREFIX,
    ScheduleManager,
    desired_state,
    dst_schedule_id,
    dst_spec,
    memo_for,
)

log = logging.getLogger(__name__)


@dataclass
class Report:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"created schedule {s}" for s in self.created]
        out += [f"updated stale schedule {s}" for s in self.updated]
        out += [f"deleted orphaned schedule {s}" for s in self.deleted]
        out += [f"swept execution {s}" for s in self.swept]
        out += [f"error: {e}" for e in self.errors]
        return out

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "swept": self.swept,
            "errors": self.errors,
        }


async def _existing_schedules(client: Client) -> dict[str, Any]:
    found: dict[str, Any] = {}
    async for item in await client.list_schedules():
        if item.id.startswith(SCHEDULE_PREFIX):
            found[item.id] = item
    return found


def _decode_memo(client: Client, value: Any) -> dict[str, Any]:
    if isinstance(value, Payload):
        decoded = client.data_converter.payload_converter.from_payload(value)
        return decoded if isinstance(decoded, dict) else {}
    return value if isinstance(value, dict) else {}


async def reconcile_schedules(
    *, client: Client, sessions: async_sessionmaker[AsyncSession], task_queue: str, report: Report | None = None
) -> Report:
    report = report or Report()
    manager = ScheduleManager(client, task_queue)
    # Schedules first: a job created between the two reads then only looks "missing" (and its
    # create is a harmless update), never "orphaned" (which would delete its fresh schedule).
    existing = await _existing_schedules(client)
    async with sessions() as session:
        jobs = list(await session.scalars(select(Job)))
        modules = {m.name: m for m in await session.scalars(select(Module))}
    wanted: set[str] = set()
    for job in jobs:
        module = modules.get(job.module_name)
        state = desired_state(job, module)
        sid = f"{SCHEDULE_PREFIX}{job.id}"
        if state == "absent":
            continue
        assert module is not None
        wanted.add(sid)
        definition = runs.job_type_definition(module.manifest, job.job_type)
        if definition is None:
            wanted.discard(sid)
            continue
        steps = len(runs.steps_of(definition, module.name, job.job_type))
        plan = dst_spec(job)
        companion = dst_schedule_id(job.id) if plan["exact"] else None
        if companion:
            wanted.add(companion)
        try:
            if sid not in existing or (companion and companion not in existing):
                await manager.apply(job, module, steps)
                report.created.append(sid)
                continue
            desc = await client.get_schedule_handle(sid).describe()
            action = desc.schedule.action
            memo = (
                _decode_memo(client, (action.memo or {}).get("autoplat_schedule"))
                if isinstance(action, ScheduleActionStartWorkflow)
                else {}
            )
            # Paused state is the registry's (module status, POST /jobs/{id}/pause): a schedule
            # paused or resumed around the API is put back.
            stale = (
                memo != memo_for(job, module, plan)
                or desc.schedule.state.paused != (state == "paused")
                or (isinstance(action, ScheduleActionStartWorkflow) and action.task_queue != task_queue)
            )
            if stale:
                await manager.apply(job, module, steps)
                report.updated.append(sid)
        except Exception as exc:  # noqa: BLE001 - one bad schedule must not stop the others
            report.errors.append(f"{sid}: {exc}")
    for sid in existing:
        if sid not in wanted:
            try:
                await client.get_schedule_handle(sid).delete()
                report.deleted.append(sid)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    report.errors.append(f"{sid}: {exc.message}")
    return report


CLOSED_STATUS = {
    WorkflowExecutionStatus.COMPLETED: ExecutionStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED: ExecutionStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: ExecutionStatus.CANCELLED,
    WorkflowExecutionStatus.TERMINATED: ExecutionStatus.CANCELLED,
    WorkflowExecutionStatus.TIMED_OUT: ExecutionStatus.TIMED_OUT,
    WorkflowExecutionStatus.CONTINUED_AS_NEW: ExecutionStatus.FAILED,
}


async def sweep_executions(
    *,
    client: Client,
    sessions: async_sessionmaker[AsyncSession],
    older_than: timedelta = timedelta(seconds=30),
    report: Report | None = None,
    limit: int = 500,
) -> Report:
    """Close mirror rows whose workflow ended without writing its end."""
    report = report or Report()
    cutoff = datetime.now(UTC) - older_than
    async with sessions() as session:
        rows = list(
            await session.scalars(
                select(Execution)
                .where(
                    Execution.status.in_([ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value]),
                    Execution.created_at < cutoff,
                )
                .order_by(Execution.created_at)
                .limit(limit)
            )
        )
    for row in rows:
        try:
            desc = await client.get_workflow_handle(row.workflow_id).describe()
            temporal_status = desc.status
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                report.errors.append(f"{row.id}: {exc.message}")
                continue
            temporal_status = None
        if temporal_status == WorkflowExecutionStatus.RUNNING:
            continue
        status = CLOSED_STATUS.get(temporal_status) if temporal_status else ExecutionStatus.FAILED
        reason = (
            f"workflow {temporal_status.name.lower()} outside the platform"
            if temporal_status
            else "workflow not found in Temporal (never started or past retention)"
        )
        async with unit_of_work(sessions) as session:
            fresh = await session.get(Execution, row.id, with_for_update=True)
            if fresh is None:
                continue
            changed = runs.finish(
                session=session,
                execution=fresh,
                status=status or ExecutionStatus.FAILED,
                error={"type": "Swept", "message": reason},
                reason=reason,
            )
        if changed:
            report.swept.append(f"{row.id} -> {(status or ExecutionStatus.FAILED).value} ({reason})")
    return report


async def reconcile_once(settings: Settings) -> Report:
    """Entry point of ``autoplat reconcile``: schedules and sweeper, once."""
    from registry.db import create_engine, create_session_factory
    from workflows.client import connect

    client = await connect(settings)
    engine = create_engine(settings.effective_database_url)
    try:
        sessions = create_session_factory(engine)
        report = await reconcile_schedules(client=client, sessions=sessions, task_queue=settings.task_queue)
        await sweep_executions(client=client, sessions=sessions, report=report)
        return report
    finally:
        await engine.dispose()


async def settle_ledgers(*, sessions: async_sessionmaker[AsyncSession], report: Report | None = None) -> int:
    """Settle the slot ledger of every scheduled job (docs/schedules.md): each slot past its
    catch-up window gets its outcome once, and ``schedule.missed`` / ``schedule.skipped`` events
    are recorded for the ones that did not run. One transaction per job. Disabled jobs and paused
    schedules are left for their enable / resume (or a read of their ledger), which settles their
    quiet time at once: one ``schedule.skipped`` event, not one per maintenance run."""
    from registry.services.slots import settle

    async with sessions() as session:
        job_ids = list(
            await session.scalars(
                select(Job.id).where(Job.schedule.is_not(None), Job.enabled.is_(True), Job.schedule_paused.is_(False))
            )
        )
    stored = 0
    for job_id in job_ids:
        try:
            async with unit_of_work(sessions) as session:
                job = await session.get(Job, job_id)
                if job is None:
                    continue
                module = await session.get(Module, job.module_id)
                stored += await settle(session=session, job=job, module=module)
        except Exception as exc:  # noqa: BLE001 - one job's ledger must not stop the others
            if report is not None:
                report.errors.append(f"slots of {job_id}: {exc}")
    return stored
