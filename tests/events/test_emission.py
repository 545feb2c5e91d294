"""Emission end to end: handlers' ``ctx.emit`` / ``ctx.emit_sync`` on a real worker start listening
jobs, correlated to the emitting execution; runs emit job.* lifecycle events."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from registry.models import Event
from tests.conftest import eventually
from tests.jobs.helpers import put_module, write_module

CODE = """
import time
from autoplat import JobError

async def produce(ctx):
    event_id = await ctx.emit("demo.produced", {"n": ctx.config.get("n", 1)})
    return {"event_id": event_id}

def produce_sync(ctx):
    return {"event_id": ctx.emit_sync("demo.produced", {"n": 2})}

def consume(ctx):
    return {"got": ctx.event["payload"], "source": ctx.event["source"]}

def fails(ctx):
    raise JobError("no")

def slow(ctx):
    while not ctx.is_cancelled():
        time.sleep(0.05)
"""

JOBS = [
    {"name": "produce", "description": "emits", "handler": "produce"},
    {"name": "produce-sync", "description": "emits from a sync handler", "handler": "produce_sync"},
    {"name": "consume", "description": "listens", "handler": "consume"},
    {"name": "fails", "description": "fails", "handler": "fails"},
    {"name": "slow", "description": "runs until stopped", "handler": "slow", "timeoutSeconds": 1},
]
LISTENERS = {"events": {"listeners": [{"pattern": "demo.*", "job": "consume"}]}}


async def create_job(client: Any, headers: dict[str, str], job_type: str, **extra: Any) -> str:
    name = f"{job_type}-{extra.get('timeout_seconds', '')}"
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "emitter", "job_type": job_type, "name": name, "schedule": None, **extra},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def run(client: Any, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    r = await client.post(f"/api/v1/jobs/{job_id}/execute?wait=true", headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


# ``worker`` first: the API's background dispatcher must see the test's task queue.
async def test_emitted_events_start_listeners_and_are_correlated(
    worker, client, sessions, settings, tmp_path, operator_headers
):
    await put_module(
        sessions, settings.state_dir, write_module(tmp_path, name="emitter", code=CODE, jobs=JOBS, extra=LISTENERS)
    )
    consume = await create_job(client, operator_headers, "consume")
    for job_type in ("produce", "produce-sync"):
        producer = await run(client, operator_headers, await create_job(client, operator_headers, job_type))
        assert producer["status"] == "COMPLETED", producer
        event_id = producer["result"]["event_id"]
        event = (await client.get(f"/api/v1/events/{event_id}", headers=operator_headers)).json()
        assert (event["name"], event["source"], event["execution_id"]) == ("demo.produced", "emitter", producer["id"])

        async def consumed(event_id: str = event_id) -> list[dict[str, Any]]:
            page = await client.get(
                "/api/v1/executions",
                params={"job_id": consume, "trigger": "event", "status": "COMPLETED", "include": "result"},
                headers=operator_headers,
            )
            return [e for e in page.json()["items"] if e["event_id"] == event_id]

        (execution,) = await eventually(consumed, timeout=30, what=f"consume triggered by {job_type}")
        assert execution["result"]["source"] == "emitter"
        assert execution["result"]["got"]["n"] in (1, 2)


async def test_runs_emit_lifecycle_events(worker, client, sessions, settings, tmp_path, operator_headers):
    await put_module(sessions, settings.state_dir, write_module(tmp_path, name="emitter", code=CODE, jobs=JOBS))
    ok = await run(client, operator_headers, await create_job(client, operator_headers, "produce"))
    failed = await run(client, operator_headers, await create_job(client, operator_headers, "fails"))
    timed_out = await run(
        client, operator_headers, await create_job(client, operator_headers, "slow", timeout_seconds=1)
    )
    assert (ok["status"], failed["status"], timed_out["status"]) == ("COMPLETED", "FAILED", "TIMED_OUT")
    slow = await create_job(client, operator_headers, "slow", timeout_seconds=60)
    started = (await client.post(f"/api/v1/jobs/{slow}/execute", headers=operator_headers)).json()

    async def running() -> bool:
        row = (await client.get(f"/api/v1/executions/{started['id']}", headers=operator_headers)).json()
        return row["status"] == "RUNNING"

    await eventually(running, timeout=30, what="slow run started")
    r = await client.post(f"/api/v1/executions/{started['id']}/cancel", headers=operator_headers)
    assert r.status_code in (200, 202), r.text

    async def names_by_execution() -> dict[str, list[str]]:
        async with sessions() as session:
            rows = (await session.execute(select(Event.execution_id, Event.name).order_by(Event.seq))).all()
        found: dict[str, list[str]] = {}
        for execution_id, name in rows:
            if name.startswith("job."):
                found.setdefault(execution_id, []).append(name)
        return found

    async def all_ended() -> dict[str, list[str]] | None:
        found = await names_by_execution()
        return found if len(found.get(started["id"], [])) == 2 else None

    found = await eventually(all_ended, timeout=30, what="job.cancelled recorded")
    assert found[ok["id"]] == ["job.started", "job.completed"]
    assert found[failed["id"]] == ["job.started", "job.failed"]
    assert found[timed_out["id"]] == ["job.started", "job.timed_out"]
    assert found[started["id"]] == ["job.started", "job.cancelled"]
    async with sessions() as session:
        event = await session.scalar(
            select(Event).where(Event.execution_id == failed["id"], Event.name == "job.failed")
        )
    assert event is not None and event.source == "platform" and event.module_name == "emitter"
    assert event.payload["status"] == "FAILED"


async def test_event_chains_stop_at_the_chain_guard(worker, client, sessions, settings, tmp_path, operator_headers):
    """Two jobs that each react to the other's job.completed would ping-pong forever."""
    from registry.services.dispatch import MAX_EVENT_CHAIN
    from tests.events.helpers import add_job, listening_module

    module = await listening_module(sessions, settings.state_dir, tmp_path)
    ping = await add_job(sessions, module, "refresh", name="ping", event_triggers=["job.completed"])
    await add_job(sessions, module, "refresh", name="pong", event_triggers=["job.completed"])
    r = await client.post(f"/api/v1/jobs/{ping.id}/execute?wait=true", headers=operator_headers)
    assert r.json()["status"] == "COMPLETED", r.text

    async def guarded() -> Event | None:
        async with sessions() as session:
            return await session.scalar(select(Event).where(Event.dispatch_error.like("%loop guard%")))

    stopped = await eventually(guarded, timeout=60, what="the chain guard to stop the ping-pong")
    assert stopped.name == "job.completed"
    page = await client.get("/api/v1/executions", params={"module": "listen", "limit": 100}, headers=operator_headers)
    # The manual run plus MAX_EVENT_CHAIN - 1 runs triggered along the chain, and nothing after.
    assert page.json()["total"] == MAX_EVENT_CHAIN


async def test_fan_out_chains_stop_at_the_run_budget(
    worker, client, sessions, settings, tmp_path, operator_headers, monkeypatch
):
    """Three jobs each reacting to every job.completed double the runs at each link: the run
    budget per root stops the tree long before the depth limit would."""
    from registry.models import Execution, ExecutionStatus
    from registry.services import dispatch
    from tests.events.helpers import add_job, listening_module

    monkeypatch.setattr(dispatch, "MAX_CHAIN_RUNS", 12)
    module = await listening_module(sessions, settings.state_dir, tmp_path)
    jobs = [
        await add_job(sessions, module, "refresh", name=f"fan-{n}", event_triggers=["job.completed"]) for n in range(3)
    ]
    r = await client.post(f"/api/v1/jobs/{jobs[0].id}/execute?wait=true", headers=operator_headers)
    assert r.json()["status"] == "COMPLETED", r.text

    async def settled() -> int | None:
        async with sessions() as session:
            guard = await session.scalar(select(Event).where(Event.dispatch_error.like("%would exceed 12 runs%")))
            pending = await session.scalar(select(Event).where(Event.dispatch_status == "PENDING"))
            rows = list(await session.scalars(select(Execution)))
        if guard is None or pending is not None or not all(ExecutionStatus(e.status).is_final for e in rows):
            return None
        return len(rows)

    total = await eventually(settled, timeout=90, what="the fan-out stopped by the run budget")
    # Each completed run has two targets (the loop guard drops its own job), so the tree grows
    # 1, 3, 5, ... runs: dispatched one event at a time it stops at 11, the last odd count whose
    # next pair would exceed 12. Concurrent dispatch loops may each admit one event's pair on the
    # same count.
    assert 12 - 2 < total <= 12 + dispatch.DISPATCH_CONCURRENCY * 2, total


SPOOF = """
async def spoof(ctx):
    try:
        await ctx.emit(ctx.config["name"], {"forged": True})
    except Exception as exc:
        return {"refused": str(exc)}
    return {"refused": None}
"""


async def test_modules_cannot_emit_the_platforms_event_names(
    worker, client, sessions, settings, tmp_path, operator_headers
):
    jobs = [{"name": "spoof", "description": "forges platform events", "handler": "spoof"}]
    await put_module(sessions, settings.state_dir, write_module(tmp_path, name="emitter", code=SPOOF, jobs=jobs))
    for name in ("job.completed", "module.enabled", "alert.fired", "incident.resolved", "schedule.fired"):
        r = await client.post(
            "/api/v1/jobs",
            json={"module": "emitter", "job_type": "spoof", "name": name, "schedule": None, "config": {"name": name}},
            headers=operator_headers,
        )
        assert r.status_code == 201, r.text
        execution = await run(client, operator_headers, r.json()["id"])
        assert execution["status"] == "COMPLETED", execution
        assert "reserved" in (execution["result"]["refused"] or ""), execution["result"]
    async with sessions() as session:
        forged = await session.scalars(select(Event).where(Event.module_name == "emitter", Event.source == "emitter"))
        assert list(forged) == []


POISON = """
async def poison(ctx):
    deep = {}
    for _ in range(80):
        deep = {"d": deep}
    refused = {}
    for label, payload in (("deep", deep), ("nan", {"x": float("nan")}), ("nul", {"x": "a\\x00b"})):
        try:
            await ctx.emit("poison.test", payload)
            refused[label] = None
        except Exception as exc:
            refused[label] = type(exc).__name__
    return refused
"""


async def test_modules_cannot_emit_payloads_the_api_refuses(
    worker, client, sessions, settings, tmp_path, operator_headers
):
    jobs = [{"name": "poison", "description": "emits poison", "handler": "poison"}]
    await put_module(sessions, settings.state_dir, write_module(tmp_path, name="poisoner", code=POISON, jobs=jobs))
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "poisoner", "job_type": "poison", "name": "poison", "schedule": None},
        headers=operator_headers,
    )
    assert r.status_code == 201, r.text
    execution = await run(client, operator_headers, r.json()["id"])
    assert execution["status"] == "COMPLETED", execution
    assert execution["result"] == {"deep": "InvalidInput", "nan": "InvalidInput", "nul": "InvalidInput"}
    async with sessions() as session:
        assert list(await session.scalars(select(Event).where(Event.name == "poison.test"))) == []
