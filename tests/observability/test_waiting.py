"""Why is my run waiting: the reason read from Temporal for a run no worker polls for, a module
disabled meanwhile, a step in retry backoff; and GET /workers from the task queue's pollers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import update

from registry.db import unit_of_work
from registry.models import Module
from tests.conftest import api_client, eventually, running_worker
from tests.jobs.helpers import put_module, write_module

CODE = """
def hello(ctx):
    return {"ok": True}

def flaky(ctx):
    raise RuntimeError("upstream down")
"""

JOBS = [
    {"name": "hello", "description": "ok", "handler": "hello"},
    {
        "name": "flaky",
        "description": "always fails, retries late",
        "handler": "flaky",
        "retries": {"maxAttempts": 3, "initialIntervalSeconds": 60, "backoffCoefficient": 1},
    },
]


@pytest.fixture
async def wait_module(sessions: Any, settings: Any, tmp_path: Any) -> str:
    name = f"wait{uuid.uuid4().hex[:6]}"
    folder = write_module(tmp_path, name=name, code=CODE, jobs=JOBS, package=name)
    await put_module(sessions, settings.state_dir, folder)
    return name


async def _job(api: Any, headers: dict[str, str], module: str, job_type: str) -> str:
    r = await api.post(
        "/api/v1/jobs",
        json={"module": module, "job_type": job_type, "name": f"{job_type}-job", "schedule": None},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_a_run_no_worker_polls_for_says_so_until_a_worker_comes(
    temporal_settings, temporal_env, engine, sessions, wait_module, operator_headers, viewer_headers
):
    settings = temporal_settings
    async with api_client(settings) as api:
        job_id = await _job(api, operator_headers, wait_module, "hello")
        r = await api.post(f"/api/v1/jobs/{job_id}/execute", headers=operator_headers)
        assert r.status_code == 202, r.text
        execution_id = r.json()["id"]

        r = await api.get(f"/api/v1/executions/{execution_id}", headers=viewer_headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "PENDING"
        waiting = body["waiting"]
        assert waiting["code"] == "no_worker" and waiting["task_queue"] == settings.task_queue, waiting
        assert settings.task_queue in waiting["message"] and waiting["since"] is not None
        r = await api.get("/api/v1/workers", headers=viewer_headers)
        assert r.status_code == 200 and r.json() == {"task_queues": [settings.task_queue], "workers": []}, r.text

        # The module disabled meanwhile: that is the reason now (the run will be skipped).
        async with unit_of_work(sessions) as session:
            await session.execute(update(Module).where(Module.name == wait_module).values(status="DISABLED"))
        r = await api.get(f"/api/v1/executions/{execution_id}", headers=viewer_headers)
        assert r.json()["waiting"]["code"] == "module_disabled", r.text
        async with unit_of_work(sessions) as session:
            await session.execute(update(Module).where(Module.name == wait_module).values(status="ENABLED"))

        async with running_worker(settings, temporal_env.client):

            async def done() -> dict[str, Any] | None:
                r = await api.get(f"/api/v1/executions/{execution_id}", headers=viewer_headers)
                return r.json() if r.json()["status"] == "COMPLETED" else None

            finished = await eventually(done, timeout=30, what="the run to complete once a worker polls")
            assert finished["waiting"] is None
            r = await api.get("/api/v1/workers", headers=viewer_headers)
            assert r.status_code == 200, r.text
            workers = r.json()["workers"]
            assert len(workers) == 1, workers
            assert workers[0]["task_queue"] == settings.task_queue
            assert workers[0]["task_types"] == ["activity", "workflow"]
            assert workers[0]["identity"] and workers[0]["last_seen"] is not None


async def test_a_step_in_retry_backoff_says_until_when(
    temporal_settings, temporal_env, engine, wait_module, operator_headers, viewer_headers
):
    settings = temporal_settings
    async with api_client(settings) as api, running_worker(settings, temporal_env.client):
        job_id = await _job(api, operator_headers, wait_module, "flaky")
        r = await api.post(f"/api/v1/jobs/{job_id}/execute", headers=operator_headers)
        assert r.status_code == 202, r.text
        execution_id = r.json()["id"]

        async def backing_off() -> dict[str, Any] | None:
            r = await api.get(f"/api/v1/executions/{execution_id}", headers=viewer_headers)
            waiting = r.json()["waiting"]
            return waiting if waiting and waiting["code"] == "retry_backoff" else None

        waiting = await eventually(backing_off, timeout=30, what="the step's first failure")
        until = datetime.fromisoformat(waiting["until"])
        assert until > datetime.now(UTC), waiting
        assert waiting["attempt"] == 2 and "upstream down" in waiting["message"], waiting
        r = await api.post(f"/api/v1/executions/{execution_id}/cancel", headers=operator_headers)
        assert r.status_code in (200, 202), r.text
