"""The outbox dispatcher on the embedded SQLite registry: one delivery per (event, job), no row locks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from registry.db import create_engine, create_session_factory, unit_of_work
from registry.migrate import upgrade
from registry.models import EventDelivery
from registry.services import events
from registry.services.dispatch import Dispatcher, StartRequest, dispatch_pending
from tests.events.helpers import add_job, get_event, listening_module


async def test_dispatch_on_sqlite_delivers_each_pair_once(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'autoplat.db'}"
    await upgrade(url)
    engine = create_engine(url)
    try:
        sessions = create_session_factory(engine)
        module = await listening_module(sessions, tmp_path / "state", tmp_path)
        first = await add_job(sessions, module, "audit", name="first", event_triggers=["health.*"])
        second = await add_job(sessions, module, "audit", name="second", event_triggers=["health.*"])
        async with unit_of_work(sessions) as session:
            event, _ = await events.accept(session=session, name="health.alert", payload={})
        started: list[StartRequest] = []
        failing = {"on": True}

        async def start(request: StartRequest) -> None:
            if failing["on"] and request.job.id == second.id:
                raise RuntimeError("Temporal is down")
            started.append(request)

        report = await dispatch_pending(sessions=sessions, start=start)
        assert (report.started, report.failed) == (1, 1)
        assert Dispatcher(sessions=sessions, start=start).concurrency == 1  # one writer: one loop
        failing["on"] = False
        async with unit_of_work(sessions) as session:
            stored = await session.get(type(event), event.seq)
            assert stored is not None
            stored.next_attempt_at = datetime.now(UTC)  # the backoff has elapsed
        report = await dispatch_pending(sessions=sessions, start=start)
        assert (report.started, report.already_started) == (1, 1)
        assert sorted(r.job.id for r in started) == sorted([first.id, second.id])
        async with sessions() as session:
            deliveries = list(await session.scalars(select(EventDelivery).where(EventDelivery.event_id == event.id)))
        assert sorted(d.job_id for d in deliveries) == sorted([first.id, second.id])
        assert all(d.execution_id for d in deliveries)
        assert (await get_event(sessions, event.id)).dispatch_status == "DISPATCHED"
    finally:
        await engine.dispose()
