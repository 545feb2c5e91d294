"""Durability of runs and of their mirror: lost workers, runs closed outside the platform,
idempotent starts, bounded waits, and the mirror's list filters and stats."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from activities.types import JobInput
from registry.models import Execution
from tests.conftest import eventually
from tests.jobs.helpers import put_module, write_module
from workflows.reconcile import sweep_executions

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import asyncio, os
from pathlib import Path
from autoplat import JobError

async def fragile(ctx):
    # One line per attempt: "<attempt> <worker pid>" (a handler runs in a process of its worker),
    # so the test sees which worker ran it.
    with open(ctx.config["log"], "a") as f:
        f.write(f"{ctx.attempt} {os.getppid()}\\n")
    if ctx.attempt == 1:
        await asyncio.Event().wait()  # never fires: only a lost worker ends this attempt
    return {"attempt": ctx.attempt, "pid": os.getppid()}

async def gated(ctx):
    marker = Path(ctx.config["marker"])
    ctx.logger.info("waiting for %s", marker)
    while not marker.exists():
        await asyncio.sleep(0.05)
    return {"released": True}

def ok(ctx):
    return {"ok": True}

def bad(ctx):
    raise JobError("bad input")
"""
CONFIG = {"type": "object", "properties": {"log": {"type": "string"}, "marker": {"type": "string"}}}
JOBS = [
    {"name": "fragile", "description": "hangs on its first attempt", "handler": "fragile", "config": CONFIG},
    {"name": "gated", "description": "waits for a marker file", "handler": "gated", "config": CONFIG},
    {"name": "ok", "description": "succeeds", "handler": "ok"},
    {"name": "bad", "description": "fails", "handler": "bad"},
]
FAST_RETRY = {"initial_interval_seconds": 0.1, "backoff_coefficient": 1}


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Path) -> Any:
    return await put_module(sessions, settings.state_dir, write_module(tmp_path, name="dura", code=CODE, jobs=JOBS))


async def _job(
    client: Any, headers: dict[str, str], job_type: str, module: str = "dura", **extra: Any
) -> dict[str, Any]:
    body = {"module": module, "job_type": job_type, "name": f"{job_type}-job", "schedule": None, **extra}
    r = await client.post("/api/v1/jobs", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def _row(client: Any, headers: dict[str, str], execution_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/v1/executions/{execution_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def _finished(client: Any, headers: dict[str, str], execution_id: str, timeout: float = 20.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        row = await _row(client, headers, execution_id)
        return row if row["status"] not in ("PENDING", "RUNNING") else None

    return await eventually(probe, timeout=timeout, what=f"execution {execution_id} to finish")


def _worker_env(settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOPLAT_")}
    env.update(
        AUTOPLAT_DATABASE_URL=settings.database_url,
        AUTOPLAT_REDIS_URL=settings.redis_url,
        AUTOPLAT_REDIS_PREFIX=settings.redis_prefix,
        AUTOPLAT_TEMPORAL_ADDRESS=settings.temporal_address,
        AUTOPLAT_TASK_QUEUE=settings.task_queue,
        AUTOPLAT_JWT_SECRET=settings.jwt_secret.get_secret_value(),
        AUTOPLAT_HEARTBEAT_TIMEOUT_SECONDS="2",
        AUTOPLAT_STATE_DIR=str(settings.state_dir),
        AUTOPLAT_MAINTENANCE_SCHEDULE="false",
        AUTOPLAT_HANDLER_WRITE_PATHS=",".join(settings.handler_write_paths),
    )
    return env


WORKER_MAIN = (
    "import asyncio\n"
    "from registry.settings import Settings\n"
    "from workflows.worker import run_worker\n"
    "asyncio.run(run_worker(Settings()))\n"
)


async def test_a_worker_killed_mid_step_completes_the_run_on_another_worker(
    client, module, operator_headers, temporal_settings, temporal_env, tmp_path
):
    from workflows.client import connect
    from workflows.worker import WorkerDeps, build_worker

    temporal_settings.heartbeat_timeout_seconds = 2
    attempts_log = tmp_path / "attempts.log"
    job = await _job(client, operator_headers, "fragile", retries=0, retry_backoff=FAST_RETRY,
                     timeout_seconds=60, config={"log": str(attempts_log)})  # fmt: skip

    # Workflow tasks (and the mirror's local activities) run in this process, on a worker that
    # takes no step; the step goes to a worker process started next, which is then SIGKILLed.
    opened: list[WorkerDeps] = []
    tasks: list[tuple[Any, asyncio.Task[None]]] = []

    async def start(**kwargs: Any) -> None:
        # Its own connection, like a worker on another host (the SDK allows one worker per
        # client and task queue).
        deps = WorkerDeps.open(temporal_settings)
        opened.append(deps)
        w = build_worker(await connect(temporal_settings), deps, graceful_shutdown_seconds=2, **kwargs)
        tasks.append((w, asyncio.create_task(w.run())))

    proc: asyncio.subprocess.Process | None = None
    try:
        await start(no_remote_activities=True)
        r = await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)
        assert r.status_code == 202, r.text
        execution_id = r.json()["id"]

        with (tmp_path / "worker.log").open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WORKER_MAIN,
                cwd=str(ROOT), env=_worker_env(temporal_settings), stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip

        async def first_attempt_running() -> bool:
            lines = attempts_log.read_text().splitlines() if attempts_log.exists() else []
            row = await _row(client, operator_headers, execution_id)
            return lines == [f"1 {proc.pid}"] and row["steps"][0]["status"] == "RUNNING"

        # A fresh interpreter imports the platform and starts its handler processes: slow on a busy box.
        await eventually(first_attempt_running, timeout=60, what="attempt 1 running in the worker process")
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        assert (await _row(client, operator_headers, execution_id))["status"] == "RUNNING"

        await start()  # another worker, polling steps too
        row = await _finished(client, operator_headers, execution_id)
        assert row["status"] == "COMPLETED", row
        assert row["result"] == {"attempt": 2, "pid": os.getpid()}
        assert row["attempt"] == 2
        assert row["steps"][0]["status"] == "COMPLETED" and row["steps"][0]["attempts"] == 2
        assert attempts_log.read_text().splitlines() == [f"1 {proc.pid}", f"2 {os.getpid()}"]
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        for w, _ in tasks:
            await w.shutdown()
        await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
        for deps in opened:
            await deps.close()


async def test_sweeper_closes_a_run_terminated_outside_the_platform(
    client, worker, module, operator_headers, temporal_env, sessions, tmp_path
):
    job = await _job(client, operator_headers, "gated", timeout_seconds=60, config={"marker": str(tmp_path / "never")})
    execution_id = (await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)).json()["id"]

    async def running() -> dict[str, Any] | None:
        row = await _row(client, operator_headers, execution_id)
        return row if row["steps"] and row["steps"][0]["status"] == "RUNNING" else None

    row = await eventually(running, what="step running")
    await temporal_env.client.get_workflow_handle(row["workflow_id"]).terminate("by ops")
    # Nothing in the platform wrote the end of the run.
    assert (await _row(client, operator_headers, execution_id))["status"] == "RUNNING"

    report = await sweep_executions(client=temporal_env.client, sessions=sessions, older_than=timedelta(0))
    assert len(report.swept) == 1 and execution_id in report.swept[0]
    assert not report.errors
    swept = await _row(client, operator_headers, execution_id)
    assert swept["status"] == "CANCELLED"
    assert "terminated" in swept["status_reason"]
    assert "terminated" in swept["error"]["message"]
    assert swept["finished_at"] is not None and swept["duration_ms"] is not None

    again = await sweep_executions(client=temporal_env.client, sessions=sessions, older_than=timedelta(0))
    assert again.swept == [] and again.errors == []
    assert await _row(client, operator_headers, execution_id) == swept


async def test_one_mirror_row_per_idempotency_key(client, worker, module, operator_headers):
    job = await _job(client, operator_headers, "ok")
    url = f"/api/v1/jobs/{job['id']}/execute"

    first = await client.post(url, headers={**operator_headers, "Idempotency-Key": "k1"})
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = await client.post(url, headers={**operator_headers, "Idempotency-Key": "k1"})
    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = await client.post(url, headers={**operator_headers, "Idempotency-Key": "k2"})
    assert other.status_code == 202, other.text
    assert other.json()["id"] != first.json()["id"]

    for r in (first, other):
        assert (await _finished(client, operator_headers, r.json()["id"]))["status"] == "COMPLETED"
    # A replay after the run ended answers the same (finished) execution and starts nothing.
    late = await client.post(url, headers={**operator_headers, "Idempotency-Key": "k1"})
    assert late.json()["id"] == first.json()["id"] and late.json()["status"] == "COMPLETED"

    page = (await client.get("/api/v1/executions", params={"job_id": job["id"]}, headers=operator_headers)).json()
    assert page["total"] == 2
    assert sorted(i["idempotency_key"] for i in page["items"]) == ["k1", "k2"]


async def test_concurrent_requests_with_one_idempotency_key_share_one_run(
    client, worker, module, operator_headers, sessions
):
    """A client retrying a request that is still in flight gets the same run, not an error.

    To make the race deterministic, an uncommitted row holding the same key makes both requests
    find no execution and then wait on the unique index; rolled back, it lets them race to insert.
    """
    job = await _job(client, operator_headers, "ok")
    url = f"/api/v1/jobs/{job['id']}/execute"
    headers = {**operator_headers, "Idempotency-Key": "same"}
    async with sessions() as blocker:
        blocker.add(
            Execution(
                id=str(uuid.uuid4()), job_id=job["id"], module_name="dura", job_type="ok",
                workflow_id=f"blocker-{uuid.uuid4()}", trigger="manual", idempotency_key="same",
            )
        )  # fmt: skip
        await blocker.flush()
        requests = [asyncio.create_task(client.post(url, headers=headers)) for _ in range(2)]

        async def both_waiting() -> bool:
            async with sessions() as s:
                waiting = await s.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                )
            return waiting == 2

        await eventually(both_waiting, what="both requests waiting to insert")
        await blocker.rollback()
    outcomes = await asyncio.gather(*requests, return_exceptions=True)
    errors = [repr(o)[:300] for o in outcomes if isinstance(o, BaseException)]
    assert not errors, f"a concurrent replay of the same Idempotency-Key crashed the request: {errors}"
    responses = [o for o in outcomes if not isinstance(o, BaseException)]
    assert sorted(r.status_code for r in responses) == [202, 202], [r.text for r in responses]
    assert responses[0].json()["id"] == responses[1].json()["id"]
    page = (await client.get("/api/v1/executions", params={"job_id": job["id"]}, headers=operator_headers)).json()
    assert page["total"] == 1


async def test_wait_timeout_answers_504_and_the_run_goes_on(client, worker, module, operator_headers, tmp_path):
    marker = tmp_path / "release"
    job = await _job(client, operator_headers, "gated", timeout_seconds=60, config={"marker": str(marker)})
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true&wait_timeout=1", headers=operator_headers)
    assert r.status_code == 504, r.text
    error = r.json()["error"]
    execution_id = error["details"]["execution_id"]
    assert execution_id in error["message"]
    assert error["details"]["location"] == f"/api/v1/executions/{execution_id}"
    assert (await _row(client, operator_headers, execution_id))["status"] == "RUNNING"

    marker.write_text("go")
    row = await _finished(client, operator_headers, execution_id)
    assert row["status"] == "COMPLETED"
    assert row["result"] == {"released": True}


async def test_execution_filters_and_stats(
    client, worker, module, operator_headers, sessions, settings, temporal_env, tmp_path
):
    other = write_module(tmp_path, name="dura-other", code="def ok(ctx):\n    return 1\n", jobs=[JOBS[2]])
    await put_module(sessions, settings.state_dir, other)
    ok = await _job(client, operator_headers, "ok")
    bad = await _job(client, operator_headers, "bad")
    ok_other = await _job(client, operator_headers, "ok", module="dura-other")

    async def run(job: dict[str, Any]) -> dict[str, Any]:
        r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)
        assert r.status_code == 200, r.text
        return r.json()

    a = await run(ok)
    b = await run(bad)
    c = await run(ok_other)
    handle = await temporal_env.client.start_workflow(
        "dura.ok",
        JobInput(job_id=ok["id"], trigger="schedule"),
        id=f"sched-test-{ok['id']}",
        task_queue=worker.task_queue,
    )
    d_id = (await asyncio.wait_for(handle.result(), 20))["execution_id"]
    d = await _row(client, operator_headers, d_id)
    assert [a["status"], b["status"], c["status"], d["status"]] == ["COMPLETED", "FAILED", "COMPLETED", "COMPLETED"]
    assert d["trigger"] == "schedule"

    async def ids(**params: Any) -> set[str]:
        r = await client.get("/api/v1/executions", params={"limit": 100, **params}, headers=operator_headers)
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["total"] == len(page["items"])
        return {i["id"] for i in page["items"]}

    assert await ids() == {a["id"], b["id"], c["id"], d["id"]}
    assert await ids(status="COMPLETED") == {a["id"], c["id"], d["id"]}
    assert await ids(status="FAILED") == {b["id"]}
    assert await ids(status="completed,failed") == {a["id"], b["id"], c["id"], d["id"]}
    assert await ids(trigger="schedule") == {d["id"]}
    assert await ids(trigger="manual") == {a["id"], b["id"], c["id"]}
    assert await ids(module="dura-other") == {c["id"]}
    assert await ids(module="dura") == {a["id"], b["id"], d["id"]}
    assert await ids(job_id=ok["id"]) == {a["id"], d["id"]}
    assert await ids(module="dura", trigger="manual", status="COMPLETED") == {a["id"]}
    # Time range: since is inclusive, until exclusive (on created_at).
    assert await ids(since=b["created_at"]) == {b["id"], c["id"], d["id"]}
    assert await ids(until=b["created_at"]) == {a["id"]}
    assert await ids(since=b["created_at"], until=c["created_at"]) == {b["id"]}
    bad_trigger = await client.get("/api/v1/executions", params={"trigger": "nope"}, headers=operator_headers)
    assert bad_trigger.status_code == 422
    listed = (await client.get("/api/v1/executions", params={"sort": "created_at"}, headers=operator_headers)).json()
    assert [i["id"] for i in listed["items"]] == [a["id"], b["id"], c["id"], d["id"]]
    # Lists leave the heavy JSON columns out unless asked, and say whether a next page exists.
    assert not {"steps", "config", "result", "error"} & set(listed["items"][0])
    assert listed["total_exact"] is True and listed["has_more"] is False
    two = await client.get(
        "/api/v1/executions",
        params={"limit": 2, "include": "result,steps", "sort": "created_at"},
        headers=operator_headers,
    )
    first = two.json()["items"][0]
    assert first["result"] == a["result"] and first["steps"] == a["steps"] and "config" not in first
    assert (two.json()["total"], two.json()["has_more"]) == (4, True)
    last = await client.get("/api/v1/executions", params={"limit": 2, "page": 2}, headers=operator_headers)
    assert (last.json()["total"], last.json()["has_more"], len(last.json()["items"])) == (4, False, 2)
    bad_include = await client.get("/api/v1/executions", params={"include": "logs"}, headers=operator_headers)
    assert bad_include.status_code == 422 and bad_include.json()["error"]["code"] == "validation_error"
    assert bad_include.json()["error"]["details"][0]["loc"] == ["query", "include"]

    r = await client.get("/api/v1/executions/stats", headers=operator_headers)
    assert r.status_code == 200, r.text
    stats = r.json()
    durations = sorted(row["duration_ms"] for row in (a, b, c, d))
    assert stats["total"] == 4
    assert stats["by_status"]["COMPLETED"] == 3 and stats["by_status"]["FAILED"] == 1
    assert stats["by_status"]["RUNNING"] == 0
    assert isinstance(stats["success_rate"], float) and stats["success_rate"] == pytest.approx(0.75)
    assert isinstance(stats["mean_duration_ms"], int | float)
    assert stats["mean_duration_ms"] == pytest.approx(sum(durations) / 4)
    assert isinstance(stats["p95_duration_ms"], int | float)
    assert stats["p95_duration_ms"] == durations[-1]  # nearest rank: ceil(0.95 * 4) = the 4th value
    per_job = {entry["job_id"]: entry for entry in stats["per_job"]}
    assert isinstance(stats["per_job"], list) and set(per_job) == {ok["id"], bad["id"], ok_other["id"]}
    assert per_job[ok["id"]]["total"] == 2 and per_job[ok["id"]]["by_status"] == {"COMPLETED": 2}
    assert per_job[ok["id"]]["success_rate"] == 1.0
    assert per_job[bad["id"]]["success_rate"] == 0.0 and per_job[bad["id"]]["by_status"] == {"FAILED": 1}
    assert per_job[ok_other["id"]]["module"] == "dura-other"

    scoped = (await client.get("/api/v1/executions/stats", params={"module": "dura"}, headers=operator_headers)).json()
    assert scoped["total"] == 3 and scoped["success_rate"] == pytest.approx(2 / 3, abs=1e-3)
    one = (await client.get("/api/v1/executions/stats", params={"job_id": bad["id"]}, headers=operator_headers)).json()
    assert one["total"] == 1 and one["success_rate"] == 0.0
