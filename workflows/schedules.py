"""Temporal Schedules of jobs: one ``job-<job id>`` schedule per enabled, scheduled job.

The registry is the source of truth: a schedule exists iff its job is enabled and has a cron;
it is paused iff the job's module is not ENABLED. The schedule's memo carries the job revision
and module version it was built from, so the reconciler can tell a stale schedule from a good one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from activities.types import INFRA_ATTEMPTS, JobInput
from registry.manifest import to_temporal_cron
from registry.models import Job, Module, ModuleStatus

log = logging.getLogger(__name__)

SCHEDULE_PREFIX = "job-"
OVERLAP = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE,
    "allow_all": ScheduleOverlapPolicy.ALLOW_ALL,
    "cancel_other": ScheduleOverlapPolicy.CANCEL_OTHER,
}
MODULE_KEY = SearchAttributeKey.for_keyword("AutoplatModule")
JOB_KEY = SearchAttributeKey.for_keyword("AutoplatJobId")
TRIGGER_KEY = SearchAttributeKey.for_keyword("AutoplatTrigger")
EXECUTION_KEY = SearchAttributeKey.for_keyword("AutoplatExecutionId")


def schedule_id(job_id: str) -> str:
    return f"{SCHEDULE_PREFIX}{job_id}"


def search_attributes(
    module: str, job_id: str | None, trigger: str, execution_id: str | None = None
) -> TypedSearchAttributes:
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(MODULE_KEY, module),
        SearchAttributePair(TRIGGER_KEY, trigger),
    ]
    if job_id:
        pairs.append(SearchAttributePair(JOB_KEY, job_id))
    if execution_id:
        pairs.append(SearchAttributePair(EXECUTION_KEY, execution_id))
    return TypedSearchAttributes(pairs)


def workflow_timeout(job: Job, steps: int = 1) -> timedelta:
    """A bound on a whole run: every attempt of every step, with backoff, plus slack."""
    attempts = job.retries + 1 + INFRA_ATTEMPTS
    backoff = job.retry_backoff or {}
    max_interval = float(
        backoff.get("maximum_interval_seconds") or 100 * float(backoff.get("initial_interval_seconds", 1))
    )
    per_step = (job.timeout_seconds + 5) * attempts + max_interval * attempts
    return timedelta(seconds=int(per_step * max(steps, 1) + 300))


def desired_state(job: Job, module: Module | None) -> str:
    """``absent``, ``paused`` or ``active``."""
    if not job.schedule or not job.enabled or module is None:
        return "absent"
    if module.status not in (ModuleStatus.ENABLED.value, ModuleStatus.DISABLED.value):
        return "absent"
    return "active" if module.status == ModuleStatus.ENABLED.value else "paused"


def memo_for(job: Job, module: Module) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "job_revision": job.revision,
        "module_version": module.version,
        "cron": job.schedule,
        "timezone": job.timezone,
    }


@dataclass
class ScheduleManager:
    client: Client
    task_queue: str

    def build(self, job: Job, module: Module, steps: int = 1) -> Schedule:
        paused = desired_state(job, module) == "paused"
        return Schedule(
            action=ScheduleActionStartWorkflow(
                f"{job.module_name}.{job.job_type}",
                JobInput(job_id=job.id, trigger="schedule"),
                id=f"sched-{job.id}",
                task_queue=self.task_queue,
                execution_timeout=workflow_timeout(job, steps),
                memo={"autoplat_schedule": memo_for(job, module)},
                typed_search_attributes=search_attributes(job.module_name, job.id, "schedule"),
            ),
            spec=ScheduleSpec(
                cron_expressions=[to_temporal_cron(job.schedule or "")],
                time_zone_name=job.timezone or "UTC",
            ),
            policy=SchedulePolicy(
                overlap=OVERLAP.get(job.overlap, ScheduleOverlapPolicy.SKIP),
                catchup_window=timedelta(seconds=max(job.catchup_window_seconds, 10)),
            ),
            state=ScheduleState(
                paused=paused,
                note=f"module {module.name} is {module.status}" if paused else f"job {job.name}",
            ),
        )

    async def apply(self, job: Job, module: Module | None, steps: int = 1) -> str:
        """Make the job's schedule match the registry; returns what was done."""
        handle = self.client.get_schedule_handle(schedule_id(job.id))
        state = desired_state(job, module)
        if state == "absent":
            return "deleted" if await self.delete(job.id) else "none"
        assert module is not None
        schedule = self.build(job, module, steps)
        try:
            await self.client.create_schedule(
                schedule_id(job.id),
                schedule,
                search_attributes=search_attributes(job.module_name, job.id, "schedule"),
            )
            return "created"
        except Exception as exc:  # ScheduleAlreadyRunningError or RPC "already exists"
            if not _already_exists(exc):
                raise

        def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await handle.update(update)
        return "updated"

    async def delete(self, job_id: str) -> bool:
        try:
            await self.client.get_schedule_handle(schedule_id(job_id)).delete()
            return True
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise

    async def set_paused(self, job_id: str, paused: bool, note: str) -> bool:
        handle = self.client.get_schedule_handle(schedule_id(job_id))
        try:
            if paused:
                await handle.pause(note=note)
            else:
                await handle.unpause(note=note)
            return True
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise

    async def describe(self, job_id: str) -> dict[str, Any] | None:
        try:
            desc = await self.client.get_schedule_handle(schedule_id(job_id)).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        info = desc.info
        return {
            "id": desc.id,
            "paused": desc.schedule.state.paused,
            "note": desc.schedule.state.note,
            "next_action_times": [t.isoformat() for t in info.next_action_times[:5]],
            "recent_actions": [
                {"scheduled_at": a.scheduled_at.isoformat(), "started_at": a.started_at.isoformat()}
                for a in info.recent_actions[-5:]
            ],
            "num_actions": info.num_actions,
            "num_actions_skipped_overlap": info.num_actions_skipped_overlap,
        }


def _already_exists(exc: Exception) -> bool:
    from temporalio.client import ScheduleAlreadyRunningError

    if isinstance(exc, ScheduleAlreadyRunningError):
        return True
    return isinstance(exc, RPCError) and exc.status == RPCStatusCode.ALREADY_EXISTS
