"""Series rules evaluated step by step at chosen times, on PostgreSQL and on the embedded SQLite
registry: "for N evaluations", hysteresis (the resolve threshold), no data, one incident per label
set, the cooldown, active windows, and the send idempotency rows (claim / finish) on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from activities.services.series import SeriesService
from registry.db import create_engine, create_session_factory, unit_of_work
from registry.migrate import upgrade
from registry.models import AlertRule
from registry.services import alerts, alerts_eval
from registry.services import alerts_incidents as incidents
from registry.services.common import Actor
from tests.alerts.helpers import add_meters_module

ACTOR = Actor(user_id=None, email="ops@example.com", role="operator")
#: A Monday, 12:00 UTC.
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["postgresql", "sqlite"])
async def db(request: pytest.FixtureRequest, tmp_path: Path, sessions: Any, settings: Any) -> AsyncIterator[Any]:
    if request.param == "postgresql":
        yield sessions, settings
        return
    url = f"sqlite+aiosqlite:///{tmp_path / 'autoplat.db'}"
    await upgrade(url)
    engine = create_engine(url)
    settings = settings.model_copy(update={"database_url": url})
    try:
        yield create_session_factory(engine), settings
    finally:
        await engine.dispose()


async def test_series_rule_state_machine(db: Any):
    sessions, settings = db
    await add_meters_module(sessions)
    series = SeriesService(SimpleNamespace(settings=settings, sessions=sessions)).module_series("meters")
    async with unit_of_work(sessions) as session:
        rule = await alerts.create_rule(
            session=session, actor=ACTOR, default_interval=60,
            data={"name": "hot", "source": "series", "severity": "critical", "cooldown_seconds": 600,
                  "message": "{{labels.meter}} {{agg}} {{value}} W",
                  "active": [{"days": ["mon"], "start": "08:00", "end": "18:00", "tz": "UTC"}],
                  "condition": {"module": "meters", "series": "meter", "field": "power_w", "agg": "avg",
                                "window_minutes": 2, "op": "gt", "threshold": 3000, "resolve_threshold": 2500,
                                "for_evaluations": 2, "no_data_minutes": 10}},
        )  # fmt: skip
        rule_id = rule.id

    async def write(minute: int, **readings: float) -> None:
        at = T0 + timedelta(minutes=minute) - timedelta(seconds=1)
        for meter, value in readings.items():
            await series.write("meter", {"site": "berlin", "meter": meter}, {"power_w": value}, at=at)

    async def evaluate(minute: int) -> list[tuple[str, str, Any]]:
        async with unit_of_work(sessions) as session:
            found = await session.get(AlertRule, rule_id)
            assert found is not None
            out = await alerts_eval.evaluate_series(session, found, T0 + timedelta(minutes=minute))
        return sorted(
            ("fire" if s.fire else "clear", s.incident.labels["meter"], s.fire.message if s.fire else s.clear.reason)
            for s in out
        )  # type: ignore[union-attr]

    for minute in range(9):  # m2 reports quietly until minute 8, then stops
        await write(minute, m2=1000)
    await write(0, m1=3600)
    assert await evaluate(0) == []  # one breach of two
    await write(1, m1=3600)
    assert await evaluate(1) == [("fire", "m1", "m1 avg 3600 W")]
    await write(2, m1=3600)
    assert await evaluate(2) == []  # firing already: no second incident
    await write(3, m1=2800)
    await write(4, m1=2800)
    assert await evaluate(4) == []  # under the threshold, over the resolve threshold: stays open
    await write(5, m1=2400)
    await write(6, m1=2400)
    assert await evaluate(6) == [("clear", "m1", "avg power_w = 2400")]
    # Hot again twice in a row, within the cooldown (10 minutes from the open at minute 1): nothing.
    await write(7, m1=3900)
    await write(8, m1=3900)
    assert await evaluate(8) == []
    assert await evaluate(9) == []
    # Once the cooldown has passed, the next breach opens m1's second incident.
    for minute in (10, 11, 12):
        await write(minute, m1=3900)
    assert await evaluate(12) == [("fire", "m1", "m1 avg 3900 W")]
    # m2 has not reported for 10 minutes: no data breaches, twice in a row, then fires.
    assert await evaluate(18) == []
    assert await evaluate(19) == [("fire", "m2", "m2 avg ? W")]
    # Outside the active window (Monday 08:00-18:00 UTC) a fresh breach counts but opens nothing.
    await write(419, m3=5000)
    await write(420, m3=5000)
    assert await evaluate(419) == []
    assert await evaluate(420) == []
    async with sessions() as session:
        from registry.models import AlertState

        state = await session.get(AlertState, (rule_id, alerts.group_key({"site": "berlin", "meter": "m3"})))
        assert state is not None and (state.breaches, state.firing) == (2, False)
    # The evaluator's pass (savepoint per rule, the rule's evaluation time kept) on either database.
    at = T0 + timedelta(minutes=421)
    async with unit_of_work(sessions) as session:
        assert await alerts_eval.evaluate_due(session, now=at) == []
    async with sessions() as session:
        evaluated = await session.get(AlertRule, rule_id)
        assert evaluated is not None and evaluated.last_evaluated_at == at


async def test_send_rows_are_claimed_once(db: Any):
    sessions, _ = db
    from activities.alerts_types import Fire, IncidentInput, OpenInput

    async with unit_of_work(sessions) as session:
        spec = IncidentInput(rule_id=None, rule_name="module m", group_key="k", labels={}, severity="info")
        fire = Fire(title="t", message="m", at=T0.isoformat())
        await incidents.open_incident(
            session=session, inp=OpenInput(incident_id="i-1", workflow_id="w", run_id="r", incident=spec, fire=fire)
        )
    claims = []
    for _ in range(2):  # a send cut short, then its retry
        async with unit_of_work(sessions) as session:
            row = await incidents.claim_send(
                session=session, incident_id="i-1", key="i-1:opened:ops", transition="opened", channel="ops"
            )
            claims.append(None if row is None else row.attempts)
    assert claims == [1, 2]
    async with unit_of_work(sessions) as session:
        await incidents.finish_send(session=session, key="i-1:opened:ops", status="sent", outcome={"status": 200})
    async with unit_of_work(sessions) as session:
        again = await incidents.claim_send(
            session=session, incident_id="i-1", key="i-1:opened:ops", transition="opened", channel="ops"
        )
    assert again is None  # an outcome is stored: a third attempt sends nothing
    async with sessions() as session:
        [row] = await incidents.notifications_of(session=session, incident_id="i-1")
    assert (row.status, row.attempts, row.outcome) == ("sent", 2, {"status": 200})
