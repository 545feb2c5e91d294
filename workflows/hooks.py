"""Module lifecycle hooks backed by Temporal schedules (the registry's LifecycleHooks), and the
signals that resolve the incidents of alert rules a transition removed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.service import RPCError, RPCStatusCode

from activities.alerts_types import Clear
from registry.models import Module
from registry.services.jobs import jobs_of_module
from registry.services.runs import job_type_definition, steps_of
from workflows.schedules import ScheduleManager


class ScheduleHooks:
    """Enable resumes the module's job schedules, disable pauses them, uninstall removes them,
    upgrade rebuilds them (job types may have changed)."""

    def __init__(self, manager: Callable[[], Awaitable[ScheduleManager]]) -> None:
        self._manager = manager

    async def _apply_all(self, session: AsyncSession, module: Module) -> None:
        jobs = await jobs_of_module(session=session, module_id=module.id)
        if not jobs:
            return  # nothing scheduled: don't even need Temporal
        manager = await self._manager()
        for job in jobs:
            definition = job_type_definition(module.manifest, job.job_type)
            steps = len(steps_of(definition, module.name, job.job_type)) if definition else 1
            if definition is None:
                await manager.delete(job.id)
                continue
            await manager.apply(job, module, steps)

    async def module_enabled(self, *, session: AsyncSession, module: Module) -> None:
        await self._apply_all(session, module)

    async def module_disabled(self, *, session: AsyncSession, module: Module) -> None:
        await self._apply_all(session, module)

    async def module_uninstalled(self, *, session: AsyncSession, module: Module) -> None:
        await self._apply_all(session, module)

    async def module_upgraded(self, *, session: AsyncSession, module: Module, previous_version: str) -> None:
        await self._apply_all(session, module)

    async def incidents_orphaned(self, *, session: AsyncSession, workflow_ids: list[str], reason: str) -> None:
        # A signal, not the resolve update: it needs no worker to be accepted, so the transition
        # doesn't wait on one; the workflow resolves the incident (note: reason) when it runs.
        client = (await self._manager()).client
        clear = Clear(at=datetime.now(UTC).isoformat(), reason=reason, final=True)
        for workflow_id in workflow_ids:
            try:
                await client.get_workflow_handle(workflow_id).signal("clear", clear)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:  # closed meanwhile: nothing to resolve
                    raise
