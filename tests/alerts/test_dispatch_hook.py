"""The dispatcher's alerting hook: event rules see each stored event once it is dispatched, and a
failure to signal (Temporal down) puts the events back for a retry instead of losing the alert."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from registry.db import unit_of_work
from registry.models import Event
from registry.services import alerts, alerts_eval, events
from registry.services.common import Actor
from registry.services.dispatch import StartRequest, dispatch_pending

ACTOR = Actor(user_id=None, email="ops@example.com", role="operator")


async def test_a_failed_signal_retries_the_event(sessions: Any):
    async with unit_of_work(sessions) as session:
        await alerts.create_rule(
            session=session, actor=ACTOR, default_interval=60,
            data={"name": "disk", "source": "event", "message": "{{event.payload.host}} disk full",
                  "condition": {"pattern": "host.*", "conditions": [{"path": "free", "op": "lt", "value": 5}],
                                "group_by": ["host"]}},
        )  # fmt: skip
        event, _ = await events.accept(session=session, name="host.disk", payload={"host": "db1", "free": 2})
        await events.accept(session=session, name="host.disk", payload={"host": "db2", "free": 50})

    sent: list[alerts_eval.Signal] = []
    down = {"on": True}

    async def observe(session: Any, batch: list[Event]) -> None:
        signals = await alerts_eval.on_events(session, batch)
        if down["on"]:
            raise RuntimeError("Temporal is unreachable")
        sent.extend(signals)

    async def start(request: StartRequest) -> None:
        raise AssertionError("no job listens")

    report = await dispatch_pending(sessions=sessions, start=start, observe=observe)
    assert sent == [] and report.errors == ["alert rules: Temporal is unreachable"]
    async with sessions() as session:
        stored = await session.get(Event, event.seq)
        assert stored is not None and stored.dispatch_status == "PENDING"
        assert stored.dispatch_error == "alert rules: RuntimeError: Temporal is unreachable"
    async with unit_of_work(sessions) as session:
        await session.execute(Event.__table__.update().values(next_attempt_at=datetime.now(UTC)))  # backoff over

    down["on"] = False
    await dispatch_pending(sessions=sessions, start=start, observe=observe)
    assert [(s.incident.labels, s.fire.message, s.fire.key) for s in sent if s.fire] == [
        ({"host": "db1"}, "db1 disk full", event.id)
    ]
    async with sessions() as session:
        stored = await session.get(Event, event.seq)
        assert stored is not None and stored.dispatch_status == "DISPATCHED"
