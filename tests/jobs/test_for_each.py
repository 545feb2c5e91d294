"""``forEach`` steps on a real Temporal dev server: one activity per item of the previous step's
list, at most ``concurrency`` at once, each with the step's attempts; item order, item errors with
and without ``continueOnItemError``, bad input, cancellation, logs and the row's progress, and the
registry work of a run of 200 items."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from registry.models import Execution, ExecutionStatus
from tests.conftest import eventually
from tests.jobs.helpers import put_module, write_module

CODE = """
import fcntl
import json
import time
from pathlib import Path

from autoplat.errors import JobError


def items(ctx):
    return ctx.config.get("items", list(range(int(ctx.config.get("n", 5)))))


def double(ctx, item):
    assert item == ctx.item
    ctx.logger.info("item %s at %s", ctx.item, ctx.item_index)
    if isinstance(item, dict):
        if item.get("fail") == "job":
            raise JobError(f"item {ctx.item_index} refused")
        if item.get("fail") == "once" and ctx.attempt == 1:
            raise RuntimeError("transient")
        if item.get("fail") == "always":
            raise RuntimeError(f"broken {ctx.item_index}")
        return item.get("value")
    return item * 2


def summary(ctx, values):
    ctx.logger.info("summary of %d", len(values))
    return {"values": values, "index": ctx.item_index}


def _update(folder, change):
    with open(Path(folder) / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = Path(folder) / "state.json"
        state = json.loads(path.read_text()) if path.exists() else {"in": 0, "left": 0, "max": 0}
        change(state)
        state["max"] = max(state["max"], state["in"])
        path.write_text(json.dumps(state))
        return state


def counted(ctx, item):
    # Each item stays in flight until every item that may run with it is in flight too: with a
    # concurrency of L, the most ever in flight is exactly L (more would be the platform's fault,
    # fewer would never let the items go).
    folder, total, limit = ctx.config["dir"], int(ctx.config["n"]), int(ctx.config["limit"])
    _update(folder, lambda s: s.update({"in": s["in"] + 1}))
    while True:
        state = _update(folder, lambda s: None)
        if state["in"] >= min(limit, total - state["left"]):
            break
        time.sleep(0.02)  # waiting for the other items, inside the handler
    _update(folder, lambda s: s.update({"in": s["in"] - 1, "left": s["left"] + 1}))
    return item


def held(ctx, item):
    ctx.logger.info("holding item %s", ctx.item_index)
    Path(ctx.config["dir"], f"started-{ctx.item_index}").touch()
    while True:
        ctx.check_cancelled()
        time.sleep(0.05)
"""

CONFIG = {
    "type": "object",
    "properties": {
        "n": {"type": "integer"},
        "items": {},
        "dir": {"type": "string"},
        "limit": {"type": "integer"},
    },
}


def _job(name: str, handler: str, for_each: dict[str, Any], *, attempts: int | None = None) -> dict[str, Any]:
    fan: dict[str, Any] = {"name": "each", "handler": handler, "forEach": for_each, "timeoutSeconds": 60}
    if attempts is not None:
        fan["retries"] = {"maxAttempts": attempts, "initialIntervalSeconds": 0.1}
    return {
        "name": name,
        "description": name,
        "config": CONFIG,
        "steps": [{"name": "items", "handler": "items"}, fan, {"name": "summary", "handler": "summary"}],
    }


JOBS = [
    _job("strict", "double", {"concurrency": 3}),
    _job("lenient", "double", {"concurrency": 3, "continueOnItemError": True}),
    _job("retried", "double", {"continueOnItemError": True}, attempts=2),
    _job("capped", "double", {"maxItems": 3}),
    _job("counted", "counted", {"concurrency": 4}),
    _job("held", "held", {"concurrency": 2}),
    {
        "name": "last",
        "description": "a forEach step last",
        "config": CONFIG,
        "steps": [{"name": "items", "handler": "items"}, {"name": "each", "handler": "double", "forEach": {}}],
    },
]


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Path) -> Any:
    folder = write_module(tmp_path, name="fanout", code=CODE, jobs=JOBS)
    return await put_module(sessions, settings.state_dir, folder)


async def _run(client: Any, headers: dict[str, str], job_type: str, config: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "fanout", "job_type": job_type, "name": f"{job_type}-job", "schedule": None, "config": config},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    r = await client.post(f"/api/v1/jobs/{r.json()['id']}/execute?wait=true", headers=headers)
    assert r.status_code in (200, 201), r.text
    return await _final(client, headers, r.json()["id"])


async def _final(client: Any, headers: dict[str, str], execution_id: str) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        body = (await client.get(f"/api/v1/executions/{execution_id}", headers=headers)).json()
        return body if ExecutionStatus(body["status"]).is_final else None

    return await eventually(final, timeout=60, what="the run to end")


async def _row(sessions: Any, execution_id: str) -> Execution:
    async with sessions() as s:
        return await s.get(Execution, execution_id)


def _log_entries(row: Execution) -> list[dict[str, Any]]:
    return [json.loads(line) for line in row.logs.splitlines() if line]


async def test_items_run_as_activities_and_the_next_step_gets_the_values_in_item_order(
    client, worker, module, operator_headers, sessions
):
    body = await _run(client, operator_headers, "strict", {"n": 7})
    assert body["status"] == "COMPLETED", body
    assert body["result"] == {"values": [0, 2, 4, 6, 8, 10, 12], "index": None}
    row = await _row(sessions, body["id"])
    each = row.steps[1]
    assert (each["name"], each["status"]) == ("each", "COMPLETED")
    assert each["items"] == {"total": 7, "completed": 7, "failed": 0}
    assert [s["status"] for s in row.steps] == ["COMPLETED", "COMPLETED", "COMPLETED"]
    entries = _log_entries(row)
    # Every item's log line is kept, tagged with its index.
    tagged = sorted(e["item"] for e in entries if e.get("message", "").startswith("item "))
    assert tagged == list(range(7))
    assert any(e["message"] == "summary of 7" and "item" not in e for e in entries)


async def test_a_forEach_step_last_is_the_runs_result(client, worker, module, operator_headers):
    body = await _run(client, operator_headers, "last", {"items": [3, 1, 2]})
    assert body["status"] == "COMPLETED" and body["result"] == [6, 2, 4], body


async def test_the_concurrency_limit_is_reached_and_never_exceeded(client, worker, module, operator_headers, tmp_path):
    folder = tmp_path / "counter"
    folder.mkdir()
    body = await _run(client, operator_headers, "counted", {"n": 10, "dir": str(folder), "limit": 4})
    assert body["status"] == "COMPLETED", body
    assert body["result"]["values"] == list(range(10))
    state = json.loads((folder / "state.json").read_text())
    assert state == {"in": 0, "left": 10, "max": 4}


async def test_with_continue_on_item_error_a_failed_item_is_an_error_entry(
    client, worker, module, operator_headers, sessions
):
    items = [{"value": "a"}, {"fail": "always"}, {"value": "c"}, {"fail": "job"}]
    body = await _run(client, operator_headers, "lenient", {"items": items})
    assert body["status"] == "COMPLETED", body
    assert body["result"]["values"] == [
        {"ok": True, "value": "a"},
        {"ok": False, "error": {"message": "RuntimeError: broken 1", "type": "RuntimeError"}},
        {"ok": True, "value": "c"},
        {"ok": False, "error": {"message": "item 3 refused", "type": "JobError"}},
    ]
    row = await _row(sessions, body["id"])
    assert row.steps[1]["status"] == "COMPLETED"
    assert row.steps[1]["items"] == {"total": 4, "completed": 2, "failed": 2}
    errors = [e for e in _log_entries(row) if e["level"] == "ERROR"]
    assert {e["item"] for e in errors} == {1, 3}
    assert any("broken 1" in e["message"] for e in errors)


async def test_without_it_the_first_failed_item_fails_the_run_naming_its_index(
    client, worker, module, operator_headers, sessions
):
    items = [{"value": 1}, {"value": 2}, {"fail": "job"}, {"value": 4}]
    body = await _run(client, operator_headers, "strict", {"items": items})
    assert body["status"] == "FAILED", body
    assert body["error"]["message"] == "item 2 of step each failed: item 2 refused"
    assert body["error"]["type"] == "JobError"
    row = await _row(sessions, body["id"])
    assert [s["status"] for s in row.steps] == ["COMPLETED", "FAILED", "PENDING"]
    assert row.steps[1]["items"]["failed"] == 1
    assert "item 2 of step each failed" in row.steps[1]["error"]
    assert any(e.get("item") == 2 and e["level"] == "ERROR" for e in _log_entries(row))


async def test_each_item_retries_on_its_own_and_keeps_the_logs_of_its_failed_run(
    client, worker, module, operator_headers, sessions
):
    items = [{"value": "x"}, {"fail": "once", "value": "y"}, {"fail": "always"}]
    body = await _run(client, operator_headers, "retried", {"items": items})
    assert body["status"] == "COMPLETED", body
    values = body["result"]["values"]
    assert values[:2] == [{"ok": True, "value": "x"}, {"ok": True, "value": "y"}]
    assert values[2]["ok"] is False and values[2]["error"]["message"] == "RuntimeError: broken 2"
    entries = _log_entries(await _row(sessions, body["id"]))
    # Item 1 ran twice: the failed run's logs are kept with the successful one's.
    assert sorted(e["attempt"] for e in entries if e.get("item") == 1 and e["message"].startswith("item ")) == [1, 2]
    assert any(e.get("item") == 1 and e["attempt"] == 1 and "transient" in e["message"] for e in entries)
    # Item 2 used up both attempts.
    assert sorted(e["attempt"] for e in entries if e.get("item") == 2 and e["level"] == "ERROR") == [1, 2]


@pytest.mark.parametrize(
    ("job_type", "config", "message"),
    [
        (
            "strict",
            {"items": {"not": "a list"}},
            "step each runs once per item of a list, and the previous step returned an object",
        ),
        ("strict", {"items": None}, "step each runs once per item of a list, and the previous step returned null"),
        ("capped", {"n": 4}, "step each got 4 items, over its forEach.maxItems of 3"),
    ],
)
async def test_a_step_given_no_list_or_too_many_items_fails_at_once(
    job_type, config, message, client, worker, module, operator_headers, sessions
):
    body = await _run(client, operator_headers, job_type, config)
    assert body["status"] == "FAILED", body
    assert body["error"]["message"] == message
    row = await _row(sessions, body["id"])
    assert row.steps[1]["status"] == "FAILED" and row.steps[1]["error"] == message
    assert row.steps[0]["failures"] == 0 and row.attempt == 1  # no retry of anything


async def test_cancelling_the_run_cancels_its_running_items_and_keeps_their_logs(
    client, worker, module, operator_headers, sessions, tmp_path
):
    folder = tmp_path / "held"
    folder.mkdir()
    r = await client.post(
        "/api/v1/jobs",
        json={
            "module": "fanout",
            "job_type": "held",
            "name": "held-job",
            "schedule": None,
            "config": {"n": 5, "dir": str(folder)},
        },
        headers=operator_headers,
    )
    job_id = r.json()["id"]
    r = await client.post(f"/api/v1/jobs/{job_id}/execute", headers=operator_headers)
    assert r.status_code in (201, 202), r.text
    execution_id = r.json()["id"]

    async def two_started() -> bool:
        return len(list(folder.glob("started-*"))) == 2

    await eventually(two_started, timeout=30, what="two items in flight")

    async def progress_written() -> bool:
        row = await _row(sessions, execution_id)
        return bool(row.steps and row.steps[1].get("items"))

    await eventually(progress_written, what="the step's progress")
    r = await client.post(f"/api/v1/executions/{execution_id}/cancel", headers=operator_headers)
    assert r.status_code == 202, r.text
    body = await _final(client, operator_headers, execution_id)
    assert body["status"] == "CANCELLED", body
    row = await _row(sessions, execution_id)
    assert row.steps[1]["status"] == "CANCELLED"
    assert row.steps[1]["items"] == {"total": 5, "completed": 0, "failed": 0}
    assert row.steps[2]["status"] == "PENDING"
    entries = _log_entries(row)
    assert sorted(e["item"] for e in entries if e["message"].startswith("holding item")) == [0, 1]
    assert sorted(e["item"] for e in entries if e["message"] == "item cancelled") == [0, 1]
    assert sorted(p.name for p in folder.glob("started-*")) == ["started-0", "started-1"]


async def test_a_run_of_200_items_costs_a_bounded_number_of_statements(
    client, module, operator_headers, sessions, temporal_settings, temporal_env
):
    """The items write nothing themselves: a few reads per worker, a few progress writes per step."""
    from workflows.worker import WorkerDeps, build_worker

    temporal_settings.heartbeat_timeout_seconds = 2
    deps = WorkerDeps.open(temporal_settings)
    statements: Counter[str] = Counter()

    @event.listens_for(deps.engine.sync_engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements[statement.lstrip().split(None, 1)[0].upper()] += 1

    w = build_worker(temporal_env.client, deps, graceful_shutdown_seconds=5)
    task = asyncio.create_task(w.run())
    try:
        body = await _run(client, operator_headers, "lenient", {"n": 200})
    finally:
        await w.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        await deps.close()
    assert body["status"] == "COMPLETED", body
    assert [v["value"] for v in body["result"]["values"]] == [2 * i for i in range(200)]
    row = await _row(sessions, body["id"])
    assert row.steps[1]["items"] == {"total": 200, "completed": 200, "failed": 0}
    assert sum(1 for e in _log_entries(row) if e.get("item") is not None) == 200
    total = sum(statements.values())
    print(f"statements of a run of 200 items: {total} {dict(statements)}")  # noqa: T201 - reported
    assert total < 200, dict(statements)
