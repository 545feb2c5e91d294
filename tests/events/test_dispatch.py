"""Dispatch: listeners and job triggers start executions exactly once per (event, job), durably."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, update

from registry.db import unit_of_work
from registry.errors import ServiceUnavailable
from registry.models import Event, EventDelivery, Execution, ExecutionStatus
from registry.services import events
from registry.services.dispatch import StartRequest, dispatch_pending, targets_for, temporal_starter, workflow_id_for
from tests.conftest import eventually
from tests.events.helpers import add_job, executions_for, get_event, listening_module


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Any) -> Any:
    return await listening_module(sessions, settings.state_dir, tmp_path)


@pytest.fixture
def start(temporal_env: Any, temporal_settings: Any) -> Any:
    async def client() -> Any:
        return temporal_env.client

    return temporal_starter(client, temporal_settings.task_queue)


async def accept(sessions: Any, name: str, payload: dict[str, Any], **kw: Any) -> str:
    async with unit_of_work(sessions) as session:
        event, _ = await events.accept(session=session, name=name, payload=payload, **kw)
        return event.id


async def finished(sessions: Any, event_id: str, n: int = 1) -> list[Execution]:
    async def probe() -> list[Execution] | None:
        rows = await executions_for(sessions, event_id)
        done = [r for r in rows if ExecutionStatus(r.status).is_final]
        return rows if len(done) >= n else None

    return await eventually(probe, what=f"{n} finished executions of event {event_id}")


async def test_listener_with_filter_and_mapping_starts_the_job(sessions, worker, module, start):
    job = await add_job(sessions, module, "refresh")
    await add_job(sessions, module, "refresh", name="disabled", enabled=False)
    event_id = await accept(sessions, "data.synced", {"kind": "full", "data": {"table": "orders"}}, source="crm")
    skipped_id = await accept(sessions, "data.synced", {"kind": "delta", "data": {"table": "orders"}})

    report = await dispatch_pending(sessions=sessions, start=start)
    assert (report.events, report.dispatched, report.started, report.failed) == (2, 2, 1, 0)

    (execution,) = await finished(sessions, event_id)
    assert execution.status == "COMPLETED", execution.error
    assert execution.trigger == "event"
    assert execution.event_id == event_id
    assert execution.job_id == job.id
    assert execution.workflow_id == workflow_id_for(event_id, job.id)
    assert execution.result["table"] == "orders"
    assert execution.result["event"]["id"] == event_id
    assert execution.result["event"]["payload"]["kind"] == "full"

    stored = await get_event(sessions, event_id)
    assert stored.dispatch_status == "DISPATCHED" and stored.dispatched_at is not None
    filtered = await get_event(sessions, skipped_id)
    assert filtered.dispatch_status == "DISPATCHED"
    assert filtered.dispatch_error == "no subscribers"
    assert await executions_for(sessions, skipped_id) == []


async def test_job_event_triggers_start_the_job(sessions, worker, module, start):
    job = await add_job(sessions, module, "audit", event_triggers=["health.*"])
    event_id = await accept(sessions, "health.alert", {"source": "db"})
    await dispatch_pending(sessions=sessions, start=start)
    (execution,) = await finished(sessions, event_id)
    assert (execution.job_id, execution.trigger, execution.status) == (job.id, "event", "COMPLETED")


async def test_disabled_module_does_not_fire(sessions, settings, tmp_path, start):
    module = await listening_module(sessions, settings.state_dir, tmp_path, status="DISABLED")
    await add_job(sessions, module, "audit", event_triggers=["health.*"])
    event_id = await accept(sessions, "health.alert", {})
    started: list[StartRequest] = []

    async def record(request: StartRequest) -> None:
        started.append(request)

    await dispatch_pending(sessions=sessions, start=record)
    assert started == []
    assert (await get_event(sessions, event_id)).dispatch_error == "no subscribers"


async def test_exactly_once_under_concurrency_and_redelivery(sessions, worker, module, start):
    refresh = await add_job(sessions, module, "refresh")
    # Listener and its own trigger both match: still one target.
    audit = await add_job(sessions, module, "refresh", name="refresh-2", event_triggers=["data.**"])
    event_id = await accept(sessions, "data.synced", {"kind": "full", "data": {"table": "t"}})

    # Two dispatchers (as in two API processes) at once.
    await asyncio.gather(
        dispatch_pending(sessions=sessions, start=start), dispatch_pending(sessions=sessions, start=start)
    )
    await finished(sessions, event_id, n=2)

    async def redeliver(*, forget_deliveries: bool) -> None:
        async with unit_of_work(sessions) as session:
            await session.execute(
                update(Event)
                .where(Event.id == event_id)
                .values(dispatch_status="PENDING", next_attempt_at=datetime.now(UTC), dispatched_at=None)
            )
            if forget_deliveries:
                # As if the process died after starting the workflows but before its commit.
                await session.execute(
                    update(EventDelivery).where(EventDelivery.event_id == event_id).values(execution_id=None)
                )
        reports = await asyncio.gather(*(dispatch_pending(sessions=sessions, start=start) for _ in range(3)))
        assert (await get_event(sessions, event_id)).dispatch_status == "DISPATCHED"
        if not forget_deliveries:
            assert sum(r.already_started for r in reports) == 2
            assert sum(r.started for r in reports) == 0

    await redeliver(forget_deliveries=False)
    await redeliver(forget_deliveries=True)

    rows = await executions_for(sessions, event_id)
    assert sorted(r.job_id for r in rows if r.job_id) == sorted([refresh.id, audit.id])
    assert all(r.status == "COMPLETED" for r in rows)
    assert (await get_event(sessions, event_id)).dispatch_status == "DISPATCHED"


async def test_temporal_unreachable_keeps_the_event_pending(sessions, worker, module, start):
    job = await add_job(sessions, module, "audit", event_triggers=["health.*"])
    event_id = await accept(sessions, "health.alert", {})

    async def unreachable() -> Any:
        raise ServiceUnavailable("Temporal is unreachable at 127.0.0.1:1")

    down = temporal_starter(unreachable, "nowhere")
    for attempt in (1, 2):
        report = await dispatch_pending(sessions=sessions, start=down)
        assert report.failed == 1
        event = await get_event(sessions, event_id)
        assert event.dispatch_status == "PENDING"
        assert event.dispatch_attempts == attempt
        assert event.next_attempt_at is not None and event.next_attempt_at > datetime.now(UTC)
        assert "ServiceUnavailable" in (event.dispatch_error or "")
        # Not due yet: a dispatcher running meanwhile leaves it alone.
        assert (await dispatch_pending(sessions=sessions, start=down)).events == 0
        async with unit_of_work(sessions) as session:  # time passes: the backoff has elapsed
            await session.execute(update(Event).where(Event.id == event_id).values(next_attempt_at=datetime.now(UTC)))

    report = await dispatch_pending(sessions=sessions, start=start)
    assert (report.dispatched, report.started) == (1, 1)
    (execution,) = await finished(sessions, event_id)
    assert (execution.job_id, execution.status) == (job.id, "COMPLETED")
    event = await get_event(sessions, event_id)
    assert event.dispatch_status == "DISPATCHED" and event.dispatch_error is None


async def test_partial_failure_retries_only_the_missing_job(sessions, module):
    first = await add_job(sessions, module, "audit", name="first", event_triggers=["health.*"])
    second = await add_job(sessions, module, "audit", name="second", event_triggers=["health.*"])
    event_id = await accept(sessions, "health.alert", {})
    calls: list[str] = []

    async def flaky(request: StartRequest) -> None:
        calls.append(request.job.id)
        if request.job.id == second.id and calls.count(second.id) == 1:
            raise RuntimeError("worker gone")

    assert (await dispatch_pending(sessions=sessions, start=flaky)).failed == 1
    async with unit_of_work(sessions) as session:
        await session.execute(update(Event).where(Event.id == event_id).values(next_attempt_at=datetime.now(UTC)))
    assert (await dispatch_pending(sessions=sessions, start=flaky)).dispatched == 1
    assert sorted(calls) == sorted([first.id, second.id, second.id])


async def test_loop_guard_for_job_events(sessions, worker, module, start):
    audit = await add_job(sessions, module, "audit")  # listens to job.** through the manifest
    other = await add_job(sessions, module, "audit", name="other-audit")
    # A run of `audit` ends with job.completed: `other` reacts to it, `audit` itself must not.
    async with unit_of_work(sessions) as session:
        execution = Execution(
            module_name=module.name, job_type="audit", job_id=audit.id, workflow_id="manual-1", trigger="manual"
        )
        session.add(execution)
        await session.flush()
        job_event = events.record(
            session=session, name="job.completed", payload={}, source="platform", execution_id=execution.id
        )
        await session.flush()
        assert [t.job.id for t in await targets_for(session=session, event=job_event)] == [other.id]
        job_event_id = job_event.id

    report = await dispatch_pending(sessions=sessions, start=start, limit=1)
    assert report.started == 1
    rows = await finished(sessions, job_event_id)
    assert [r.job_id for r in rows] == [other.id]


async def test_an_event_that_cannot_be_prepared_backs_off_alone(sessions, module, monkeypatch):
    """One event whose preparation fails (a bug, a row it cannot write) is retried later with
    backoff; the others of its batch are dispatched, not rolled back and re-claimed with it."""
    from registry.services import dispatch

    await add_job(sessions, module, "refresh")
    good = await accept(sessions, "data.synced", {"kind": "full", "data": {"table": "a"}})
    bad = await accept(sessions, "data.synced", {"kind": "full", "data": {"table": "b"}})
    real = dispatch._deliveries

    async def deliveries(session: Any, wanted: dict[str, Any]) -> Any:
        # Fails the batch's shared preparation too: the batch falls back to one event at a time.
        if bad in wanted:
            raise RuntimeError("cannot write the delivery rows")
        return await real(session, wanted)

    started: list[str] = []

    async def record(request: StartRequest) -> None:
        started.append(request.workflow_id)

    monkeypatch.setattr(dispatch, "_deliveries", deliveries)
    report = await dispatch_pending(sessions=sessions, start=record)
    assert (report.events, report.dispatched, report.failed, report.started) == (2, 1, 1, 1)
    assert len(started) == 1 and good in started[0]
    stored_bad, stored_good = await get_event(sessions, bad), await get_event(sessions, good)
    assert stored_good.dispatch_status == "DISPATCHED"
    assert stored_bad.dispatch_status == "PENDING" and stored_bad.dispatch_attempts == 1
    assert "cannot write the delivery rows" in stored_bad.dispatch_error
    assert stored_bad.next_attempt_at > datetime.now(UTC)
    # Not due yet: the next pass leaves it alone.
    assert (await dispatch_pending(sessions=sessions, start=record)).events == 0


async def test_dispatch_loops_start_only_when_there_is_more_to_claim(sessions, engine):
    """Concurrent loops are added one at a time, each after a full batch: a pass over a few events
    claims once, not once per loop, and a backlog is still spread over several loops."""
    from sqlalchemy import event as sa_event

    from registry.services.dispatch import BATCH_SIZE

    claims: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM events" in statement and "SKIP LOCKED" in statement:
            claims.append(statement)

    async def no_start(request: StartRequest) -> None:
        raise AssertionError("no job listens")

    sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        for n in range(3):
            await accept(sessions, "quiet.tick", {"n": n})
        report = await dispatch_pending(sessions=sessions, start=no_start, concurrency=8)
        assert (report.events, report.dispatched, len(claims)) == (3, 3, 1)

        claims.clear()
        backlog = 2 * BATCH_SIZE + 5
        for n in range(backlog):
            await accept(sessions, "quiet.tick", {"n": n})
        report = await dispatch_pending(sessions=sessions, start=no_start, concurrency=8, limit=1000)
        assert (report.events, report.dispatched) == (backlog, backlog)
        # Two full batches and the rest, by up to three loops (each full batch adds one): a loop
        # that saw a full batch may claim once more and find nothing.
        assert 3 <= len(claims) <= 3 + 3, len(claims)
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", count)
    async with sessions() as session:
        pending = await session.scalar(
            select(func.count()).select_from(Event).where(Event.dispatch_status != "DISPATCHED")
        )
    assert pending == 0


async def test_a_batch_reads_and_creates_its_delivery_rows_together(sessions, engine, module):
    """Twelve events with two listening jobs each: their 24 delivery rows cost one read, one
    INSERT and one read back for the batch (no savepoint and three statements per event), and each
    pair is started once."""
    from sqlalchemy import event as sa_event

    await add_job(sessions, module, "refresh")
    await add_job(sessions, module, "refresh", name="second", event_triggers=["data.**"])
    ids = [await accept(sessions, "data.synced", {"kind": "full", "data": {"table": f"t{n}"}}) for n in range(12)]
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "event_deliveries" in statement or "SAVEPOINT" in statement:
            statements.append(statement.split()[0])

    started: list[str] = []

    async def record(request: StartRequest) -> None:
        started.append(request.workflow_id)

    sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        report = await dispatch_pending(sessions=sessions, start=record)
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert (report.events, report.dispatched, report.started, report.failed) == (12, 12, 24, 0)
    assert len(set(started)) == 24 and all(sum(i in w for w in started) == 2 for i in ids)
    # The batch's savepoint, read, INSERT, read back, release; then the executions set, in one UPDATE.
    assert statements.count("INSERT") == 1 and statements.count("SELECT") == 2, statements
    assert statements.count("SAVEPOINT") == 1 and len(statements) <= 6, statements
    async with sessions() as session:
        rows = list(await session.scalars(select(EventDelivery)))
    assert len(rows) == 24 and all(r.execution_id for r in rows)
