"""The maintenance activity: reconciler + sweeper, event and execution retention, expired module documents."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from temporalio import activity

from activities.types import RECONCILE

log = logging.getLogger(__name__)


class MaintenanceActivities:
    def __init__(self, deps: Any) -> None:
        self.deps = deps

    def activities(self) -> list[Callable[..., Any]]:
        return [self.reconcile, self.backfill_batch]

    @activity.defn(name="autoplat.backfill_batch")
    async def backfill_batch(self, backfill_id: str) -> dict[str, Any]:
        """One batch of a backfill's slot starts (registry/services/backfill.py)."""
        from registry.services.backfill import run_batch

        return await run_batch(
            client=activity.client(), sessions=self.deps.sessions, settings=self.deps.settings, backfill_id=backfill_id
        )

    @activity.defn(name=RECONCILE)
    async def reconcile(self) -> dict[str, Any]:
        from workflows.reconcile import reconcile_schedules, sweep_executions

        client = activity.client()
        settings = self.deps.settings
        report = await reconcile_schedules(client=client, sessions=self.deps.sessions, task_queue=settings.task_queue)
        await sweep_executions(client=client, sessions=self.deps.sessions, report=report)
        from workflows.reconcile import settle_ledgers

        slots_settled = await settle_ledgers(sessions=self.deps.sessions, report=report)
        result: dict[str, Any] = report.as_dict()
        result["slots_settled"] = slots_settled
        if settings.event_retention_days > 0:
            from registry.db import unit_of_work
            from registry.services.events import delete_older_than

            async with unit_of_work(self.deps.sessions) as session:
                result["events_deleted"] = await delete_older_than(session=session, days=settings.event_retention_days)
        if settings.execution_retention_days > 0:
            result["executions_deleted"] = await self._execution_retention(settings)
        from registry.db import unit_of_work
        from registry.services.storage import purge_expired

        async with unit_of_work(self.deps.sessions) as session:
            result["documents_expired"] = await purge_expired(session=session)
        for line in report.lines():
            log.info("maintenance: %s", line)
        return result

    #: Runs deleted per transaction, and at most per maintenance run (the rest waits for the next).
    RETENTION_BATCH = 1000
    RETENTION_MAX = 50_000

    async def _execution_retention(self, settings: Any) -> int:
        """Delete finished runs older than AUTOPLAT_EXECUTION_RETENTION_DAYS, a batch per transaction."""
        from registry.db import unit_of_work
        from registry.services.artifacts import remove_artifact_files
        from registry.services.executions import delete_finished_before

        deleted = 0
        while deleted < self.RETENTION_MAX:
            async with unit_of_work(self.deps.sessions) as session:
                n, files = await delete_finished_before(
                    session=session, days=settings.execution_retention_days, limit=self.RETENTION_BATCH
                )
            if files and settings.artifacts_dir is not None:
                remove_artifact_files(settings.artifacts_dir, files)  # committed: the rows are gone
            deleted += n
            activity.heartbeat(deleted)
            if n < self.RETENTION_BATCH:
                break
        return deleted


def provider(deps: Any) -> MaintenanceActivities:
    return MaintenanceActivities(deps)
