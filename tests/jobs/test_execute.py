"""Manual runs end to end: API → Temporal → worker → handler → mirror row."""

from __future__ import annotations

from typing import Any

import pytest

from tests.jobs.helpers import put_module, write_module

CODE = """
import asyncio, time
from autoplat import JobError

def hello(ctx):
    ctx.logger.info("hello %s", ctx.config.get("who"))
    return {"greeting": "hello " + ctx.config.get("who", "?"), "attempt": ctx.attempt}

async def boom(ctx):
    ctx.logger.info("about to fail")
    raise JobError("bad input", details={"field": "x"})

def flaky(ctx):
    ctx.logger.info("attempt %d", ctx.attempt)
    if ctx.attempt < 3:
        raise RuntimeError("transient")
    return {"ok": ctx.attempt}

def secretive(ctx):
    return {"token_ok": ctx.config.get("token") == "s3cret", "secret_ok": ctx.secrets.get("token") == "s3cret"}

def first(ctx):
    return 2

def second(ctx, previous):
    return previous * 10
"""

JOBS = [
    {
        "name": "hello",
        "description": "greets",
        "handler": "hello",
        "config": {"type": "object", "properties": {"who": {"type": "string", "default": "world"}}},
    },
    {"name": "boom", "description": "fails", "handler": "boom"},
    {
        "name": "flaky",
        "description": "fails twice",
        "handler": "flaky",
        "retries": {"maxAttempts": 3, "initialIntervalSeconds": 1, "backoffCoefficient": 1},
    },
    {
        "name": "secretive",
        "description": "reads a secret",
        "handler": "secretive",
        "config": {
            "type": "object",
            "properties": {"token": {"type": "string", "secret": True}, "who": {"type": "string", "default": "x"}},
        },
    },
    {
        "name": "pipeline",
        "description": "two steps",
        "steps": [{"name": "first", "handler": "first"}, {"name": "second", "handler": "second"}],
    },
]


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Any) -> Any:
    folder = write_module(tmp_path, name="demo", code=CODE, jobs=JOBS)
    return await put_module(sessions, settings.state_dir, folder)


async def create_job(client: Any, headers: dict[str, str], job_type: str, **extra: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "demo", "job_type": job_type, "name": f"{job_type}-job", "schedule": None, **extra},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return r.json()


async def test_wait_true_returns_the_handler_result(client, worker, module, operator_headers):
    job = await create_job(client, operator_headers, "hello", config={"who": "ops"})
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "COMPLETED"
    assert body["result"] == {"greeting": "hello ops", "attempt": 1}
    assert body["config"] == {"who": "ops"}
    assert body["trigger"] == "manual"
    detail = (await client.get(f"/api/v1/executions/{body['id']}", headers=operator_headers)).json()
    assert any(e["message"] == "hello ops" for e in detail["logs"])
    assert detail["temporal_url"].endswith("/history")


async def test_second_run_now_runs_again(client, worker, module, operator_headers):
    job = await create_job(client, operator_headers, "hello")
    ids = set()
    for _ in range(2):
        r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)
        assert r.json()["status"] == "COMPLETED"
        ids.add(r.json()["id"])
    assert len(ids) == 2
    page = (await client.get(f"/api/v1/jobs/{job['id']}/executions", headers=operator_headers)).json()
    assert page["total"] == 2


async def test_job_error_fails_without_retry_and_keeps_logs(client, worker, module, operator_headers):
    job = await create_job(client, operator_headers, "boom", retries=3)
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)
    body = r.json()
    assert body["status"] == "FAILED"
    assert body["error"]["message"] == "bad input"
    assert body["attempt"] == 1
    logs = (await client.get(f"/api/v1/executions/{body['id']}/logs", headers=operator_headers)).json()
    messages = [e["message"] for e in logs["entries"]]
    assert "about to fail" in messages


async def test_retries_record_attempt_numbers(client, worker, module, operator_headers):
    job = await create_job(
        client,
        operator_headers,
        "flaky",
        retries=2,
        retry_backoff={"initial_interval_seconds": 0.1, "backoff_coefficient": 1},
    )
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)
    body = r.json()
    assert body["status"] == "COMPLETED", body
    assert body["result"] == {"ok": 3}
    assert body["attempt"] == 3
    logs = (await client.get(f"/api/v1/executions/{body['id']}/logs", headers=operator_headers)).json()
    attempts = [e["message"] for e in logs["entries"] if e["message"].startswith("attempt")]
    assert attempts == ["attempt 1", "attempt 2", "attempt 3"]


async def test_retries_exhausted_fail(client, worker, module, operator_headers):
    job = await create_job(
        client,
        operator_headers,
        "flaky",
        retries=1,
        retry_backoff={"initial_interval_seconds": 0.1, "backoff_coefficient": 1},
    )
    body = (await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)).json()
    assert body["status"] == "FAILED"
    assert body["attempt"] == 2
    assert "transient" in body["error"]["message"]


async def test_steps_pass_results(client, worker, module, operator_headers):
    job = await create_job(client, operator_headers, "pipeline")
    body = (await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)).json()
    assert body["status"] == "COMPLETED"
    assert body["result"] == 20
    assert [s["name"] for s in body["steps"]] == ["first", "second"]
    assert all(s["status"] == "COMPLETED" for s in body["steps"])


async def test_secret_override_reaches_the_handler_but_not_history_or_responses(
    client, worker, module, operator_headers, temporal_env
):
    job = await create_job(client, operator_headers, "secretive")
    r = await client.post(
        f"/api/v1/jobs/{job['id']}/execute?wait=true", json={"config": {"token": "s3cret"}}, headers=operator_headers
    )
    body = r.json()
    assert body["status"] == "COMPLETED", body
    assert body["result"] == {"token_ok": True, "secret_ok": True}
    assert body["config"]["token"] == "********" and "s3cret" not in r.text
    history = await temporal_env.client.get_workflow_handle(body["workflow_id"]).fetch_history()
    assert "s3cret" not in history.to_json()
    retried = (await client.post(f"/api/v1/executions/{body['id']}/retry", headers=operator_headers)).json()
    final = (await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)).json()
    assert final["result"] == {"token_ok": False, "secret_ok": False}  # the override was for one run only

    async def retried_done() -> dict | None:
        row = (await client.get(f"/api/v1/executions/{retried['id']}", headers=operator_headers)).json()
        return row if row["status"] == "COMPLETED" else None

    from tests.conftest import eventually

    row = await eventually(retried_done, what="retried run")
    assert row["result"] == {"token_ok": True, "secret_ok": True}


async def test_invalid_override_is_a_422(client, module, operator_headers, temporal_settings):
    job = await create_job(client, operator_headers, "hello")
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute", json={"config": {"who": 42}}, headers=operator_headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"][:3] == ["body", "config", "who"]


async def test_histories_replay_deterministically(client, worker, module, operator_headers, temporal_env):
    """The job workflow runs outside Temporal's sandbox (platform code only, for speed): replaying
    real histories (steps, retries, failure) against it must not raise a non-determinism error."""
    from temporalio.worker import Replayer

    from workflows.client import DATA_CONVERTER
    from workflows.job import JobWorkflow

    workflow_ids = []
    for job_type, extra in (
        ("pipeline", {}),
        ("flaky", {"retries": 2, "retry_backoff": {"initial_interval_seconds": 0.1, "backoff_coefficient": 1}}),
        ("boom", {}),
    ):
        job = await create_job(client, operator_headers, job_type, **extra)
        body = (await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)).json()
        assert body["status"] in {"COMPLETED", "FAILED"}, body
        workflow_ids.append(body["workflow_id"])
    replayer = Replayer(workflows=[JobWorkflow], data_converter=DATA_CONVERTER)
    for workflow_id in workflow_ids:
        history = await temporal_env.client.get_workflow_handle(workflow_id).fetch_history()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, (workflow_id, result.replay_failure)
