"""Series on PostgreSQL: monthly partitions made on demand and ahead, hourly rollups kept by the
maintenance activity and read for coarse steps (equal to the points' answers, also while hours wait
to be rolled up), retention dropping whole partitions, idempotent maintenance runs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.testing import ActivityEnvironment

from activities.services.series import SeriesService
from autoplat.series import SeriesError, build_query, check_size
from registry.db import unit_of_work
from registry.models import Module
from registry.services import series as store
from tests.series.helpers import assert_same

SERIES = {
    "name": "meter",
    "fields": {"energy_kwh": {"type": "counter"}, "power_w": {"type": "gauge"}},
    "labels": ["meter"],
    "retention": {"rawDays": 100, "rollupDays": 400},
}


async def _partitions(sessions: Any, table: str) -> list[str]:
    async with sessions() as session:
        return [name for name, _, _ in await store.partitions(session=session, table=table)]


async def _compare(sessions: Any, db: Any, start: datetime, end: datetime) -> None:
    """Every coarse step answered from the rollups equals the same query over the points."""
    defn = (await db._resolve())[1]["meter"]
    module_id = (await db._resolve())[0]
    for step, tz in (("1h", "UTC"), ("1d", "Europe/Berlin"), ("1w", "UTC"), ("1mo", "America/New_York")):
        agg = {"energy_kwh": ["increase", "first", "last", "count"], "power_w": ["avg", "min", "max", "sum"]}
        query = build_query(defn, start=start, end=end, step=step, tz=tz, agg=agg)
        check_size(query, 3, 100_000)
        async with sessions() as session:
            row = await store.get_series(session=session, module_id=module_id, name="meter")
            ids = await store.label_sets(session=session, series_id=row.id)
            source = store.Source()
            kwargs = {"session": session, "series": row, "query": query, "label_ids": ids, "now": datetime.now(UTC)}
            rolled = await store.bucket_points(**kwargs, source=source)
            raw = await store.bucket_points(**kwargs, use_rollups=False)
        assert source.name == "rollup", step
        assert_same(rolled, raw, (step, tz))


async def test_partitions_rollups_and_retention(sessions: Any, settings: Any, caplog: pytest.LogCaptureFixture):
    manifest = {"name": "meters", "permissions": {"services": ["series"]}, "series": [SERIES]}
    async with unit_of_work(sessions) as session:
        session.add(Module(name="meters", version="1.0.0", display_name="Meters", manifest=manifest))
    service = SeriesService(SimpleNamespace(settings=settings, sessions=sessions))
    db = service.module_series("meters")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(days=70)

    # 70 days of 15-minute readings for three meters, one replaced (reset) half way.
    points = []
    for m in range(3):
        energy = 1000.0 * m
        for i in range(70 * 96):
            energy = 5.0 if (m == 1 and i == 3000) else energy + 0.1 * (i % 5) + m
            points.append(
                (
                    start + timedelta(minutes=15 * i),
                    {"meter": f"m{m}"},
                    {"energy_kwh": energy, "power_w": float(i % 17)},
                )
            )
    for chunk in range(0, len(points), 10_000):
        await db.write_many("meter", points[chunk : chunk + 10_000])
    months = {store.partition_bounds(store.POINTS, p[0])[0] for p in points}
    assert months <= set(await _partitions(sessions, store.POINTS))  # made on demand

    # Before any rollup every hour is waiting: the answers come from the points.
    await _compare(sessions, db, start + timedelta(days=1), now)
    env = ActivityEnvironment()
    first = await env.run(service.series_maintenance, "rollup")
    assert first["hours_rolled_up"] == 3 * 70 * 24
    async with sessions() as session:
        assert await store.pending_hours(session=session) == 0
        days = {p[0].replace(hour=0, minute=0) for p in points}
        daily = await session.scalar(text("SELECT count(*) FROM series_rollups_daily"))
        assert daily == len(days) * 3 * 2  # day, week and month buckets read these
    await _compare(sessions, db, start + timedelta(days=1), now)

    # Late corrections and a reset inside rolled-up hours: those hours are read from the points
    # until the next rollup, and the answers stay equal.
    await db.write_many(
        "meter",
        [
            (start + timedelta(days=20, minutes=15), {"meter": "m0"}, {"energy_kwh": 1.0, "power_w": 999.0}),
            (start + timedelta(days=40, minutes=7), {"meter": "m2"}, {"power_w": -5.0}),
            # The last reading of an hour: the next hour's first step changes too.
            (start + timedelta(days=30, minutes=45), {"meter": "m1"}, {"energy_kwh": 2.0}),
        ],
    )
    await _compare(sessions, db, start + timedelta(days=1), now)
    # The three hours written, and the three hours after them (their first step changed).
    assert (await env.run(service.series_maintenance, "rollup"))["hours_rolled_up"] == 6
    await _compare(sessions, db, start + timedelta(days=1), now)
    assert (await env.run(service.series_maintenance, "rollup"))["hours_rolled_up"] == 0  # idempotent

    with pytest.raises(SeriesError, match="before the retention window of 100 days"):
        await db.write("meter", {"meter": "m0"}, {"power_w": 1.0}, at=now - timedelta(days=101))

    # Retention: partitions past the longest retention of any series go whole; a second run finds
    # nothing to do. The coming months' partitions are made ahead.
    async with unit_of_work(sessions) as session:
        old = now - timedelta(days=200)
        ancient = now - timedelta(days=3 * 365)
        await store.ensure_partitions(session=session, table=store.POINTS, times=[old])
        await store.ensure_partitions(session=session, table=store.ROLLUPS, times=[ancient])
        await session.execute(text("INSERT INTO series_points VALUES (1, 1, 0, :ts, 1.0)"), {"ts": old})
    old_points = store.partition_bounds(store.POINTS, old)[0]
    old_rollups = store.partition_bounds(store.ROLLUPS, ancient)[0]
    caplog.set_level(logging.INFO, logger="activities.services.series")
    result = await env.run(service.series_maintenance, "retention")
    assert result["dropped"] == {store.POINTS: [old_points], store.ROLLUPS: [old_rollups]}
    assert f"dropped from series_points: {old_points}" in caplog.text
    ahead = store.partition_bounds(store.POINTS, store._next_month(store._next_month(store.month_start(now))))[0]
    assert ahead in await _partitions(sessions, store.POINTS)
    again = await env.run(service.series_maintenance, "retention")
    assert again["dropped"] == {store.POINTS: [], store.ROLLUPS: []} and again["partitions_created"] == []
    assert months <= set(await _partitions(sessions, store.POINTS))  # the live months stay
    await _compare(sessions, db, start + timedelta(days=1), now)

    # A partition missing at write time (dropped behind this worker's back, with its points) is made again.
    current = store.partition_bounds(store.POINTS, now)[0]
    async with unit_of_work(sessions) as session:
        await session.execute(text(f'DROP TABLE "{current}"'))
    await db.write("meter", {"meter": "m9"}, {"power_w": 1.0}, at=now)
    assert current in await _partitions(sessions, store.POINTS)
    assert [p.labels for p in await db.latest("meter", labels={"meter": "m9"})] == [{"meter": "m9"}]
