"""Group commit of POST /events (registry/services/ingest.py): concurrent events share transactions,
each is stored, answered and published exactly once, and one the database refuses fails alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import select, text

from registry.db import create_engine, create_session_factory, is_unavailable, unit_of_work
from registry.errors import ServiceUnavailable
from registry.migrate import upgrade
from registry.models import Event
from registry.services import events
from registry.services.dispatch import channel
from registry.services.ingest import EventIngest
from tests.conftest import eventually


@contextlib.asynccontextmanager
async def on_insert(engine: Any, name: str, body: str) -> AsyncIterator[None]:
    """A real PostgreSQL trigger running ``body`` (PL/pgSQL) before each insert of an event named ``name``."""
    async with engine.begin() as conn:
        await conn.execute(
            text(f"CREATE FUNCTION test_event_hook() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body}; END $$")
        )
        await conn.execute(
            text(
                "CREATE TRIGGER test_event_hook BEFORE INSERT ON events FOR EACH ROW "
                f"WHEN (NEW.name = '{name}') EXECUTE FUNCTION test_event_hook()"
            )
        )
    try:
        yield
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER test_event_hook ON events"))
            await conn.execute(text("DROP FUNCTION test_event_hook()"))


async def _post_all(client: Any, headers: dict[str, str], names: list[str]) -> list[Any]:
    return await asyncio.gather(
        *(
            client.post("/api/v1/events", json={"name": n, "payload": {"n": i}}, headers=headers)
            for i, n in enumerate(names)
        )
    )


async def test_concurrent_events_share_transactions_and_each_is_stored_and_published_once(
    client, sessions, app_state, settings, operator_headers
):
    pubsub = app_state.redis.pubsub()
    await pubsub.subscribe(channel(settings.redis_prefix))
    try:
        replies = await _post_all(client, operator_headers, ["load.tested"] * 60)
        assert [r.status_code for r in replies] == [201] * 60, [r.text for r in replies if r.status_code != 201]
        answered = {r.json()["id"]: r.json()["seq"] for r in replies}
        assert len(answered) == 60 and len(set(answered.values())) == 60

        async with sessions() as session:
            stored = dict((await session.execute(select(Event.id, Event.seq).where(Event.name == "load.tested"))).all())
        assert stored == answered

        ingest = client.app.state.event_ingest
        assert ingest.flushes < 60 and ingest.largest > 1, (ingest.flushes, ingest.largest)

        live: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(live) < 60 and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                live.append(json.loads(message["data"]))
        assert sorted(e["id"] for e in live) == sorted(answered)
        assert [e["seq"] for e in live] == sorted(e["seq"] for e in live)  # published in commit order
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()


async def test_an_event_the_database_refuses_fails_alone(client, sessions, engine, operator_headers, caplog):
    """A real refusal (a trigger raising for one name): the batch it was in is stored again one
    event at a time, so only that event fails, with the generic 500 body."""
    async with on_insert(engine, "refused.here", "RAISE EXCEPTION 'refused by the test'"):
        names = ["batch.ok"] * 15 + ["refused.here"] + ["batch.ok"] * 15
        replies = await _post_all(client, operator_headers, names)
    statuses = [r.status_code for r in replies]
    assert statuses == [201] * 15 + [500] + [201] * 15, statuses
    refused_batches = [r.args[0] for r in caplog.records if r.getMessage().startswith("a batch of")]
    assert refused_batches and refused_batches[0] > 1, "the refused event was not part of a shared batch"
    refused = replies[15].json()
    assert refused["error"]["code"] == "internal_error" and "refused by the test" not in replies[15].text
    async with sessions() as session:
        names_stored = list(await session.scalars(select(Event.name)))
    assert sorted(names_stored) == ["batch.ok"] * 30


async def test_batches_are_stored_on_sqlite(tmp_path: Path):
    """The embedded registry takes the multi-row INSERT ... RETURNING too, and gives each event its seq."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'autoplat.db'}"
    await upgrade(url)
    engine = create_engine(url)
    published: list[list[dict[str, Any]]] = []
    woken: list[bool] = []

    async def publish(stored: list[dict[str, Any]]) -> None:
        published.append(stored)

    try:
        sessions = create_session_factory(engine)
        ingest = EventIngest(sessions=sessions, publish=publish, notify=lambda: woken.append(True))
        batch = [events.fresh(name="lite.stored", payload={"n": n}) for n in range(40)]
        await asyncio.gather(*(ingest.store(event, size) for event, size in batch))
        async with unit_of_work(sessions) as session:
            stored = dict((await session.execute(select(Event.id, Event.seq))).all())
        assert stored == {event.id: event.seq for event, _ in batch}
        assert ingest.flushes == len(published) == len(woken) < 40
        assert [e["id"] for flush in published for e in flush] == [event.id for event, _ in batch]
    finally:
        await engine.dispose()


async def test_an_outage_fails_the_whole_batch_at_once(tmp_path: Path):
    """The database unreachable (a loopback port nothing listens on): every waiting event fails
    with the outage, from one connection attempt per flush, not one per event."""
    from tests.conftest import free_port

    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    connects: list[int] = []
    sa_event.listen(engine.sync_engine, "do_connect", lambda *args: connects.append(1))
    try:
        ingest = EventIngest(sessions=create_session_factory(engine), publish=_nowhere, notify=lambda: None)
        batch = [events.fresh(name="down.here", payload={"n": n}) for n in range(20)]
        outcomes = await asyncio.gather(*(ingest.store(e, size) for e, size in batch), return_exceptions=True)
    finally:
        await engine.dispose()
    assert all(isinstance(o, Exception) and is_unavailable(o) for o in outcomes), outcomes
    assert ingest.flushes == 0 and all(e.seq is None for e, _ in batch)
    assert len(connects) < 20, len(connects)


async def test_shutdown_answers_the_waiting_and_refuses_new_events(sessions, engine):
    """close() waits for the flush in progress; one that outlives its grace is cancelled and its
    events answered 503 (rolled back, not stored); after close() new events are refused."""
    async with on_insert(engine, "slow.here", "PERFORM pg_sleep(3); RETURN NEW"):
        ingest = EventIngest(sessions=sessions, publish=_nowhere, notify=lambda: None)
        slow, size = events.fresh(name="slow.here", payload={})
        waiting = asyncio.create_task(ingest.store(slow, size))

        async def inserting() -> bool | None:
            async with engine.connect() as conn:
                busy = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                        "AND datname = current_database() AND query LIKE 'INSERT INTO events%'"
                    )
                )
            return True if busy else None

        await eventually(inserting, timeout=10, what="the flush inside its INSERT")
        await ingest.close(grace=0.2)
        with pytest.raises(ServiceUnavailable):
            await waiting
        late, late_size = events.fresh(name="late.here", payload={})
        with pytest.raises(ServiceUnavailable, match="shutting down"):
            await ingest.store(late, late_size)
    async with sessions() as session:
        assert list(await session.scalars(select(Event.name))) == []


async def _nowhere(stored: list[dict[str, Any]]) -> None:
    return None


async def test_an_event_committed_before_shutdown_cuts_its_flush_is_answered_stored(sessions):
    """Shutdown cancels a flush stuck publishing (Redis hanging): its events are committed, so their
    requests answer success, not 503 (a retry would store them twice)."""
    hang = asyncio.Event()

    async def stuck(stored: list[dict[str, Any]]) -> None:
        await hang.wait()

    ingest = EventIngest(sessions=sessions, publish=stuck, notify=lambda: None)
    event, size = events.fresh(name="stored.first", payload={})
    waiting = asyncio.create_task(ingest.store(event, size))

    async def flushed() -> bool | None:
        return True if ingest.flushes == 1 else None

    await eventually(flushed, timeout=10, what="the event committed")
    await ingest.close(grace=0.1)
    await waiting  # no exception: it is stored
    async with sessions() as session:
        assert list(await session.scalars(select(Event.name))) == ["stored.first"]
