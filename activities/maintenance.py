"""The maintenance activity: reconciler + sweeper, event retention, expired module documents."""

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
        return [self.reconcile]

    @activity.defn(name=RECONCILE)
    async def reconcile(self) -> dict[str, Any]:
        from workflows.reconcile import reconcile_schedules, sweep_executions

        client = activity.client()
        settings = self.deps.settings
        report = await reconcile_schedules(client=client, sessions=self.deps.sessions, task_queue=settings.task_queue)
        await sweep_executions(client=client, sessions=self.deps.sessions, report=report)
        result: dict[str, Any] = report.as_dict()
        if settings.event_retention_days > 0:
            from registry.db import unit_of_work
            from registry.services.events import delete_older_than

            async with unit_of_work(self.deps.sessions) as session:
                result["events_deleted"] = await delete_older_than(session=session, days=settings.event_retention_days)
        from registry.db import unit_of_work
        from registry.services.storage import purge_expired

        async with unit_of_work(self.deps.sessions) as session:
            result["documents_expired"] = await purge_expired(session=session)
        for line in report.lines():
            log.info("maintenance: %s", line)
        return result


def provider(deps: Any) -> MaintenanceActivities:
    return MaintenanceActivities(deps)
