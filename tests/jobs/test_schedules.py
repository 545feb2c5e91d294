"""Jobs as Temporal Schedules, changed together with the registry; the reconciler repairs drift."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from activities.types import JobInput
from registry.db import unit_of_work
from registry.models import Job, Module
from tests.conftest import eventually
from tests.jobs.helpers import put_module, write_module
from workflows.reconcile import reconcile_schedules
from workflows.schedules import ScheduleManager, schedule_id

CODE = """
def tick(ctx):
    ctx.logger.info("tick %s", ctx.config.get("label"))
    return {"label": ctx.config.get("label"), "trigger": ctx.trigger}
"""
JOBS = [
    {
        "name": "tick",
        "description": "ticks",
        "handler": "tick",
        "schedule": {"cron": "0 0 1 1 *", "timezone": "UTC"},
        "config": {"type": "object", "properties": {"label": {"type": "string", "default": "a"}}},
    }
]
EVERY_SECOND = "* * * * * *"


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Path) -> Any:
    settings.min_schedule_interval_seconds = 1  # these tests run every-second crons
    return await put_module(sessions, settings.state_dir, write_module(tmp_path, name="sched", code=CODE, jobs=JOBS))


async def _create(client: Any, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/jobs", json={"module": "sched", "job_type": "tick", "name": "tick", **extra}, headers=headers
    )
    assert r.status_code == 201, r.text
    return r.json()


async def _scheduled_runs(client: Any, headers: dict[str, str], job_id: str, **filters: Any) -> list[dict[str, Any]]:
    params = {"job_id": job_id, "trigger": "schedule", "limit": 200, "include": "result,config", **filters}
    return (await client.get("/api/v1/executions", params=params, headers=headers)).json()["items"]


async def test_default_schedule_from_the_job_type(client, worker, module, operator_headers, temporal_env):
    job = await _create(client, operator_headers)
    assert job["schedule"] == "0 0 1 1 *"
    assert job["schedule_id"] == f"job-{job['id']}" and job["id"] in job["schedule_id"]
    assert len(job["next_runs"]) == 5
    desc = await temporal_env.client.get_schedule_handle(schedule_id(job["id"])).describe()
    assert not desc.schedule.state.paused


async def test_scheduled_job_fires_and_cron_change_replaces_the_schedule(
    client, worker, module, operator_headers, temporal_env
):
    job = await _create(client, operator_headers)
    r = await client.patch(
        f"/api/v1/jobs/{job['id']}", json={"schedule": EVERY_SECOND, "config": {"label": "b"}}, headers=operator_headers
    )
    assert r.status_code == 200, r.text

    async def completed() -> list[dict[str, Any]]:
        return await _scheduled_runs(client, operator_headers, job["id"], status="COMPLETED")

    runs = await eventually(completed, timeout=30, what="a scheduled run")
    assert runs[0]["result"] == {"label": "b", "trigger": "schedule"}
    # One schedule per job, with the new spec.
    ids = [s.id async for s in await temporal_env.client.list_schedules() if job["id"] in s.id]
    assert ids == [schedule_id(job["id"])]
    detail = (await client.get(f"/api/v1/jobs/{job['id']}", headers=operator_headers)).json()
    assert detail["schedule_state"]["paused"] is False
    assert detail["last_execution"] is not None


async def test_config_change_reaches_the_next_scheduled_run(client, worker, module, operator_headers):
    job = await _create(client, operator_headers, schedule=EVERY_SECOND, config={"label": "old"})
    await eventually(lambda: _scheduled_runs(client, operator_headers, job["id"], status="COMPLETED"), timeout=30)
    r = await client.patch(f"/api/v1/jobs/{job['id']}", json={"config": {"label": "new"}}, headers=operator_headers)
    assert r.status_code == 200

    async def new_label() -> bool:
        runs = await _scheduled_runs(client, operator_headers, job["id"], status="COMPLETED")
        return any(run["result"]["label"] == "new" and run["config"] == {"label": "new"} for run in runs)

    await eventually(new_label, timeout=30, what="a run with the new config")


async def test_disable_and_delete_remove_the_schedule(client, worker, module, operator_headers, temporal_env):
    job = await _create(client, operator_headers, schedule=EVERY_SECOND)
    manager = ScheduleManager(temporal_env.client, "unused")
    assert await manager.describe(job["id"]) is not None
    r = await client.post(f"/api/v1/jobs/{job['id']}/disable", headers=operator_headers)
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert await manager.describe(job["id"]) is None
    # A run already requested by the old schedule is skipped, not run (seed bug: disabled jobs still ran).
    handle = await temporal_env.client.start_workflow(
        "sched.tick",
        JobInput(job_id=job["id"], trigger="schedule"),
        id=f"late-{job['id']}",
        task_queue=worker.task_queue,
    )
    assert (await asyncio.wait_for(handle.result(), 30))["status"] == "SKIPPED"
    runs = await _scheduled_runs(client, operator_headers, job["id"], status="SKIPPED")
    assert runs and runs[0]["status_reason"] == "the job is disabled"
    r = await client.post(f"/api/v1/jobs/{job['id']}/enable", headers=operator_headers)
    assert await manager.describe(job["id"]) is not None
    assert (await client.delete(f"/api/v1/jobs/{job['id']}", headers=operator_headers)).status_code == 204
    assert await manager.describe(job["id"]) is None
    # A run of a deleted job is skipped too (seed bug: orphaned queue entries).
    handle = await temporal_env.client.start_workflow(
        "sched.tick",
        JobInput(job_id=job["id"], trigger="schedule"),
        id=f"orphan-{job['id']}",
        task_queue=worker.task_queue,
    )
    result = await asyncio.wait_for(handle.result(), 30)
    assert result["status"] == "SKIPPED" and "deleted" in result["reason"]


async def test_manual_run_of_a_disabled_job_is_refused(client, module, operator_headers, temporal_settings):
    job = await _create(client, operator_headers, schedule=None, enabled=False)
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)
    assert r.status_code == 409
    assert r.json()["error"]["details"]["current_state"] == "disabled"


async def test_reconciler_repairs_drift_both_ways(
    client, worker, module, operator_headers, temporal_env, sessions, temporal_settings
):
    a = await _create(client, operator_headers, name="a")
    b = await _create(client, operator_headers, name="b")
    manager = ScheduleManager(temporal_env.client, temporal_settings.task_queue)
    # Drift 1: a schedule Temporal lost. Drift 2: a job deleted behind the API's back (orphan schedule).
    # Drift 3: a cron changed in the DB only (stale schedule).
    await manager.delete(a["id"])
    async with unit_of_work(sessions) as session:
        await session.execute(
            update(Job).where(Job.id == b["id"]).values(schedule="*/5 * * * *", revision=Job.revision + 1)
        )
    orphan = Job(
        id="00000000-0000-0000-0000-00000000dead",
        module_id=module.id,
        module_name="sched",
        job_type="tick",
        name="ghost",
        schedule="0 * * * *",
        timezone="UTC",
        revision=1,
        config={},
        retry_backoff={},
        event_triggers=[],
        notifications={},
        enabled=True,
        timeout_seconds=60,
        retries=0,
        overlap="skip",
        catchup_window_seconds=60,
    )
    async with sessions() as session:
        mod = await session.get(Module, module.id)
        assert await manager.apply(orphan, mod) == "created"

    async def listed() -> bool:  # schedule listing is eventually consistent (visibility)
        return schedule_id(orphan.id) in [s.id async for s in await temporal_env.client.list_schedules()]

    await eventually(listed, what="orphan schedule listed")
    report = await reconcile_schedules(
        client=temporal_env.client, sessions=sessions, task_queue=temporal_settings.task_queue
    )
    assert report.created == [schedule_id(a["id"])]
    assert report.updated == [schedule_id(b["id"])]
    assert report.deleted == [schedule_id(orphan.id)]
    assert not report.errors
    again = await reconcile_schedules(
        client=temporal_env.client, sessions=sessions, task_queue=temporal_settings.task_queue
    )
    assert again.lines() == []
