"""Exactly one run per (schedule, nominal time), end to end on the Temporal dev server."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

from temporalio.client import ScheduleBackfill, ScheduleOverlapPolicy
from temporalio.common import WorkflowIDReusePolicy

from activities.types import JobInput
from registry.models import Execution
from registry.services.slots import nominal_of
from tests.conftest import eventually
from tests.schedules.helpers import create_job, job_runs
from workflows.reconcile import reconcile_schedules
from workflows.schedules import schedule_id


async def test_one_run_per_slot_whoever_starts_it(client, worker, module, operator_headers, temporal_env, sessions):
    job = await create_job(client, operator_headers)

    async def two_done() -> list[Execution]:
        done = [r for r in await job_runs(sessions, job["id"]) if r.status == "COMPLETED"]
        return done if len(done) >= 2 else []

    first = sorted(
        await eventually(two_done, timeout=30, what="two scheduled runs"), key=lambda r: r.nominal_at or r.created_at
    )[0]
    # The workflow id is the job and the nominal time; the nominal time is on the execution.
    assert first.nominal_at is not None and first.trigger == "schedule"
    assert first.workflow_id == f"sched-{job['id']}-{first.nominal_at:%Y-%m-%dT%H:%M:%SZ}"
    assert nominal_of(first.workflow_id, job["id"]) == first.nominal_at

    # A second start of the same slot (the id closed: Temporal allows it) answers the existing run.
    again = await temporal_env.client.start_workflow(
        "slots.tick",
        JobInput(job_id=job["id"], trigger="backfill"),
        id=first.workflow_id,
        task_queue=worker.task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
    answer = await asyncio.wait_for(again.result(), 30)
    assert answer["status"] == "SKIPPED" and answer["execution_id"] == first.id

    # Temporal's own backfill over slots that already ran, and a reconcile that re-creates the
    # deleted schedule (its catch-up), run none of them twice.
    handle = temporal_env.client.get_schedule_handle(schedule_id(job["id"]))
    await handle.backfill(
        ScheduleBackfill(
            start_at=first.nominal_at - timedelta(seconds=1),
            end_at=first.nominal_at + timedelta(seconds=3),
            overlap=ScheduleOverlapPolicy.ALLOW_ALL,
        )
    )
    await handle.delete()
    report = await reconcile_schedules(client=temporal_env.client, sessions=sessions, task_queue=worker.task_queue)
    assert report.created == [schedule_id(job["id"])]
    count = len(await job_runs(sessions, job["id"]))

    async def more_runs() -> bool:
        return len(await job_runs(sessions, job["id"])) >= count + 2

    await eventually(more_runs, timeout=30, what="runs after the re-created schedule")

    # Let the backfilled starts land: every start of a slot that ran ends SKIPPED without a row.
    async def starts_of_first_slot() -> list[Any]:
        found = [w async for w in temporal_env.client.list_workflows(f"WorkflowId = '{first.workflow_id}'")]
        # The scheduled run and our second start (and the backfill's, when Temporal made one).
        return found if len(found) >= 2 else []

    backfilled = await eventually(starts_of_first_slot, timeout=20, what="the starts of the first slot")
    for w in backfilled:
        await temporal_env.client.get_workflow_handle(w.id, run_id=w.run_id).result()
    runs = await job_runs(sessions, job["id"])
    nominal = Counter(r.nominal_at for r in runs)
    assert nominal and max(nominal.values()) == 1, nominal.most_common(3)
    assert all(r.workflow_id == f"sched-{job['id']}-{r.nominal_at:%Y-%m-%dT%H:%M:%SZ}" for r in runs)
    await client.post(f"/api/v1/jobs/{job['id']}/disable", headers=operator_headers)


async def test_jitter_delays_runs_but_not_their_slot(client, worker, module, operator_headers, temporal_env, sessions):
    job = await create_job(client, operator_headers, schedule="*/2 * * * * *", jitter_seconds=1)
    assert job["jitter_seconds"] == 1 and job["schedule_state"]["jitter_seconds"] == 1
    desc = await temporal_env.client.get_schedule_handle(schedule_id(job["id"])).describe()
    assert desc.schedule.spec.jitter == timedelta(seconds=1)

    async def two_done() -> list[Execution]:
        done = [r for r in await job_runs(sessions, job["id"]) if r.status == "COMPLETED"]
        return done if len(done) >= 2 else []

    runs = await eventually(two_done, timeout=30, what="two jittered runs")
    # The slot (and the workflow id) is the nominal time, on the cron's even seconds; the start is
    # up to a second after it.
    assert all(r.nominal_at is not None and r.nominal_at.second % 2 == 0 for r in runs)
    assert all(r.workflow_id.endswith(f"{r.nominal_at:%Y-%m-%dT%H:%M:%SZ}") for r in runs if r.nominal_at)
    r = await client.patch(f"/api/v1/jobs/{job['id']}", json={"jitter_seconds": 0}, headers=operator_headers)
    assert r.status_code == 200 and r.json()["jitter_seconds"] == 0
    desc = await temporal_env.client.get_schedule_handle(schedule_id(job["id"])).describe()
    assert not desc.schedule.spec.jitter
    r = await client.patch(f"/api/v1/jobs/{job['id']}", json={"jitter_seconds": -1}, headers=operator_headers)
    assert r.status_code == 422 and "jitter_seconds" in r.text
    await client.post(f"/api/v1/jobs/{job['id']}/disable", headers=operator_headers)
