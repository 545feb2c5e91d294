"""Who writes a run's mirror row: a manual run carries its plan, so its first step starts the run;
the last step of every run ends it COMPLETED. Scheduled and event runs start through
``mirror_start``, and every other ending goes through ``mirror_finish``. Histories recorded before
this still replay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.common import RawValue
from temporalio.testing import ActivityEnvironment

from activities.jobs import _NOTHING, JobActivities
from activities.types import FinishInput, JobInput, StepInput
from autoplat.context import LogBuffer
from registry.db import unit_of_work
from registry.models import Event, Execution, ExecutionStatus
from tests.conftest import eventually, running_worker
from tests.jobs.helpers import put_module, write_module
from workflows.client import DATA_CONVERTER

HISTORIES = Path(__file__).parent / "histories"

CODE = """
from pathlib import Path

def hello(ctx):
    ctx.logger.info("hello %s", ctx.config.get("who"))
    if ctx.config.get("marker"):
        with open(ctx.config["marker"], "a") as f:
            f.write(f"{ctx.attempt}\\n")
    return {"greeting": "hello " + ctx.config.get("who", "?")}

def big(ctx):
    return "x" * 600_000

def odd(ctx):
    ctx.logger.info("a NUL \\x00 in a log line")
    return {"ratio": float("nan"), "text": "a\\x00b", "big": float("inf")}

def boom(ctx):
    ctx.logger.info("about to fail")
    raise RuntimeError("broken")

def gated_failure(ctx):
    import time
    from pathlib import Path
    Path(ctx.config["marker"] + ".running").touch()
    while not Path(ctx.config["marker"] + ".release").exists():  # held until the test releases it
        time.sleep(0.05)
    raise RuntimeError("failed on purpose")

def slow(ctx):
    import time
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:  # a long step: heartbeats must keep it alive
        time.sleep(0.05)
    return "done"

def progress(ctx):
    import time
    from pathlib import Path
    ctx.heartbeat("page", 3)
    Path(ctx.config["marker"] + ".running").touch()
    while not Path(ctx.config["marker"] + ".release").exists():  # held until the test releases it
        time.sleep(0.05)
    return "done"

def first(ctx):
    ctx.logger.info("first step")
    return 2

def second(ctx, previous):
    ctx.logger.info("second step")
    return previous * 10
"""
CONFIG = {
    "type": "object",
    "properties": {
        "who": {"type": "string", "default": "world"},
        "marker": {"type": "string"},
        "token": {"type": "string", "secret": True},
    },
}
JOBS: list[dict[str, Any]] = [
    {"name": "hello", "description": "greets", "handler": "hello", "config": CONFIG},
    {"name": "big", "description": "a 600 kB result", "handler": "big"},
    {"name": "odd", "description": "a result PostgreSQL cannot store as is", "handler": "odd"},
    {"name": "boom", "description": "fails", "handler": "boom"},
    {"name": "slow", "description": "runs 3.5 s", "handler": "slow"},
    {"name": "progress", "description": "heartbeats its progress once", "handler": "progress", "config": CONFIG},
    {"name": "gated_failure", "description": "fails when released", "handler": "gated_failure", "config": CONFIG},
    {
        "name": "pipeline",
        "description": "two steps",
        "steps": [{"name": "first", "handler": "first"}, {"name": "second", "handler": "second"}],
    },
]


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Any) -> Any:
    folder = write_module(tmp_path, name="mirrored", code=CODE, jobs=JOBS)
    return await put_module(sessions, settings.state_dir, folder)


async def _job(client: Any, headers: dict[str, str], job_type: str, **extra: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "mirrored", "job_type": job_type, "name": f"{job_type}-job", "schedule": None, **extra},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return r.json()


async def _event_names(sessions: Any, execution_id: str) -> list[str]:
    async with sessions() as s:
        return sorted(await s.scalars(select(Event.name).where(Event.execution_id == execution_id)))


async def _markers(temporal_env: Any, workflow_id: str) -> int:
    history = await temporal_env.client.get_workflow_handle(workflow_id).fetch_history()
    return sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED)


async def _final_row(sessions: Any, execution_id: str) -> Execution:
    async def final() -> Execution | None:
        async with sessions() as s:
            row = await s.get(Execution, execution_id)
            return row if ExecutionStatus(row.status).is_final else None

    return await eventually(final, timeout=30, what="the run to end")


async def test_a_manual_run_is_written_by_its_steps_alone(
    client, worker, module, operator_headers, temporal_env, sessions
):
    job = await _job(client, operator_headers, "hello", config={"who": "ops", "token": "t0ps3cret"})
    body = (await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)).json()
    assert body["status"] == "COMPLETED", body
    assert body["result"] == {"greeting": "hello ops"}
    # No local activity: the step activity did both mirror writes.
    assert await _markers(temporal_env, body["workflow_id"]) == 0
    async with sessions() as s:
        row = await s.get(Execution, body["id"])
    assert row.run_id and row.started_at and row.finished_at and row.duration_ms is not None
    assert row.module_version == "1.0.0" and row.attempt == 1
    assert row.config["who"] == "ops" and row.config["token"] != "t0ps3cret"  # resolved, secret masked
    assert [(s["name"], s["status"]) for s in row.steps] == [("hello", "COMPLETED")]
    assert "hello ops" in row.logs
    assert await _event_names(sessions, body["id"]) == ["job.completed", "job.started"]


async def test_a_manual_pipeline_passes_values_and_keeps_every_steps_logs(
    client, worker, module, operator_headers, temporal_env, sessions
):
    job = await _job(client, operator_headers, "pipeline")
    body = (await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)).json()
    assert body["status"] == "COMPLETED" and body["result"] == 20, body
    assert await _markers(temporal_env, body["workflow_id"]) == 0
    async with sessions() as s:
        row = await s.get(Execution, body["id"])
    assert [(s["name"], s["status"]) for s in row.steps] == [("first", "COMPLETED"), ("second", "COMPLETED")]
    assert "first step" in row.logs and "second step" in row.logs
    assert await _event_names(sessions, body["id"]) == ["job.completed", "job.started"]


async def test_a_result_too_large_for_the_step_is_written_by_the_workflow(
    client, worker, module, operator_headers, temporal_env, sessions
):
    job = await _job(client, operator_headers, "big")
    body = (await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)).json()
    assert body["status"] == "COMPLETED", body
    assert await _markers(temporal_env, body["workflow_id"]) == 1  # mirror_finish
    async with sessions() as s:
        row = await s.get(Execution, body["id"])
    assert row.result == "x" * 600_000
    assert await _event_names(sessions, body["id"]) == ["job.completed", "job.started"]


CHANGES = {
    "job disabled": ("POST", "/api/v1/jobs/{job}/disable", "the job is disabled"),
    "job deleted": ("DELETE", "/api/v1/jobs/{job}", "the job was deleted after this run was requested"),
    "module disabled": ("POST", "/api/v1/modules/mirrored/disable", "module mirrored is DISABLED"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_a_run_whose_job_or_module_changed_before_its_first_step_is_skipped(
    change, client, module, operator_headers, admin_headers, temporal_settings, temporal_env, sessions, tmp_path
):
    """The run is requested while job and module are enabled, with no worker polling; then the job
    is disabled or deleted, or the module disabled; when a worker comes, the first step records the
    run SKIPPED with the reason and never calls the handler."""
    method, path, reason = CHANGES[change]
    marker = tmp_path / "ran"
    job = await _job(client, operator_headers, "hello", config={"marker": str(marker)})
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)
    assert r.status_code in (201, 202), r.text
    execution_id = r.json()["id"]
    r = await client.request(method, path.format(job=job["id"]), headers=admin_headers)
    assert r.status_code in (200, 204), r.text

    async with running_worker(temporal_settings, temporal_env.client):
        row = await _final_row(sessions, execution_id)
        handle = temporal_env.client.get_workflow_handle(row.workflow_id)
        result = await asyncio.wait_for(handle.result(), 30)
    assert result == {"execution_id": execution_id, "status": "SKIPPED", "reason": reason}
    assert row.status == "SKIPPED" and row.status_reason == reason
    assert row.started_at is None and not marker.exists()
    assert await _event_names(sessions, execution_id) == ["job.skipped"]


async def test_a_last_step_retried_after_completing_its_run_does_not_run_again(
    module, temporal_settings, sessions, tmp_path
):
    """The step wrote COMPLETED but its completion never reached Temporal (worker lost): the retry
    answers the stored result instead of calling the handler a second time."""
    marker = tmp_path / "calls"
    await _running_row(sessions, "exec-retried", attempts=0)
    inp = _step(module, "exec-retried", config_override={"marker": str(marker), "who": "again"})
    acts = JobActivities(settings=temporal_settings, sessions=sessions)
    payload = DATA_CONVERTER.payload_converter.to_payloads([inp])[0]
    env = ActivityEnvironment()
    first = await env.run(acts.run_step, [RawValue(payload)])
    second = await env.run(acts.run_step, [RawValue(payload)])
    expected = {"greeting": "hello again"}
    assert first["value"] == expected and first["finalized"] is True
    assert second["value"] == expected and second["finalized"] is True
    assert marker.read_text().splitlines() == ["1"]  # the handler ran once
    async with sessions() as s:
        row = await s.get(Execution, "exec-retried")
    assert row.status == "COMPLETED" and row.result == expected
    assert await _event_names(sessions, "exec-retried") == ["job.completed"]


async def test_a_scheduled_run_starts_through_mirror_start_and_ends_in_its_last_step(
    client, worker, module, operator_headers, temporal_env, sessions
):
    job = await _job(client, operator_headers, "hello")
    handle = await temporal_env.client.start_workflow(
        "mirrored.hello",
        JobInput(job_id=job["id"], trigger="schedule"),
        id=f"sched-{job['id']}",
        task_queue=worker.task_queue,
    )
    result = await asyncio.wait_for(handle.result(), 30)
    assert result["status"] == "COMPLETED", result
    assert await _markers(temporal_env, handle.id) == 1  # mirror_start only
    async with sessions() as s:
        row = await s.get(Execution, result["execution_id"])
    assert row.status == "COMPLETED" and row.trigger == "schedule" and row.result == {"greeting": "hello world"}
    assert [(s["name"], s["status"]) for s in row.steps] == [("hello", "COMPLETED")]
    assert await _event_names(sessions, row.id) == ["job.completed", "job.started"]


async def test_a_failed_manual_run_is_ended_by_mirror_finish_with_its_logs(
    client, worker, module, operator_headers, temporal_env, sessions
):
    job = await _job(client, operator_headers, "boom")
    body = (await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)).json()
    assert body["status"] == "FAILED" and "broken" in body["error"]["message"], body
    assert await _markers(temporal_env, body["workflow_id"]) == 1  # mirror_finish only
    async with sessions() as s:
        row = await s.get(Execution, body["id"])
    assert row.started_at and row.finished_at and row.run_id
    assert [(s["name"], s["status"]) for s in row.steps] == [("boom", "FAILED")]
    assert "about to fail" in row.logs and "RuntimeError: broken" in row.logs
    assert await _event_names(sessions, body["id"]) == ["job.failed", "job.started"]


async def test_a_result_postgresql_cannot_store_as_is_is_kept_with_the_logs(
    client, worker, module, operator_headers, sessions
):
    job = await _job(client, operator_headers, "odd")
    body = (await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)).json()
    assert body["status"] == "COMPLETED", body
    assert body["result"] == {"ratio": None, "text": "a\ufffdb", "big": None}
    async with sessions() as s:
        row = await s.get(Execution, body["id"])
    assert "a NUL \\u0000 in a log line" in row.logs  # JSON lines: the NUL is escaped


async def test_a_run_cancelled_before_its_first_step_never_starts(
    client, module, operator_headers, temporal_settings, temporal_env, sessions, tmp_path
):
    marker = tmp_path / "ran"
    job = await _job(client, operator_headers, "hello", config={"marker": str(marker)})
    execution_id = (await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)).json()["id"]
    r = await client.post(f"/api/v1/executions/{execution_id}/cancel", headers=operator_headers)
    assert r.status_code in (200, 202), r.text
    async with running_worker(temporal_settings, temporal_env.client):
        row = await _final_row(sessions, execution_id)
    assert row.status == "CANCELLED" and row.started_at is None and not marker.exists()
    assert await _event_names(sessions, execution_id) == ["job.cancelled"]


async def test_the_worker_heartbeats_at_the_timeout_the_run_asked_for(
    client, module, operator_headers, temporal_settings, temporal_env, sessions
):
    """The API plans a 2 s heartbeat timeout; a worker configured for 60 s must still heartbeat in
    time (it follows the activity's own timeout, beating every 0.67 s), or the 3.5 s step would be
    retried. (1 s left a loaded CI box 0.5 s of slack, and a first beat was once late.)"""
    temporal_settings.heartbeat_timeout_seconds = 2  # the API's (and so the plan's) setting
    worker_settings = temporal_settings.model_copy(update={"heartbeat_timeout_seconds": 60})
    async with running_worker(worker_settings, temporal_env.client):
        job = await _job(client, operator_headers, "slow")
        body = (await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)).json()
    assert body["status"] == "COMPLETED" and body["result"] == "done", body
    assert body["attempt"] == 1


async def test_a_handlers_heartbeat_details_ride_on_the_platforms_beats(
    client, module, operator_headers, temporal_settings, temporal_env, sessions, tmp_path
):
    """``ctx.heartbeat("page", 3)`` once: every later beat of the step carries it after the
    platform's own detail, so the server keeps showing it (before, the next platform beat erased
    it), and the handler's call costs no heartbeat of its own."""
    temporal_settings.heartbeat_timeout_seconds = 2  # a beat every 0.67 s
    marker = tmp_path / "progress"
    seen: list[tuple[Any, list[Any]]] = []
    async with running_worker(temporal_settings, temporal_env.client):
        job = await _job(client, operator_headers, "progress", config={"marker": str(marker)})
        execution_id = (await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)).json()["id"]
        handle = temporal_env.client.get_workflow_handle(f"exec-{execution_id}")

        async def two_beats_with_progress() -> bool:
            if not (tmp_path / "progress.running").exists():
                return False
            pending = (await handle.describe()).raw_description.pending_activities
            if not pending or not pending[0].heartbeat_details.payloads:
                return False
            details = DATA_CONVERTER.payload_converter.from_payloads(pending[0].heartbeat_details.payloads)
            when = pending[0].last_heartbeat_time.ToDatetime()
            if not seen or seen[-1][0] != when:
                seen.append((when, details))
            return len(seen) >= 2 and all(d[1:] == ["page", 3] for _, d in seen[-2:])

        await eventually(two_beats_with_progress, timeout=30, what="two beats that carry the handler's progress")
        (tmp_path / "progress.release").touch()
        row = await _final_row(sessions, execution_id)
    assert all(d[0].get("autoplat_step_beat") == 1 for _, d in seen), seen  # the platform's detail first
    assert row.status == "COMPLETED" and row.attempt == 1, (row.status, row.attempt)


async def test_the_server_sees_a_beat_every_third_of_the_heartbeat_timeout(
    client, module, operator_headers, temporal_settings, temporal_env, sessions, tmp_path
):
    """The SDK holds a heartbeat back for up to 80 % of the timeout by default (2.4 s of 3 s here,
    leaving a beat 0.6 s to arrive); the worker lowers that throttle, so the step's own cadence, a
    third of the timeout, is what the server sees. The median gap is judged: a stall of the box
    may stretch one."""
    temporal_settings.heartbeat_timeout_seconds = 3
    marker = tmp_path / "progress"
    beats: list[Any] = []
    async with running_worker(temporal_settings, temporal_env.client):
        job = await _job(client, operator_headers, "progress", config={"marker": str(marker)})
        execution_id = (await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)).json()["id"]
        handle = temporal_env.client.get_workflow_handle(f"exec-{execution_id}")

        async def six_beats() -> bool:
            pending = (await handle.describe()).raw_description.pending_activities
            if pending and pending[0].HasField("last_heartbeat_time"):
                when = pending[0].last_heartbeat_time.ToDatetime()
                if not beats or beats[-1] != when:
                    beats.append(when)
            return len(beats) >= 6

        await eventually(six_beats, timeout=60, what="six heartbeats of the step")
        (tmp_path / "progress.release").touch()
        row = await _final_row(sessions, execution_id)
    gaps = sorted((b - a).total_seconds() for a, b in zip(beats, beats[1:], strict=False))
    assert gaps[len(gaps) // 2] < 2.0, gaps  # 1 s; the SDK's default throttle gives 2.4 s
    assert row.status == "COMPLETED" and row.attempt == 1, (row.status, row.attempt)


async def test_a_cancel_while_the_end_is_written_still_records_the_end(
    client, worker, module, operator_headers, temporal_env, sessions, engine, tmp_path
):
    """The run is cancelled while ``mirror_finish`` is blocked (the events table is locked, so its
    ``job.failed`` INSERT waits): the write is not abandoned, the row ends FAILED as the workflow
    decided, instead of staying RUNNING for the sweeper."""
    from sqlalchemy import text

    marker = str(tmp_path / "gate")
    job = await _job(client, operator_headers, "gated_failure", config={"marker": marker})
    started = (await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)).json()
    await eventually(lambda: _exists(marker + ".running"), timeout=30, what="the handler to run")
    async with engine.connect() as locker:
        transaction = await locker.begin()
        await locker.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))
        Path(marker + ".release").touch()

        async def finish_blocked() -> bool:
            async with engine.connect() as probe:
                waiting = await probe.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database() AND query ILIKE 'INSERT INTO events%'"
                    )
                )
            return bool(waiting)

        await eventually(finish_blocked, timeout=30, what="mirror_finish to wait on the events table")
        handle = temporal_env.client.get_workflow_handle(started["workflow_id"])
        await handle.cancel()
        await eventually(lambda: _cancel_requested(handle), timeout=30, what="the cancel request to reach the workflow")
        await transaction.rollback()
    failure: BaseException | None = None
    try:
        await asyncio.wait_for(handle.result(), 30)
    except Exception as exc:  # noqa: BLE001 - the run failed: that is the point
        failure = exc
    assert failure is not None and "failed on purpose" in str(failure.__cause__ or failure)
    async with sessions() as s:
        row = await s.get(Execution, started["id"])
    assert row.status == "FAILED" and "failed on purpose" in row.error["message"]
    assert await _event_names(sessions, started["id"]) == ["job.failed", "job.started"]


async def _exists(path: str) -> bool:
    return Path(path).exists()


async def _cancel_requested(handle: Any) -> bool:
    history = await handle.fetch_history()
    return any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED for e in history.events)


async def _running_row(sessions: Any, execution_id: str, attempts: int) -> None:
    async with unit_of_work(sessions) as s:
        s.add(
            Execution(
                id=execution_id,
                module_name="mirrored",
                job_type="hello",
                workflow_id=execution_id,
                trigger="manual",
                status=ExecutionStatus.RUNNING.value,
                steps=[{"name": "hello", "status": "RUNNING", "attempts": attempts, "failures": 0}],
            )
        )


def _step(module: Any, execution_id: str, **extra: Any) -> StepInput:
    return StepInput(
        execution_id=execution_id,
        job_id=None,
        module="mirrored",
        module_version="1.0.0",
        bundle_sha256=module.bundle_sha256,
        job_type="hello",
        step="hello",
        step_index=0,
        handler=module.manifest["jobs"][0]["handler"],
        max_attempts=1,
        timeout_seconds=30,
        trigger="manual",
        finishes_run=True,
        **extra,
    )


async def test_an_attempt_temporal_gave_up_on_does_not_end_the_run(module, temporal_settings, sessions):
    """Attempt 1 lost its heartbeat and attempt 2 started the step: attempt 1, still running
    somewhere, finishing later must not write its result; attempt 2 ends the run."""
    await _running_row(sessions, "exec-stale", attempts=2)
    acts = JobActivities(settings=temporal_settings, sessions=sessions)
    inp = _step(module, "exec-stale")
    stale = await acts._step_finished(inp, 1, "COMPLETED", None, LogBuffer(1000), {"from": 1})
    assert stale == (False, _NOTHING, None)
    async with sessions() as s:
        assert (await s.get(Execution, "exec-stale")).status == "RUNNING"
    latest = await acts._step_finished(inp, 2, "COMPLETED", None, LogBuffer(1000), {"from": 2})
    assert latest == (True, _NOTHING, None)
    async with sessions() as s:
        row = await s.get(Execution, "exec-stale")
    assert row.status == "COMPLETED" and row.result == {"from": 2}
    assert await _event_names(sessions, "exec-stale") == ["job.completed"]


async def test_a_cancel_during_the_end_write_keeps_the_completed_step(module, temporal_settings, sessions):
    """The cancel arrives while the last step's end is being written: once that write has completed
    the run, the step answers its success (the row and the workflow agree) instead of a cancel."""
    await _running_row(sessions, "exec-late-cancel", attempts=0)
    entered, release = asyncio.Event(), asyncio.Event()

    class Paused(JobActivities):
        async def _write_step_end(self, *args: Any) -> Any:
            entered.set()
            await release.wait()
            return await super()._write_step_end(*args)

    acts = Paused(settings=temporal_settings, sessions=sessions)
    payload = DATA_CONVERTER.payload_converter.to_payloads([_step(module, "exec-late-cancel")])[0]
    env = ActivityEnvironment()
    running = asyncio.create_task(env.run(acts.run_step, [RawValue(payload)]))
    await asyncio.wait_for(entered.wait(), 30)
    env.cancel()
    release.set()
    outcome = await asyncio.wait_for(running, 30)
    assert outcome["finalized"] is True and outcome["value"] == {"greeting": "hello world"}
    async with sessions() as s:
        assert (await s.get(Execution, "exec-late-cancel")).status == "COMPLETED"


async def test_mirror_finish_reports_a_run_its_last_step_completed(module, temporal_settings, sessions):
    await _running_row(sessions, "exec-adopted", attempts=1)
    acts = JobActivities(settings=temporal_settings, sessions=sessions)
    inp = _step(module, "exec-adopted")
    assert await acts._step_finished(inp, 1, "COMPLETED", None, LogBuffer(1000), {"ok": True}) == (True, _NOTHING, None)
    env = ActivityEnvironment()
    ended = await env.run(acts.mirror_finish, FinishInput(execution_id="exec-adopted", status="CANCELLED"))
    assert ended == {"status": "COMPLETED", "result": {"ok": True}}
    assert await env.run(acts.mirror_finish, FinishInput(execution_id="exec-adopted", status="COMPLETED")) is None
    async with sessions() as s:
        assert (await s.get(Execution, "exec-adopted")).status == "COMPLETED"
    assert await _event_names(sessions, "exec-adopted") == ["job.completed"]


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_histories_still_replay(path: Path) -> None:
    """Runs in flight during an upgrade continue on the new worker: histories recorded by earlier
    releases replay without a non-determinism error. ``*-7db9a73``: ``mirror_start`` /
    ``mirror_finish`` local activities and plain step results; ``*-85afb8d``: runs that carry their
    plan, step envelopes, the last step ending the run."""
    from temporalio.worker import Replayer

    from workflows.job import JobWorkflow

    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    replayer = Replayer(workflows=[JobWorkflow], data_converter=DATA_CONVERTER)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


def test_the_recorded_histories_are_there() -> None:
    found = {tuple(p.stem.split("-")) for p in HISTORIES.glob("*.json")}
    assert {("pipeline", "7db9a73"), ("flaky", "7db9a73"), ("boom", "7db9a73")} <= found
    assert {("pipeline", "85afb8d"), ("flaky", "85afb8d"), ("boom", "85afb8d"), ("hello", "85afb8d")} <= found
