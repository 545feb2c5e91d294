"""The maintenance activity: reconciler, sweeper and event retention in one pass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from sqlalchemy import func, select
from temporalio.testing import ActivityEnvironment

from activities.maintenance import MaintenanceActivities
from registry.db import unit_of_work
from registry.models import Event


async def test_retention_deletes_old_dispatched_events_only(temporal_settings, temporal_env, sessions):
    temporal_settings.event_retention_days = 30
    old = datetime.now(UTC) - timedelta(days=40)
    async with unit_of_work(sessions) as session:
        session.add(
            Event(id="old-done", name="a.b", payload={}, received_at=old, occurred_at=old, dispatch_status="DISPATCHED")
        )
        session.add(
            Event(id="old-pending", name="a.b", payload={}, received_at=old, occurred_at=old, dispatch_status="PENDING")
        )
        session.add(Event(id="new-done", name="a.b", payload={}, dispatch_status="DISPATCHED"))
    env = ActivityEnvironment(client=temporal_env.client)
    activities = MaintenanceActivities(SimpleNamespace(settings=temporal_settings, sessions=sessions))
    result = await env.run(activities.reconcile)
    assert result["events_deleted"] == 1
    async with sessions() as session:
        left = set(await session.scalars(select(Event.id)))
        assert left == {"old-pending", "new-done"}
        assert await session.scalar(select(func.count()).select_from(Event)) == 2
