"""Housekeeping of the execution mirror: an admin deletes a finished run (never a running one), and
the maintenance schedule deletes finished runs older than AUTOPLAT_EXECUTION_RETENTION_DAYS."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from sqlalchemy import select
from temporalio.testing import ActivityEnvironment

from activities.maintenance import MaintenanceActivities
from registry.db import unit_of_work
from registry.models import Artifact, AuditLog, Execution
from registry.services.artifacts import save_artifact


async def _run(sessions, status: str, *, age_days: float = 0) -> str:
    created = datetime.now(UTC) - timedelta(days=age_days)
    async with unit_of_work(sessions) as session:
        row = Execution(
            module_name="housekeeping",
            job_type="t",
            workflow_id=f"hk-{uuid.uuid4().hex}",
            trigger="manual",
            status=status,
            created_at=created,
            logs='{"level": "INFO", "message": "hello"}\n',
        )
        session.add(row)
        await session.flush()
        return row.id


async def test_an_admin_deletes_a_finished_run_with_its_artifacts(
    client, settings, sessions, admin_headers, operator_headers, tmp_path
):
    settings.artifacts_dir = tmp_path / "artifacts"
    running, done = await _run(sessions, "RUNNING"), await _run(sessions, "COMPLETED")
    async with unit_of_work(sessions) as session:
        await save_artifact(
            session=session,
            execution_id=done,
            name="shot.png",
            content_type="image/png",
            data=b"\x89PNG...",
            artifacts_dir=settings.artifacts_dir,
        )
    file = settings.artifacts_dir / done / "shot.png"
    assert file.is_file()

    r = await client.delete(f"/api/v1/executions/{running}", headers=admin_headers)
    assert r.status_code == 409 and r.json()["error"]["details"]["current_state"] == "RUNNING", r.text
    r = await client.delete(f"/api/v1/executions/{done}", headers=operator_headers)
    assert r.status_code == 403, r.text
    r = await client.delete(f"/api/v1/executions/{done}", headers=admin_headers)
    assert r.status_code == 204, r.text

    assert (await client.get(f"/api/v1/executions/{done}", headers=admin_headers)).status_code == 404
    assert (await client.get(f"/api/v1/executions/{running}", headers=admin_headers)).status_code == 200
    assert (await client.delete(f"/api/v1/executions/{done}", headers=admin_headers)).status_code == 404
    assert not file.exists()
    async with sessions() as session:
        assert list(await session.scalars(select(Artifact.id).where(Artifact.execution_id == done))) == []
        audit = list(
            await session.scalars(
                select(AuditLog).where(AuditLog.action == "execution.delete", AuditLog.target_id == done)
            )
        )
    assert len(audit) == 1 and audit[0].outcome == "success" and audit[0].details["status"] == "COMPLETED"


async def test_retention_deletes_old_finished_runs_only(temporal_settings, temporal_env, sessions):
    from registry.services.executions import delete_finished_before

    temporal_settings.execution_retention_days = 90
    temporal_settings.event_retention_days = 0
    old_running = await _run(sessions, "RUNNING", age_days=100)
    # A run not final yet is never deleted, however old (the service; the maintenance run's sweeper
    # would first end this one, which has no workflow).
    async with unit_of_work(sessions) as session:
        await delete_finished_before(session=session, days=90)
    async with sessions() as session:
        assert await session.get(Execution, old_running) is not None

    old_done = await _run(sessions, "FAILED", age_days=100)
    recent = await _run(sessions, "COMPLETED", age_days=10)
    env = ActivityEnvironment(client=temporal_env.client)
    activities = MaintenanceActivities(SimpleNamespace(settings=temporal_settings, sessions=sessions))
    result = await env.run(activities.reconcile)
    assert result["executions_deleted"] >= 1
    async with sessions() as session:
        left = set(await session.scalars(select(Execution.id).where(Execution.module_name == "housekeeping")))
    assert old_done not in left and recent in left

    temporal_settings.execution_retention_days = 0  # 0 keeps everything
    assert "executions_deleted" not in await env.run(activities.reconcile)
