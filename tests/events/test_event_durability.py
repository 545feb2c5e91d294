"""Redis down only degrades the live stream; the background dispatcher picks events up from the outbox."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from registry.services.dispatch import Dispatcher, StartRequest, publish_live
from tests.conftest import eventually
from tests.events.helpers import add_job, get_event, listening_module


async def test_redis_down_events_are_still_stored(client, app_state, sessions, operator_headers):
    healthy = app_state.redis
    app_state.redis = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=1)
    try:
        r = await client.post(
            "/api/v1/events", json={"name": "data.synced", "payload": {"a": 1}}, headers=operator_headers
        )
        assert r.status_code == 201, r.text
        assert (await get_event(sessions, r.json()["id"])).payload == {"a": 1}
        r = await client.get("/api/v1/events/stream", headers=operator_headers)
        assert r.status_code == 503
        assert not await publish_live(app_state.redis, "x", {"id": "e"})
    finally:
        await app_state.redis.aclose()
        app_state.redis = healthy


async def test_background_dispatcher_wakes_on_notify(client, sessions, settings, tmp_path, operator_headers):
    module = await listening_module(sessions, settings.state_dir, tmp_path)
    job = await add_job(sessions, module, "audit", event_triggers=["health.*"])
    started: list[StartRequest] = []

    async def record(request: StartRequest) -> None:
        started.append(request)

    # A long interval: only the notification from POST /events can make it dispatch in time.
    # Replace the API's own dispatcher (if the lifespan runs one) by one that records its starts.
    own = getattr(client.app.state, "event_dispatcher", None)
    if own is not None:
        await own.stop()
    dispatcher = Dispatcher(sessions=sessions, start=record, interval=60)
    client.app.state.event_dispatcher = dispatcher
    dispatcher.start()
    try:
        r = await client.post("/api/v1/events", json={"name": "health.alert", "payload": {}}, headers=operator_headers)
        event_id = r.json()["id"]

        async def dispatched() -> bool:
            return (await get_event(sessions, event_id)).dispatch_status == "DISPATCHED"

        await eventually(dispatched, timeout=10, what="event dispatched")
        assert [(s.job.id, s.input.trigger, s.input.event["id"]) for s in started] == [(job.id, "event", event_id)]
    finally:
        await dispatcher.stop()
        client.app.state.event_dispatcher = own


async def test_events_recorded_by_runs_are_published_once(sessions):
    from registry.db import unit_of_work
    from registry.services import events
    from registry.services.dispatch import dispatch_pending

    async with unit_of_work(sessions) as session:
        emitted = events.record(session=session, name="data.synced", payload={}, source="m", execution_id="x-1")
        events.record(session=session, name="data.posted", payload={})  # from the API: published there
    published: list[dict] = []

    async def publish(data: dict) -> None:
        published.append(data)

    async def down(request: StartRequest) -> None:
        raise RuntimeError("unused: no subscribers")

    await dispatch_pending(sessions=sessions, start=down, publish=publish)
    assert [p["id"] for p in published] == [emitted.id]
    assert published[0]["execution_id"] == "x-1"


async def test_a_stopped_dispatcher_stops_when_an_error_stands_in_for_the_cancellation(sessions):
    """A cancellation that reaches a statement can come back as an ordinary error (the statement
    failing as it is cut); the loop, which survives errors, must still end, or it claims events
    on and on after its app is gone."""
    from registry.db import unit_of_work
    from registry.services import events

    async with unit_of_work(sessions) as session:
        events.record(session=session, name="data.synced", payload={}, source="m", execution_id="x-1")
    publishing = asyncio.Event()

    async def publish(data: dict[str, Any]) -> None:
        publishing.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("the connection went away as the call was cut") from None

    async def start(request: StartRequest) -> None:
        raise AssertionError("nothing listens")

    dispatcher = Dispatcher(sessions=sessions, start=start, interval=0.05, publish=publish)
    dispatcher.start()
    loop_task = dispatcher._task
    assert loop_task is not None
    await asyncio.wait_for(publishing.wait(), timeout=20)
    await dispatcher.stop(grace=5)
    assert loop_task.done() and loop_task.cancelled()
