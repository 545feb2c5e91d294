"""The rules of ctx.series (what a write accepts, how buckets fall, a counter's increase) on the
in-memory store and on the registry's SQLite backend, which must answer alike."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from autoplat._series_memory import MemorySeries
from autoplat.series import (
    MAX_BATCH,
    Point,
    SeriesDef,
    SeriesError,
    bucket_edges,
    build_query,
    check_size,
    hour_aligned,
)
from registry.manifest import validate_manifest
from tests.series.helpers import assert_same

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
METER = SeriesDef(
    name="meter",
    fields={"energy_kwh": "counter", "power_w": "gauge"},
    labels=("site", "meter"),
    raw_retention_days=30,
)


def memory() -> MemorySeries:
    return MemorySeries({"meter": METER}, now=NOW)


def at(hours: float) -> datetime:
    return NOW - timedelta(days=3) + timedelta(hours=hours)


LABELS = {"site": "berlin", "meter": "m1"}


async def test_writes_refuse_bad_points_whole_and_say_which() -> None:
    series = memory()
    refused: list[tuple[Any, str]] = [
        ({"ts": at(1), "labels": LABELS, "values": {"power_w": math.nan}}, "NaN and infinities are refused"),
        ({"ts": at(1), "labels": LABELS, "values": {"power_w": math.inf}}, "NaN and infinities are refused"),
        ({"ts": at(1), "labels": LABELS, "values": {"volts": 1.0}}, "undeclared field 'volts'"),
        ({"ts": at(1), "labels": LABELS, "values": {"power_w": "12"}}, "must be a number, not str"),
        ({"ts": at(1), "labels": LABELS, "values": {"power_w": True}}, "must be a number, not bool"),
        ({"ts": at(1), "labels": LABELS, "values": {}}, "non-empty object"),
        ({"ts": at(1), "labels": {**LABELS, "floor": "2"}, "values": {"power_w": 1}}, "unknown label(s) floor"),
        ({"ts": at(1), "labels": {"site": "berlin"}, "values": {"power_w": 1}}, "missing label(s) meter"),
        ({"ts": at(1), "labels": {**LABELS, "meter": 7}, "values": {"power_w": 1}}, "label 'meter' must be a string"),
        ({"ts": "2026-06-14T10:00:00", "labels": LABELS, "values": {"power_w": 1}}, "has no timezone"),
        ({"ts": "yesterday", "labels": LABELS, "values": {"power_w": 1}}, "is not an ISO 8601 date-time"),
        ({"ts": NOW + timedelta(days=2), "labels": LABELS, "values": {"power_w": 1}}, "ahead of the platform's clock"),
        ({"ts": NOW - timedelta(days=31), "labels": LABELS, "values": {"power_w": 1}}, "retention window of 30 days"),
        ({"at": at(1), "labels": LABELS, "values": {"power_w": 1}}, "unknown point key(s) at"),
    ]
    good = {"ts": at(0), "labels": LABELS, "values": {"power_w": 1.0}}
    for point, reason in refused:
        with pytest.raises(SeriesError) as caught:
            await series.write_many("meter", [good, point, good])
        assert caught.value.details["failures"] == [{"index": 1, "error": caught.value.details["failures"][0]["error"]}]
        assert reason in caught.value.details["failures"][0]["error"], (reason, caught.value.message)
        assert "1 of 3 point(s) refused, nothing written" in caught.value.message
    assert series.written("meter") == []  # never a partial batch

    with pytest.raises(SeriesError, match="at most 10000 per call"):
        await series.write_many("meter", [good] * (MAX_BATCH * 10))
    with pytest.raises(SeriesError, match="series 'other' is not declared"):
        await series.write("other", LABELS, {"power_w": 1})
    assert series.written("meter") == []


async def test_writes_are_idempotent_per_labels_and_timestamp() -> None:
    series = memory()
    assert (
        await series.write_many("meter", [(at(0), LABELS, {"power_w": 5}), Point(at(0), LABELS, {"energy_kwh": 9})])
        == 1
    )
    reordered = {"meter": "m1", "site": "berlin"}
    assert await series.write_many("meter", [(at(1), LABELS, {"power_w": 1}), (at(1), reordered, {"power_w": 2})]) == 1
    await series.write("meter", LABELS, {"power_w": 6}, at=at(0).isoformat())  # a retried step
    await series.write("meter", LABELS, {"power_w": 7}, at=at(0).timestamp() + 900)  # Unix seconds
    written = series.written("meter")
    assert [(p.ts, p.values) for p in written] == [
        (at(0), {"power_w": 6.0, "energy_kwh": 9.0}),
        (at(0.25), {"power_w": 7.0}),
        (at(1), {"power_w": 2.0}),
    ]
    latest = await series.latest("meter", labels={"meter": "m1"})
    assert [(p.ts, p.values) for p in latest] == [(at(1), {"power_w": 2.0})]


def test_calendar_buckets_follow_the_timezone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start, end = datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 12, 15, tzinfo=UTC)
    months = bucket_edges(start, end, "1mo", berlin)
    assert [e.astimezone(berlin).strftime("%m-%d %H:%M") for e in months] == [
        f"{m:02d}-01 00:00" for m in range(1, 13)
    ] + ["01-01 00:00"]
    # Winter months start at 23:00 UTC, summer months at 22:00 UTC: whole UTC hours either way.
    assert months[0] == datetime(2025, 12, 31, 23, tzinfo=UTC) and months[4] == datetime(2026, 4, 30, 22, tzinfo=UTC)
    assert hour_aligned(months)
    days = bucket_edges(datetime(2026, 3, 28, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC), "1d", berlin)
    assert [(b - a).total_seconds() / 3600 for a, b in zip(days, days[1:], strict=False)] == [24, 23, 24, 24]
    weeks = bucket_edges(datetime(2026, 6, 3, tzinfo=UTC), datetime(2026, 6, 20, tzinfo=UTC), "1w", ZoneInfo("UTC"))
    assert [e.strftime("%a %d") for e in weeks] == ["Mon 01", "Mon 08", "Mon 15", "Mon 22"]
    kolkata = bucket_edges(start, start + timedelta(days=2), "1d", ZoneInfo("Asia/Kolkata"))
    assert kolkata[0] == datetime(2026, 1, 14, 18, 30, tzinfo=UTC) and not hour_aligned(kolkata)
    fives = bucket_edges(datetime(2026, 1, 1, 0, 7, tzinfo=UTC), datetime(2026, 1, 1, 0, 21, tzinfo=UTC), "5m", berlin)
    assert [e.minute for e in fives] == [5, 10, 15, 20, 25]


async def test_rollups_count_a_counters_increase_across_resets_and_buckets() -> None:
    series = memory()
    # Hourly readings of a meter that is replaced (reset to 0) in the fourth hour.
    readings = [100.0, 104.0, 110.0, 2.0, 5.0, 11.0]
    await series.write_many(
        "meter",
        [(at(h), LABELS, {"energy_kwh": v, "power_w": 10.0 * h}) for h, v in enumerate(readings)],
    )
    buckets = await series.rollup(
        "meter", at(1), at(6), step="1h", agg={"energy_kwh": ["increase", "first", "last", "count"], "power_w": ["avg"]}
    )
    # The first bucket counts the step from the reading before the range (100 -> 104).
    assert [b.values["energy_kwh"]["increase"] for b in buckets] == [4.0, 6.0, 2.0, 3.0, 6.0]
    assert buckets[2].values["energy_kwh"] == {"increase": 2.0, "first": 2.0, "last": 2.0, "count": 1.0}
    day = await series.rollup("meter", at(0), at(6), step="1d", agg=["max", "min", "sum"], fields=["power_w"])
    assert [b.values for b in day] == [{"power_w": {"max": 50.0, "min": 0.0, "sum": 150.0}}]
    default = await series.rollup("meter", at(0), at(6), step="1d")
    assert default[0].values == {"energy_kwh": {"increase": 21.0}, "power_w": {"avg": 25.0}}
    for bad, message in [
        ({"step": "2h"}, "step '2h' is not one of"),
        ({"step": "raw"}, "needs a step other than raw"),
        ({"agg": {"power_w": ["increase"]}}, "increase applies to counter fields"),
        ({"agg": ["median"]}, "aggregation 'median' is not one of"),
        ({"agg": {"volts": ["avg"]}}, "unknown field 'volts'"),
        ({"labels": {"floor": "2"}}, "unknown label 'floor'"),
        ({"tz": "Mars/Olympus"}, "is not an IANA timezone"),
    ]:
        with pytest.raises(SeriesError, match=message):
            await series.rollup("meter", at(0), at(6), **bad)
    with pytest.raises(SeriesError, match="must be before to"):
        await series.rollup("meter", at(6), at(0))


def test_a_query_past_the_points_limit_names_the_limit_and_a_coarser_step() -> None:
    query = build_query(METER, start=NOW - timedelta(days=365), end=NOW, step="1m")
    with pytest.raises(ValueError, match=r"more than 100000 points .*coarser step \(e.g. step=1d\)") as caught:
        check_size(query, 100, 100_000)
    assert caught.value.step == "1d"  # type: ignore[attr-defined]
    fine = build_query(METER, start=NOW - timedelta(days=365), end=NOW, step="1d")
    check_size(fine, 100, 100_000)
    assert len(fine.edges) == 367  # 366 whole days: the range starts and ends at noon


def test_the_manifest_section_is_checked_at_json_pointers() -> None:
    manifest = {
        "name": "meters",
        "version": "1.0.0",
        "displayName": "Meters",
        "description": "d",
        "author": "ops",
        "jobs": [],
        "permissions": {"services": ["series"]},
        "series": [
            {"name": "meter", "fields": {"energy_kwh": {"type": "counter"}}, "labels": ["site", "energy_kwh"]},
            {"name": "meter", "fields": {"w": {"type": "gauge"}}, "retention": {"rawDays": 400, "rollupDays": 30}},
            {"name": "Bad-Name", "fields": {}, "labels": ["a", "a"]},
            {"name": "odd", "fields": {"ts": {"type": "meter"}}, "retention": {"rawDays": 0}},
        ],
    }
    report = validate_manifest(manifest)
    assert sorted((i.code, i.path) for i in report.errors) == [
        ("schema.enum", "/series/3/fields/ts/type"),
        ("schema.minProperties", "/series/2/fields"),
        ("schema.minimum", "/series/3/retention/rawDays"),
        ("schema.pattern", "/series/2/name"),
        ("schema.uniqueItems", "/series/2/labels"),
        ("series.duplicate", "/series/1/name"),
        ("series.name_clash", "/series/0/labels/1"),
        ("series.name_clash", "/series/3/fields/ts"),
        ("series.retention_invalid", "/series/1/retention/rollupDays"),
    ]
    manifest["series"] = manifest["series"][:1]
    manifest["series"][0]["labels"] = ["site"]
    manifest["permissions"] = {"services": []}
    report = validate_manifest(manifest)
    assert report.valid and [(w.code, w.path) for w in report.warnings] == [("permissions.missing_series", "/series")]


# --- the SQLite backend answers as the reference does ------------------------------------------------
@pytest.fixture
async def sqlite_sessions(tmp_path: Path) -> Any:
    from registry.db import create_engine, create_session_factory
    from registry.migrate import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'series.db'}"
    await upgrade(url)
    engine = create_engine(url)
    yield create_session_factory(engine)
    await engine.dispose()


async def test_sqlite_backend_matches_the_reference(sqlite_sessions: Any) -> None:
    from activities.services.series import DbSeries
    from registry.db import unit_of_work
    from registry.models import Module
    from registry.services import series as store

    manifest = {"name": "meters", "permissions": {"services": ["series"]}, "series": [METER.as_dict()]}
    async with unit_of_work(sqlite_sessions) as session:
        session.add(Module(name="meters", version="1.0.0", display_name="Meters", manifest=manifest))
    db = DbSeries(sqlite_sessions, "meters", runner=None, max_points=100_000, max_future=timedelta(days=1))
    db._now = lambda: NOW  # type: ignore[method-assign]
    reference = memory()
    points = []
    for meter in ("m1", "m2"):
        energy = 50.0
        for i in range(72 * 4):
            energy = 3.0 if i == 150 else energy + (i % 7) * 0.25  # a reset on day two
            ts = at(0) - timedelta(days=1) + timedelta(minutes=15 * i)
            points.append(
                {
                    "ts": ts,
                    "labels": {"site": "berlin", "meter": meter},
                    "values": {"energy_kwh": energy, "power_w": float(i % 13)},
                }
            )
    for target in (db, reference):
        assert await target.write_many("meter", points) == len(points)
        assert await target.write_many("meter", points[:50]) == 50  # again: no duplicate
    start, end = at(-20), at(40)
    for kwargs in (
        {"step": "1h", "agg": ["count", "sum", "min", "max", "first", "last"]},
        {"step": "1d", "tz": "Europe/Berlin", "agg": {"energy_kwh": ["increase", "count"], "power_w": ["avg"]}},
        {"step": "5m", "labels": {"meter": "m2"}},
        {"step": "1mo", "tz": "Asia/Kolkata"},
    ):
        assert_same(
            await db.rollup("meter", start, end, **kwargs),
            await reference.rollup("meter", start, end, **kwargs),
            kwargs,
        )
    raw = await db.range("meter", start, end, labels={"meter": "m1"}, fields=["power_w"])
    assert raw == await reference.range("meter", start, end, labels={"meter": "m1"}, fields=["power_w"])
    assert await db.latest("meter") == await reference.latest("meter")
    with pytest.raises(SeriesError, match="more than 10 points"):
        await db.range("meter", start, end, limit=10)

    # Retention on SQLite deletes each series' points older than its raw retention.
    async with unit_of_work(sqlite_sessions) as session:
        dropped = await store.drop_expired(session=session, now=NOW + timedelta(days=30, hours=-60))
    assert dropped["series_points"] and (await db.range("meter", at(-30), at(-12))) == []


async def test_the_harness_records_writes_and_answers_from_the_manifest(tmp_path: Path) -> None:
    from autoplat.testing import MemoryServices, arun_job
    from tests.jobs.helpers import write_module

    code = """
from datetime import datetime, timedelta, timezone

def record(ctx):
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    labels = {"site": "a", "meter": "m1"}
    points = [(start + timedelta(hours=h), labels, {"energy_kwh": 10.0 * h}) for h in range(48)]
    ctx.series.write_many_sync("meter", points)
    days = ctx.series.rollup_sync("meter", start, start + timedelta(days=2), step="1d")
    return [b.values["energy_kwh"]["increase"] for b in days]
"""
    jobs = [{"name": "record", "description": "record", "handler": "record"}]
    series = {"series": [METER.as_dict() | {"retention": {"rawDays": 3650}}], "permissions": {"services": ["series"]}}
    folder = write_module(tmp_path, name="meters", code=code, jobs=jobs, extra=series)
    memory = MemoryServices()
    result = await arun_job(folder, "record", memory=memory)
    assert result.status == "COMPLETED" and result.result == [230.0, 240.0]
    assert len(memory.series.written("meter")) == 48
    undeclared = write_module(tmp_path, name="meters", code=code, jobs=jobs, extra={"series": series["series"]})
    refused = await arun_job(undeclared, "record")
    assert refused.status == "FAILED" and "ctx.series is not available" in str(refused.steps[0].error)
