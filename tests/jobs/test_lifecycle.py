"""Module lifecycle seen from running jobs: hot-plug, disable/enable, upgrade pinning, uninstall.

Every module here goes through the real API (register → install → enable), with a worker that
was already polling before the module existed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from temporalio.service import RPCError, RPCStatusCode

from tests.conftest import eventually
from tests.jobs.helpers import write_module
from workflows.schedules import schedule_id

MODULES = "/api/v1/modules"

GREET = """
async def greet(ctx):
    ctx.logger.info("greeting %s", ctx.config.get("who"))
    return {"greeting": "hello " + ctx.config.get("who", "?"), "module_version": ctx.module_version}
"""
GREET_JOBS = [
    {
        "name": "greet",
        "description": "greets",
        "handler": "greet",
        "config": {"type": "object", "properties": {"who": {"type": "string", "default": "world"}}},
    }
]

# v1 waits for a marker file (the test decides when it may finish); v2 answers at once.
PINNED_V1 = """
import asyncio
from pathlib import Path

async def work(ctx):
    marker = Path(ctx.config["marker"])
    ctx.logger.info("v1 waiting for %s", marker)
    while not marker.exists():
        await asyncio.sleep(0.05)
    return {"version": "1"}
"""
PINNED_V2 = """
async def work(ctx):
    return {"version": "2"}
"""
PINNED_JOBS = [
    {
        "name": "work",
        "description": "versioned work",
        "handler": "work",
        "config": {"type": "object", "properties": {"marker": {"type": "string"}}},
    }
]

TICK = """
def tick(ctx):
    return {"ok": True}
"""
TICK_JOBS = [{"name": "tick", "description": "ticks", "handler": "tick"}]
YEARLY = "0 0 1 1 *"


async def _register(client: Any, headers: dict[str, str], folder: Path, name: str) -> dict[str, Any]:
    """Register, install and enable a module folder through the API."""
    r = await client.post(MODULES, json={"path": str(folder)}, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "REGISTERED"
    r = await client.post(f"{MODULES}/{name}/install", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "INSTALLED"
    r = await client.post(f"{MODULES}/{name}/enable", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ENABLED"
    return r.json()


async def _create_job(client: Any, headers: dict[str, str], module: str, job_type: str, **extra: Any) -> dict[str, Any]:
    body = {"module": module, "job_type": job_type, "name": f"{job_type}-job", "schedule": None, **extra}
    r = await client.post("/api/v1/jobs", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def _schedule(temporal_env: Any, job_id: str) -> Any | None:
    """The Temporal schedule description of a job, or None when it doesn't exist."""
    try:
        return await temporal_env.client.get_schedule_handle(schedule_id(job_id)).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def test_module_registered_after_the_worker_started_runs_without_restart(
    client, worker, admin_headers, operator_headers, tmp_path
):
    # The worker is polling already; the module doesn't exist yet.
    assert (await client.get(f"{MODULES}/hotplug", headers=admin_headers)).status_code == 404
    folder = write_module(tmp_path, name="hotplug", code=GREET, jobs=GREET_JOBS)
    await _register(client, admin_headers, folder, "hotplug")
    job = await _create_job(client, operator_headers, "hotplug", "greet", config={"who": "ops"})

    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "COMPLETED", body
    assert body["result"] == {"greeting": "hello ops", "module_version": "1.0.0"}
    assert body["module"] == "hotplug" and body["module_version"] == "1.0.0"
    assert body["workflow_id"]
    # The run is a workflow of type <module>.<job-type> on the already-running worker.
    desc = await worker.client.get_workflow_handle(body["workflow_id"]).describe()
    assert desc.workflow_type == "hotplug.greet"


async def test_module_disable_pauses_its_schedules_and_enable_resumes_them(
    client, worker, admin_headers, operator_headers, temporal_env, tmp_path
):
    await _register(client, admin_headers, write_module(tmp_path, name="pausing", code=TICK, jobs=TICK_JOBS), "pausing")
    job = await _create_job(client, operator_headers, "pausing", "tick", schedule=YEARLY)
    desc = await _schedule(temporal_env, job["id"])
    assert desc is not None and desc.schedule.state.paused is False

    r = await client.post(f"{MODULES}/pausing/disable", headers=admin_headers)
    assert r.status_code == 200, r.text
    desc = await _schedule(temporal_env, job["id"])
    assert desc is not None, "disabling the module must pause the schedule, not delete it"
    assert desc.schedule.state.paused is True
    assert "DISABLED" in desc.schedule.state.note

    # A manual run of a job of a disabled module is refused, naming the state.
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["details"]["current_state"] == "DISABLED"
    assert "DISABLED" in error["message"]
    runs = (await client.get("/api/v1/executions", params={"job_id": job["id"]}, headers=operator_headers)).json()
    assert runs["total"] == 0

    r = await client.post(f"{MODULES}/pausing/enable", headers=admin_headers)
    assert r.status_code == 200, r.text
    desc = await _schedule(temporal_env, job["id"])
    assert desc is not None and desc.schedule.state.paused is False
    detail = (await client.get(f"/api/v1/jobs/{job['id']}", headers=operator_headers)).json()
    assert detail["schedule_state"]["paused"] is False
    # And the job runs again.
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)
    assert r.status_code == 200 and r.json()["status"] == "COMPLETED", r.text


async def test_upgrade_pins_running_executions_to_their_version(
    client, worker, admin_headers, operator_headers, tmp_path
):
    marker = tmp_path / "release-v1"
    v1 = write_module(tmp_path, name="pinned", version="1.0.0", code=PINNED_V1, jobs=PINNED_JOBS)
    v2 = write_module(tmp_path, name="pinned", version="1.1.0", code=PINNED_V2, jobs=PINNED_JOBS)
    await _register(client, admin_headers, v1, "pinned")
    job = await _create_job(
        client, operator_headers, "pinned", "work", timeout_seconds=60, config={"marker": str(marker)}
    )

    r = await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)
    assert r.status_code == 202, r.text
    first = r.json()

    async def first_running() -> bool:
        row = (await client.get(f"/api/v1/executions/{first['id']}", headers=operator_headers)).json()
        return bool(row["steps"]) and row["steps"][0].get("status") == "RUNNING"

    await eventually(first_running, what="the v1 step running")

    r = await client.post(f"{MODULES}/pinned/upgrade", json={"path": str(v2)}, headers=admin_headers)
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["status"]) == ("1.1.0", "ENABLED")

    # A new run uses the new version while the old one is still running.
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["status"] == "COMPLETED", second
    assert second["result"] == {"version": "2"}
    assert second["module_version"] == "1.1.0"
    row = (await client.get(f"/api/v1/executions/{first['id']}", headers=operator_headers)).json()
    assert row["status"] == "RUNNING"

    # Released, the first run finishes on the code it started with.
    marker.write_text("go")

    async def first_done() -> dict[str, Any] | None:
        row = (await client.get(f"/api/v1/executions/{first['id']}", headers=operator_headers)).json()
        return row if row["status"] not in ("PENDING", "RUNNING") else None

    row = await eventually(first_done, what="the v1 run to finish")
    assert row["status"] == "COMPLETED", row
    assert row["result"] == {"version": "1"}
    assert row["module_version"] == "1.0.0"
    assert row["attempt"] == 1


async def test_uninstall_removes_schedules_and_reinstall_enable_recreates_them(
    client, worker, admin_headers, operator_headers, temporal_env, tmp_path
):
    await _register(
        client, admin_headers, write_module(tmp_path, name="removable", code=TICK, jobs=TICK_JOBS), "removable"
    )
    job = await _create_job(client, operator_headers, "removable", "tick", schedule=YEARLY)
    assert await _schedule(temporal_env, job["id"]) is not None

    # Uninstall is allowed from DISABLED (not from ENABLED).
    r = await client.post(f"{MODULES}/removable/uninstall", headers=admin_headers)
    assert r.status_code == 409, r.text
    assert (await client.post(f"{MODULES}/removable/disable", headers=admin_headers)).status_code == 200
    r = await client.post(f"{MODULES}/removable/uninstall", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "REGISTERED"
    assert await _schedule(temporal_env, job["id"]) is None
    # The job itself is kept, and can't run while its module isn't enabled.
    assert (await client.get(f"/api/v1/jobs/{job['id']}", headers=operator_headers)).status_code == 200
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)
    assert r.status_code == 409 and r.json()["error"]["details"]["current_state"] == "REGISTERED", r.text

    # Installed again: still no schedule (the module isn't enabled yet).
    r = await client.post(f"{MODULES}/removable/install", headers=admin_headers)
    assert r.status_code == 200 and r.json()["status"] == "INSTALLED", r.text
    assert await _schedule(temporal_env, job["id"]) is None

    r = await client.post(f"{MODULES}/removable/enable", headers=admin_headers)
    assert r.status_code == 200, r.text
    desc = await _schedule(temporal_env, job["id"])
    assert desc is not None, "enabling the reinstalled module must recreate its job schedules"
    assert desc.schedule.state.paused is False
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)
    assert r.status_code == 200 and r.json()["status"] == "COMPLETED", r.text


COUNTER = """
async def count(ctx):
    state = await ctx.state.get()
    n = int(state.value.get("n", 0)) + 1
    await ctx.state.set({"n": n})
    ctx.logger.info("counted %d for %s", n, ctx.config.get("who"))
    return {"n": n}
"""


def _counter_jobs(schema_extra: dict[str, Any] | None = None, **create: Any) -> list[dict[str, Any]]:
    who = {"type": "string", "default": "world", **(schema_extra or {})}
    return [
        {
            "name": "count",
            "description": "counts its runs",
            "handler": "count",
            "schedule": {"cron": YEARLY},
            "retries": {"maxAttempts": 4},
            "config": {"type": "object", "properties": {"who": who}},
            "createJob": create or True,
        },
        {"name": "other", "description": "no job asked", "handler": "count"},
    ]


async def test_jobs_from_the_manifest_and_the_upgrade_config_check(
    client, worker, admin_headers, operator_headers, temporal_env, tmp_path
):
    """createJob makes one job on enable (scheduled, idempotent across disable/enable); an upgrade
    whose config schema refuses a job is refused naming it, unless pause_invalid disables it with the
    reason; such a job cannot be enabled until its config is fixed. Along the way: max_attempts,
    the job's state document, wait=true answering the logs, the list filling what the detail does."""
    services: dict[str, Any] = {}  # ctx.state needs no declaration
    await _register(
        client,
        admin_headers,
        write_module(tmp_path, name="counting", code=COUNTER, jobs=_counter_jobs(), extra=services),
        "counting",
    )
    jobs = (await client.get("/api/v1/jobs", params={"module": "counting"}, headers=operator_headers)).json()
    [made] = jobs["items"]
    assert (made["name"], made["job_type"], made["origin"], made["enabled"]) == ("count", "count", "manifest", True)
    assert (made["schedule"], made["max_attempts"], made["retries"]) == (YEARLY, 4, 3)
    assert made["last_execution"] is None and len(made["next_runs"]) == 5 and "schedule_state" not in made
    assert await _schedule(temporal_env, made["id"]) is not None

    # Enabling again does not make a second one.
    assert (await client.post(f"{MODULES}/counting/disable", headers=admin_headers)).status_code == 200
    assert (await client.post(f"{MODULES}/counting/enable", headers=admin_headers)).status_code == 200
    again = (await client.get("/api/v1/jobs", params={"module": "counting"}, headers=operator_headers)).json()
    assert [j["id"] for j in again["items"]] == [made["id"]]

    # wait=true answers the logs (and Link names them); the state document and the list follow.
    r = await client.post(f"/api/v1/jobs/{made['id']}/execute?wait=true", headers=operator_headers)
    assert r.status_code == 200 and r.json()["status"] == "COMPLETED", r.text
    run = r.json()
    assert any(e["message"] == "counted 1 for world" for e in run["logs"])
    assert r.headers["Link"] == f'</api/v1/executions/{run["id"]}/logs>; rel="logs"'
    state = (await client.get(f"/api/v1/jobs/{made['id']}/state", headers=operator_headers)).json()
    assert (state["value"], state["version"]) == ({"n": 1}, 1)
    [listed] = (await client.get("/api/v1/jobs", params={"module": "counting"}, headers=operator_headers)).json()[
        "items"
    ]
    assert listed["last_execution"]["id"] == run["id"] and listed["last_execution"]["status"] == "COMPLETED"

    # max_attempts is the name; retries (deprecated) is still accepted; both disagreeing is a 422.
    r = await client.patch(f"/api/v1/jobs/{made['id']}", json={"retries": 1}, headers=operator_headers)
    assert (r.json()["max_attempts"], r.json()["retries"]) == (2, 1), r.text
    r = await client.patch(
        f"/api/v1/jobs/{made['id']}", json={"max_attempts": 3, "retries": 5}, headers=operator_headers
    )
    assert r.status_code == 422, r.text
    r = await client.patch(f"/api/v1/jobs/{made['id']}", json={"config": {"who": "a"}}, headers=operator_headers)
    assert r.status_code == 200, r.text

    # v2 wants "who" at least 3 characters: the job's "a" no longer fits. Refused, naming it.
    v2 = write_module(
        tmp_path,
        name="counting",
        version="2.0.0",
        code=COUNTER,
        jobs=_counter_jobs({"minLength": 3}),
        extra=services,
    )
    r = await client.post(f"{MODULES}/counting/upgrade", json={"path": str(v2)}, headers=admin_headers)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "jobs_invalid" and "pause_invalid" in error["message"]
    [bad] = error["details"]["invalid_jobs"]
    assert (bad["id"], bad["name"], bad["problems"][0]["field"]) == (made["id"], "count", "config/who")
    module = (await client.get(f"{MODULES}/counting", headers=admin_headers)).json()
    assert module["version"] == "1.0.0"

    r = await client.post(
        f"{MODULES}/counting/upgrade", params={"pause_invalid": "true"}, json={"path": str(v2)}, headers=admin_headers
    )
    assert r.status_code == 200 and r.json()["version"] == "2.0.0", r.text
    paused = (await client.get(f"/api/v1/jobs/{made['id']}", headers=operator_headers)).json()
    assert paused["enabled"] is False and "upgrade of counting to 2.0.0" in paused["paused_reason"]
    assert "config/who" in paused["paused_reason"] and paused["next_runs"] == []
    desc = await _schedule(temporal_env, made["id"])
    assert desc is None or desc.schedule.state.paused is True
    # Still invalid: enabling it is refused; fixed, it runs again and the reason is gone.
    r = await client.post(f"/api/v1/jobs/{made['id']}/enable", headers=operator_headers)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == ["config", "who"], r.text
    r = await client.patch(
        f"/api/v1/jobs/{made['id']}", json={"config": {"who": "abc"}, "enabled": True}, headers=operator_headers
    )
    assert r.status_code == 200 and r.json()["enabled"] is True and r.json()["paused_reason"] is None, r.text
    audit = (await client.get("/api/v1/audit", params={"action": "job.pause"}, headers=admin_headers)).json()
    assert [row["target_id"] for row in audit["items"]] == [made["id"]]
