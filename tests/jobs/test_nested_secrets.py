"""Secrets nested in a job's config (an object's field, array items) are kept like top-level ones:
encrypted at rest, masked in every answer, write-only, never in a run's Temporal history, and masked
in the logs of the run that uses them."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from tests.jobs.helpers import history_payloads, put_module, write_module
from tests.services.helpers import http_receiver

CODE = """
def use(ctx):
    db = ctx.config["db"]
    url = ctx.config["source"] + "?q=" + db["password"]
    status = ctx.http.get_sync(url).status_code
    ctx.logger.info("fetched %s from %s", status, db["host"])
    return {
        "status": status,
        "host": db["host"],
        "password_ok": db["password"] == "nested-pass-1",
        "tokens_ok": ctx.config["tokens"] == ["tok-secret-2"],
        "servers": [s["name"] for s in ctx.config["servers"]],
        "keys_ok": [s["key"] for s in ctx.config["servers"]] == ["override-key-3"],
        "secrets_hold_only_secrets": ctx.secrets["db"] == {"password": "nested-pass-1"},
    }
"""

CONFIG = {
    "type": "object",
    "properties": {
        "source": {"type": "string"},
        "db": {
            "type": "object",
            "properties": {"host": {"type": "string"}, "password": {"type": "string", "secret": True}},
        },
        "tokens": {"type": "array", "items": {"type": "string", "secret": True}},
        "servers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "key": {"type": "string", "secret": True}},
            },
        },
    },
}
JOBS = [{"name": "use", "description": "uses nested secrets", "handler": "use", "config": CONFIG}]
CLEAR = ("nested-pass-1", "tok-secret-2", "first-key-0", "override-key-3")
#: A plain value the run's result carries: proves the history search reads decoded payloads.
CLEAR_MARK = "db2.internal"


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Any) -> Any:
    extra = {"permissions": {"services": ["http"], "hosts": ["127.0.0.1"]}}
    folder = write_module(tmp_path, name="vault", code=CODE, jobs=JOBS, extra=extra)
    return await put_module(sessions, settings.state_dir, folder)


def _leaks(text: str) -> list[str]:
    return [value for value in CLEAR if value in text]


async def test_nested_secrets_never_leave_in_clear(
    client, worker, module, operator_headers, admin_headers, pg_database, temporal_env, caplog
):
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with http_receiver(**{"data": ("application/json", "{}")}) as source:
        config = {
            "source": f"{source.url}/data",
            "db": {"host": "db.internal", "password": "nested-pass-1"},
            "tokens": ["tok-secret-2"],
            "servers": [{"name": "a", "key": "first-key-0"}],
        }
        r = await client.post(
            "/api/v1/jobs",
            json={"module": "vault", "job_type": "use", "name": "vault-job", "schedule": None, "config": config},
            headers=operator_headers,
        )
        assert r.status_code == 201, r.text
        job = r.json()
        seen.append(r.text)
        assert job["config"]["db"] == {"host": "db.internal", "password": "********"}
        assert job["config"]["tokens"] == ["********"]
        assert job["config"]["servers"] == [{"name": "a", "key": "********"}]

        # Written back as read (masked), with a change beside the secret: the secret is kept.
        edited = {**job["config"], "db": {**job["config"]["db"], "host": "db2.internal"}}
        r = await client.patch(f"/api/v1/jobs/{job['id']}", json={"config": edited}, headers=operator_headers)
        assert r.status_code == 200, r.text
        seen.append(r.text)

        # A per-run override holding a secret of its own.
        r = await client.post(
            f"/api/v1/jobs/{job['id']}/execute?wait=true",
            json={"config": {"servers": [{"name": "b", "key": "override-key-3"}]}},
            headers=operator_headers,
        )
        assert r.status_code == 200, r.text
        run = r.json()
        seen.append(r.text)
        assert run["status"] == "COMPLETED", run
        assert run["result"] == {
            "status": 200,
            "host": "db2.internal",
            "password_ok": True,
            "tokens_ok": True,
            "servers": ["b"],
            "keys_ok": True,
            "secrets_hold_only_secrets": True,
        }
        assert source.requests[-1].path == "/data?q=nested-pass-1"  # the handler really used it

    for path in (
        "/api/v1/jobs",
        f"/api/v1/jobs/{job['id']}",
        f"/api/v1/jobs/{job['id']}/executions",
        "/api/v1/executions?include=steps,config,result,error",
        f"/api/v1/executions/{run['id']}",
        f"/api/v1/executions/{run['id']}/logs",
        "/api/v1/audit",
    ):
        headers = admin_headers if path == "/api/v1/audit" else operator_headers
        r = await client.get(path, headers=headers)
        assert r.status_code == 200, (path, r.text)
        seen.append(r.text)
    assert not _leaks("\n".join(seen))

    logs = (await client.get(f"/api/v1/executions/{run['id']}/logs", headers=operator_headers)).json()
    fetched = [e for e in logs["entries"] if e.get("extra", {}).get("http")]
    assert fetched and fetched[0]["extra"]["http"]["url"].endswith("/data?q=***")

    # At rest: the job and execution rows as the database holds them.
    url = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        jobs = conn.execute("SELECT row_to_json(j)::text FROM jobs j").fetchall()
        executions = conn.execute("SELECT row_to_json(e)::text FROM executions e").fetchall()
        events = conn.execute("SELECT row_to_json(e)::text FROM events e").fetchall()
    assert not _leaks("\n".join(r[0] for r in jobs + executions + events))

    # Temporal: the run's whole history (workflow input, activity inputs and results).
    history = await temporal_env.client.get_workflow_handle(run["workflow_id"]).fetch_history()
    payloads = history_payloads(history.to_json_dict())
    assert any(CLEAR_MARK in p for p in payloads), "the search must see the run's decoded payloads"
    assert not _leaks("\n".join(payloads))

    # The processes' own log lines (worker, API, httpx).
    assert not _leaks("\n".join(record.getMessage() for record in caplog.records))
