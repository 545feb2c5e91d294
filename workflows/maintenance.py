"""The platform's own periodic work, as Temporal schedules: reconcile schedules, sweep the
execution mirror, apply event retention; and for time series, roll up the hours written and
keep partitions ahead / drop the expired ones (the same workflow type, given a task)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.types import RECONCILE

MAINTENANCE_SCHEDULE_ID = "autoplat-maintenance"
MAINTENANCE_WORKFLOW = "autoplat.maintenance"
#: The activity of activities/services/series.py (its name only: no DB code in workflow files).
SERIES_MAINTENANCE = "autoplat.series_maintenance"
#: Series schedules: id -> (task, settings attribute of its interval in seconds).
SERIES_SCHEDULES = {
    "autoplat-series-rollup": ("series-rollup", "series_rollup_interval_seconds"),
    "autoplat-series-retention": ("series-retention", "series_retention_interval_seconds"),
    # Alerting: one evaluator run per tick evaluates every due series / job rule (docs/alerting.md).
    "autoplat-alerts-evaluate": ("alerts-evaluate", "alerts_tick_seconds"),
}
#: The alert evaluator activity (activities/alerts.py).
ALERTS_EVALUATE = "autoplat.alerts.evaluate"
#: One batch of a backfill (activities/maintenance.py); the task ``backfill:<id>`` drives one.
BACKFILL_BATCH = "autoplat.backfill_batch"


@workflow.defn(name=MAINTENANCE_WORKFLOW)
class MaintenanceWorkflow:
    @workflow.run
    async def run(self, task: str | None = None) -> dict[str, Any]:
        if task in ("series-rollup", "series-retention"):
            return await workflow.execute_activity(
                SERIES_MAINTENANCE,
                task.removeprefix("series-"),
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(minutes=3),
                retry_policy=RetryPolicy(maximum_attempts=3),
                result_type=dict,
            )
        if task and task.startswith("backfill:"):
            # A backfill's driver: batches of slot starts with pauses between them (docs/schedules.md);
            # cancelling this workflow cancels the backfill as a whole.
            while True:
                batch = await workflow.execute_activity(
                    BACKFILL_BATCH,
                    task.removeprefix("backfill:"),
                    start_to_close_timeout=timedelta(minutes=5),
                    retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                    result_type=dict,
                )
                if batch.get("done"):
                    return batch
                await workflow.sleep(timedelta(seconds=float(batch.get("pause_seconds") or 1)))
        if task == "alerts-evaluate":
            return await workflow.execute_activity(
                ALERTS_EVALUATE,
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=RetryPolicy(maximum_attempts=2),
                result_type=dict,
            )
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
    schedules = {MAINTENANCE_SCHEDULE_ID: schedule}
    for schedule_id, (task, interval) in SERIES_SCHEDULES.items():
        schedules[schedule_id] = Schedule(
            action=ScheduleActionStartWorkflow(
                MAINTENANCE_WORKFLOW,
                task,
                id=f"{schedule_id}-run",
                task_queue=settings.task_queue,
                execution_timeout=timedelta(minutes=15),
            ),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=getattr(settings, interval)))]),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        )
    for schedule_id, wanted in schedules.items():
        try:
            await client.create_schedule(schedule_id, wanted)
        except Exception as exc:
            if not _already_exists(exc):
                raise
            await client.get_schedule_handle(schedule_id).update(
                lambda _, wanted=wanted: ScheduleUpdate(schedule=wanted)  # type: ignore[misc]
            )
