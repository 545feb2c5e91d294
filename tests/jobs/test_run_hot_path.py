"""A manual run's three transactions (start, first step's prepare, last step's end) and what a
process keeps of a module between runs (its manifest and config, per revision of its row): a run
always gets the module as the registry has it at that moment."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from registry.db import unit_of_work
from registry.models import Event, Execution, Job
from registry.services.common import Actor
from tests.jobs.helpers import put_module, write_module
from workflows.control import Runner

CODE = """
def show(ctx):
    return {"region": ctx.module_config.get("region"), "has_key": ctx.secrets.get("key") == "s3cret"}
"""
MODULE_CONFIG = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "default": "eu"},
        "key": {"type": "string", "secret": True},
    },
}


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Any) -> Any:
    folder = write_module(
        tmp_path,
        name="cached",
        code=CODE,
        jobs=[{"name": "show", "description": "shows its module config", "handler": "show"}],
        extra={"config": MODULE_CONFIG},
    )
    return await put_module(sessions, settings.state_dir, folder)


async def _job(client: Any, headers: dict[str, str]) -> str:
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "cached", "job_type": "show", "name": "show-job", "schedule": None},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _run(client: Any, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    r = await client.post(f"/api/v1/jobs/{job_id}/execute?wait=true", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "COMPLETED", body
    return body


async def test_each_run_gets_its_module_config_as_the_registry_has_it_now(
    client, worker, module, operator_headers, admin_headers
):
    """The first run leaves the module's manifest and config cached (API and worker share this
    process here); a change of the config, then of the module's status, is seen by the next run."""
    job_id = await _job(client, operator_headers)
    assert (await _run(client, operator_headers, job_id))["result"] == {"region": "eu", "has_key": False}

    r = await client.put(
        "/api/v1/modules/cached/config", json={"config": {"region": "us", "key": "s3cret"}}, headers=admin_headers
    )
    assert r.status_code == 200, r.text
    assert (await _run(client, operator_headers, job_id))["result"] == {"region": "us", "has_key": True}

    assert (await client.post("/api/v1/modules/cached/disable", headers=admin_headers)).status_code == 200
    r = await client.post(f"/api/v1/jobs/{job_id}/execute", headers=operator_headers)
    assert r.status_code == 409 and r.json()["error"]["details"]["current_state"] == "DISABLED", r.text


@contextmanager
def _sent() -> Iterator[list[tuple[int, str, str]]]:
    """What the process sends while inside, on every engine (the worker has its own): (connection,
    statement, its parameters) and (connection, ``COMMIT``, "")."""
    sent: list[tuple[int, str, str]] = []

    def statement(conn: Any, _cursor: Any, text: str, parameters: Any, *_: Any) -> None:
        sent.append((id(conn), " ".join(text.split()), repr(parameters)))

    def commit(conn: Any) -> None:
        sent.append((id(conn), "COMMIT", ""))

    event.listen(Engine, "before_cursor_execute", statement)
    event.listen(Engine, "commit", commit)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", statement)
        event.remove(Engine, "commit", commit)


def _about(sent: list[tuple[int, str, str]], *ids: str) -> list[str]:
    """The statements whose parameters name one of ``ids``, each transaction's ``COMMIT`` after
    them (other work of the process, like the worker's start-up sweep, is left out)."""
    out: list[str] = []
    open_on: set[int] = set()
    for conn, text, parameters in sent:
        if text == "COMMIT":
            if conn in open_on:
                open_on.discard(conn)
                out.append(text)
        elif any(i in parameters for i in ids):
            open_on.add(conn)
            out.append(text)
    return out


async def test_a_manual_run_takes_three_statements_per_transaction(
    worker, module, temporal_settings, temporal_env, sessions
):
    """Start (job and module read joined, the PENDING row, the audit row), the step's prepare (the
    row locked with its job and module joined, one UPDATE, ``job.started``) and its end (the row
    locked, one UPDATE, ``job.completed``): nine statements and three commits once the module is
    known to the process. The run still leaves its full record."""
    async with unit_of_work(sessions) as s:
        job = Job(module_id=module.id, module_name="cached", job_type="show", name="show-job")
        s.add(job)
        await s.flush()
        job_id = job.id

    async def client_factory() -> Any:
        return temporal_env.client

    runner = Runner(settings=temporal_settings, sessions=sessions, client_factory=client_factory)

    async def run() -> Any:
        execution, created = await runner.start_job(job_id=job_id, actor=Actor.system("test"))
        assert created
        result = await asyncio.wait_for(temporal_env.client.get_workflow_handle(execution.workflow_id).result(), 30)
        assert result["status"] == "COMPLETED", result
        return execution

    await run()  # the module's revision is now known to this process
    with _sent() as sent:
        execution = await run()
    seen = _about(sent, job_id, execution.id)
    verbs = [s.split(" ", 1)[0] for s in seen]
    assert verbs == [
        "SELECT",
        "INSERT",
        "INSERT",
        "COMMIT",
        "SELECT",
        "UPDATE",
        "INSERT",
        "COMMIT",
        "SELECT",
        "UPDATE",
        "INSERT",
        "COMMIT",
    ], seen
    assert "modules.manifest" not in " ".join(seen)  # the manifest was read once, by the first run

    async with sessions() as s:
        row = await s.get(Execution, execution.id)
        names = sorted(await s.scalars(select(Event.name).where(Event.execution_id == execution.id)))
    assert row.status == "COMPLETED" and row.result == {"region": "eu", "has_key": False}
    assert row.started_at and row.finished_at and row.duration_ms is not None and row.attempt == 1
    assert row.run_id and row.module_version == "1.0.0" and row.config == {}
    assert [(s["name"], s["status"], s["attempts"]) for s in row.steps] == [("show", "COMPLETED", 1)]
    assert names == ["job.completed", "job.started"]
