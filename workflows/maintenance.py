"""The platform's own periodic work, as a Temporal schedule: reconcile schedules, sweep the
execution mirror, apply event retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.types import RECONCILE

MAINTENANCE_SCHEDULE_ID = "autoplat-maintenance"
MAINTENANCE_WORKFLOW = "autoplat.maintenance"


@workflow.defn(name=MAINTENANCE_WORKFLOW)
class MaintenanceWorkflow:
    @workflow.run
    async def run(self) -> dict[str, Any]:
        return await workflow.execute_activity(
            RECONCILE,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_attempts=3),
            result_type=dict,
        )


async def ensure_maintenance_schedule(client: Any, settings: Any) -> None:
    """Create (or refresh) the maintenance schedule; idempotent across workers."""
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
        ScheduleUpdate,
    )

    from workflows.schedules import _already_exists

    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            MAINTENANCE_WORKFLOW,
            id="autoplat-maintenance-run",
            task_queue=settings.task_queue,
            execution_timeout=timedelta(minutes=15),
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.reconcile_interval_seconds))]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(MAINTENANCE_SCHEDULE_ID, schedule)
    except Exception as exc:
        if not _already_exists(exc):
            raise
        await client.get_schedule_handle(MAINTENANCE_SCHEDULE_ID).update(lambda _: ScheduleUpdate(schedule=schedule))
