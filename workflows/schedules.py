"""Temporal Schedules of jobs: one ``job-<job id>`` schedule per enabled, scheduled job.

The registry is the source of truth: a schedule exists iff its job is enabled and has a cron;
it is paused iff the job's module is not ENABLED or the job's schedule is paused
(``POST /jobs/{id}/pause``). The schedule's memo carries the job revision and module version it was
built from, so the reconciler can tell a stale schedule from a good one.

Every run a schedule starts has the workflow id ``sched-<job id>-<nominal time, RFC 3339 UTC>``
(Temporal appends the nominal time to the action's id): a slot's run has one id whoever starts it
(the schedule, its catch-up, a backfill), so a slot never runs twice (docs/schedules.md).

Daylight saving (``registry.services.slots``): Temporal's cron skips a nonexistent wall time and
fires a repeated one at the occurrence(s) it computes (not the same for every zone). The job's
policy is made exact: the shifted runs of nonexistent times are added as calendars; repeated wall
times in the next :data:`DST_HORIZON` are excluded with skip calendars and the occurrences the
policy wants run from a companion ``job-<job id>-dst`` schedule of exact UTC instants.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from activities.types import INFRA_ATTEMPTS, STEP_GRACE_SECONDS, JobInput
from registry.manifest import to_temporal_cron
from registry.models import Job, Module, ModuleStatus
from registry.services.slots import RUN_PREFIX, dst_plan, job_dst, nominal_of, run_workflow_id  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from registry.services.runs import JobRow

log = logging.getLogger(__name__)

SCHEDULE_PREFIX = "job-"
#: The companion schedule of exact UTC instants (repeated wall times the DST policy runs).
DST_SUFFIX = "-dst"
#: How far ahead DST calendars are computed (the reconciler refreshes them as time passes).
DST_HORIZON = timedelta(days=400)
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


def dst_schedule_id(job_id: str) -> str:
    return f"{SCHEDULE_PREFIX}{job_id}{DST_SUFFIX}"


def _calendar(moment: datetime) -> ScheduleCalendarSpec:
    """A calendar matching one wall time (of the spec's time zone) exactly."""
    return ScheduleCalendarSpec(
        second=[ScheduleRange(moment.second)],
        minute=[ScheduleRange(moment.minute)],
        hour=[ScheduleRange(moment.hour)],
        day_of_month=[ScheduleRange(moment.day)],
        month=[ScheduleRange(moment.month)],
        year=[ScheduleRange(moment.year)],
        day_of_week=[ScheduleRange(0, 6)],
    )


def dst_spec(job: Job, now: datetime | None = None) -> dict[str, list[datetime]]:
    """The DST plan of a job's schedule for the next :data:`DST_HORIZON` (see ``slots.dst_plan``)."""
    start = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    if not job.schedule:
        return {"add": [], "skip": [], "exact": []}
    try:
        return dst_plan(job.schedule, job.timezone or "UTC", start, start + DST_HORIZON, job_dst(job))
    except (ValueError, KeyError):
        return {"add": [], "skip": [], "exact": []}


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


def workflow_timeout(job: Job | JobRow, steps: int = 1) -> timedelta:
    """A bound on a whole run: every attempt of every step, with backoff, plus slack."""
    attempts = job.retries + 1 + INFRA_ATTEMPTS
    backoff = job.retry_backoff or {}
    max_interval = float(
        backoff.get("maximum_interval_seconds") or 100 * float(backoff.get("initial_interval_seconds", 1))
    )
    per_step = (job.timeout_seconds + STEP_GRACE_SECONDS) * attempts + max_interval * attempts
    return timedelta(seconds=int(per_step * max(steps, 1) + 300))


def desired_state(job: Job, module: Module | None) -> str:
    """``absent``, ``paused`` or ``active``."""
    if not job.schedule or not job.enabled or module is None:
        return "absent"
    if module.status not in (ModuleStatus.ENABLED.value, ModuleStatus.DISABLED.value):
        return "absent"
    if module.status != ModuleStatus.ENABLED.value or job.schedule_paused:
        return "paused"
    return "active"


def _digest(plan: dict[str, list[datetime]]) -> str:
    text = "|".join(",".join(sorted(str(t) for t in plan[k])) for k in ("add", "skip", "exact"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pause_note(job: Job, module: Module) -> str:
    if module.status != ModuleStatus.ENABLED.value:
        return f"module {module.name} is {module.status}"
    if job.schedule_paused:
        by = f" by {job.schedule_paused_by}" if job.schedule_paused_by else ""
        return f"paused{by}: {job.schedule_pause_note or ''}".rstrip(": ")
    return f"job {job.name}"


def memo_for(job: Job, module: Module, plan: dict[str, list[datetime]] | None = None) -> dict[str, Any]:
    plan = plan if plan is not None else dst_spec(job)
    return {
        "job_id": job.id,
        "job_revision": job.revision,
        "module_version": module.version,
        "cron": job.schedule,
        "timezone": job.timezone,
        "dst": f"{job.dst_nonexistent}/{job.dst_ambiguous}",
        "jitter_seconds": job.jitter_seconds,
        # The DST calendars change as the horizon moves: a new one makes the schedule stale.
        "dst_plan": _digest(plan),
    }


@dataclass
class ScheduleManager:
    client: Client
    task_queue: str

    def build(
        self, job: Job, module: Module, steps: int = 1, plan: dict[str, list[datetime]] | None = None
    ) -> Schedule:
        plan = plan if plan is not None else dst_spec(job)
        return self._schedule(
            job,
            module,
            steps,
            plan,
            ScheduleSpec(
                cron_expressions=[to_temporal_cron(job.schedule or "")],
                calendars=[_calendar(t) for t in plan["add"]],
                skip=[_calendar(t) for t in plan["skip"]],
                time_zone_name=job.timezone or "UTC",
                jitter=timedelta(seconds=job.jitter_seconds) if job.jitter_seconds else None,
            ),
        )

    def build_dst(
        self, job: Job, module: Module, steps: int = 1, plan: dict[str, list[datetime]] | None = None
    ) -> Schedule | None:
        """The companion schedule of exact UTC instants, or None when the policy needs none."""
        plan = plan if plan is not None else dst_spec(job)
        if not plan["exact"]:
            return None
        return self._schedule(
            job,
            module,
            steps,
            plan,
            ScheduleSpec(
                calendars=[_calendar(t.astimezone(UTC)) for t in plan["exact"]],
                time_zone_name="UTC",
                jitter=timedelta(seconds=job.jitter_seconds) if job.jitter_seconds else None,
            ),
        )

    def _schedule(
        self, job: Job, module: Module, steps: int, plan: dict[str, list[datetime]], spec: ScheduleSpec
    ) -> Schedule:
        paused = desired_state(job, module) == "paused"
        return Schedule(
            action=ScheduleActionStartWorkflow(
                f"{job.module_name}.{job.job_type}",
                JobInput(job_id=job.id, trigger="schedule"),
                id=f"{RUN_PREFIX}{job.id}",
                task_queue=self.task_queue,
                execution_timeout=workflow_timeout(job, steps),
                memo={"autoplat_schedule": memo_for(job, module, plan)},
                typed_search_attributes=search_attributes(job.module_name, job.id, "schedule"),
            ),
            spec=spec,
            policy=SchedulePolicy(
                overlap=OVERLAP.get(job.overlap, ScheduleOverlapPolicy.SKIP),
                catchup_window=timedelta(seconds=max(job.catchup_window_seconds, 10)),
            ),
            state=ScheduleState(paused=paused, note=pause_note(job, module)),
        )

    async def apply(self, job: Job, module: Module | None, steps: int = 1) -> str:
        """Make the job's schedule (and its DST companion) match the registry; returns what was done."""
        state = desired_state(job, module)
        if state == "absent":
            return "deleted" if await self.delete(job.id) else "none"
        assert module is not None
        plan = dst_spec(job)
        companion = self.build_dst(job, module, steps, plan)
        if companion is None:
            await self._delete_one(dst_schedule_id(job.id))
        else:
            await self._put(dst_schedule_id(job.id), companion, job)
        return await self._put(schedule_id(job.id), self.build(job, module, steps, plan), job)

    async def _put(self, sid: str, schedule: Schedule, job: Job) -> str:
        try:
            await self.client.create_schedule(
                sid, schedule, search_attributes=search_attributes(job.module_name, job.id, "schedule")
            )
            return "created"
        except Exception as exc:  # ScheduleAlreadyRunningError or RPC "already exists"
            if not _already_exists(exc):
                raise

        def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await self.client.get_schedule_handle(sid).update(update)
        return "updated"

    async def _delete_one(self, sid: str) -> bool:
        try:
            await self.client.get_schedule_handle(sid).delete()
            return True
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise

    async def delete(self, job_id: str) -> bool:
        await self._delete_one(dst_schedule_id(job_id))
        return await self._delete_one(schedule_id(job_id))

    async def set_paused(self, job_id: str, paused: bool, note: str) -> bool:
        found = False
        for sid in (schedule_id(job_id), dst_schedule_id(job_id)):
            handle = self.client.get_schedule_handle(sid)
            try:
                if paused:
                    await handle.pause(note=note)
                else:
                    await handle.unpause(note=note)
                found = True
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
        return found

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
            "jitter_seconds": int(desc.schedule.spec.jitter.total_seconds()) if desc.schedule.spec.jitter else 0,
        }


def _already_exists(exc: Exception) -> bool:
    from temporalio.client import ScheduleAlreadyRunningError

    if isinstance(exc, ScheduleAlreadyRunningError):
        return True
    return isinstance(exc, RPCError) and exc.status == RPCStatusCode.ALREADY_EXISTS
