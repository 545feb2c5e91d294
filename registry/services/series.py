"""Time series of modules (``ctx.series``, ``GET /series``) in the registry database.

PostgreSQL: ``series_points`` is partitioned by month of ``ts`` (native declarative partitioning).
Partitions are made ahead by the maintenance schedule and on demand when a write needs one;
retention drops whole partitions. Hourly rollups (``series_rollups``, partitioned by year) are
kept incrementally: a write marks the (label set, hour) pairs it touched in
``series_dirty_hours``, the rollup job recomputes those hours from the points, and a query over
hour-aligned buckets reads the rollups, taking the hours still marked from the points — so
answers are the same whichever source serves them. SQLite (embedded): the same tables without
partitions or rollups; every query reads the points and uses the reference arithmetic of
:mod:`autoplat.series`.

Every function takes the series row (or the module id), so a module only reaches its own series.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from autoplat.series import (
    Bucket,
    Point,
    Query,
    SeriesDef,
    Stats,
    aggregate,
    buckets_of,
    definitions,
    hour_aligned,
    labels_key,
    matches,
)
from registry.models import (
    Module,
    Series,
    SeriesDailyRollup,
    SeriesDirtyHour,
    SeriesLabelSet,
    SeriesPoint,
    SeriesRollup,
)

log = logging.getLogger(__name__)

POINTS = "series_points"
ROLLUPS = "series_rollups"
DAILY = "series_rollups_daily"
#: Names of partitions known to exist, per database (a cache: a miss asks the catalogue).
_KNOWN_PARTITIONS: dict[str, set[str]] = {}
_PARTITION_LOCK = 0x5E71E5  # pg_advisory_xact_lock key: one partition maker at a time
_ROLLUP_LOCK = 0x5E71E6  # ... and one rollup transaction at a time


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --- series and label sets ------------------------------------------------------------------------
async def module_manifest(*, session: AsyncSession, name: str) -> tuple[str, dict[str, Any]] | None:
    """The module's id and current manifest (``None``: no such module)."""
    row = (await session.execute(select(Module.id, Module.manifest).where(Module.name == name))).first()
    return None if row is None else (str(row.id), dict(row.manifest or {}))


def declared(manifest: dict[str, Any]) -> dict[str, SeriesDef]:
    return definitions(manifest)


async def get_series(*, session: AsyncSession, module_id: str, name: str) -> Series | None:
    return await session.scalar(select(Series).where(Series.module_id == module_id, Series.name == name))


async def list_series(*, session: AsyncSession, module_id: str) -> list[Series]:
    return list(await session.scalars(select(Series).where(Series.module_id == module_id).order_by(Series.name)))


async def ensure_series(*, session: AsyncSession, module_id: str, defn: SeriesDef) -> Series:
    """The series row of ``defn`` (made on first write; new fields appended, retention kept current)."""
    row = await get_series(session=session, module_id=module_id, name=defn.name)
    if row is None:
        values = {
            "module_id": module_id,
            "name": defn.name,
            "fields": list(defn.fields),
            "raw_retention_days": defn.raw_retention_days,
            "rollup_retention_days": defn.rollup_retention_days,
            "created_at": datetime.now(UTC),
            "updated_at": datetime.now(UTC),
        }
        await session.execute(_insert(session, Series).values(values).on_conflict_do_nothing())
        row = await get_series(session=session, module_id=module_id, name=defn.name)
        assert row is not None
    fields = list(row.fields or [])
    added = [f for f in defn.fields if f not in fields]
    if added or (row.raw_retention_days, row.rollup_retention_days) != (
        defn.raw_retention_days,
        defn.rollup_retention_days,
    ):
        row.fields = fields + added
        row.raw_retention_days = defn.raw_retention_days
        row.rollup_retention_days = defn.rollup_retention_days
        await session.flush()
    return row


def digest(labels: dict[str, str]) -> str:
    return hashlib.sha256(labels_key(labels).encode()).hexdigest()


async def label_set_ids(
    *, session: AsyncSession, series_id: int, label_sets: Iterable[dict[str, str]]
) -> dict[str, int]:
    """Ids of the label sets by digest, making the missing ones."""
    wanted = {digest(labels): labels for labels in label_sets}
    found: dict[str, int] = {}
    keys = list(wanted)
    for chunk in range(0, len(keys), 500):
        part = keys[chunk : chunk + 500]
        rows = await session.execute(
            select(SeriesLabelSet.digest, SeriesLabelSet.id).where(
                SeriesLabelSet.series_id == series_id, SeriesLabelSet.digest.in_(part)
            )
        )
        found.update({d: int(i) for d, i in rows})
    missing = [d for d in keys if d not in found]
    if missing:
        now = datetime.now(UTC)
        stmt = _insert(session, SeriesLabelSet).on_conflict_do_nothing()
        await session.execute(
            stmt,
            [{"series_id": series_id, "digest": d, "labels": wanted[d], "created_at": now} for d in missing],
        )
        for chunk in range(0, len(missing), 500):
            rows = await session.execute(
                select(SeriesLabelSet.digest, SeriesLabelSet.id).where(
                    SeriesLabelSet.series_id == series_id, SeriesLabelSet.digest.in_(missing[chunk : chunk + 500])
                )
            )
            found.update({d: int(i) for d, i in rows})
    return found


async def label_sets(
    *, session: AsyncSession, series_id: int, filters: dict[str, str] | None = None
) -> dict[int, dict[str, str]]:
    """The series' label sets matching ``filters`` (equality on each named label), by id."""
    rows = await session.execute(
        select(SeriesLabelSet.id, SeriesLabelSet.labels).where(SeriesLabelSet.series_id == series_id)
    )
    return {int(i): dict(labels) for i, labels in rows if matches(labels, filters or {})}


def _insert(session: AsyncSession, table: Any) -> Any:
    return postgresql.insert(table) if _dialect(session) == "postgresql" else sqlite.insert(table)


# --- partitions (PostgreSQL) ----------------------------------------------------------------------
def month_start(ts: datetime) -> datetime:
    ts = ts.astimezone(UTC)
    return datetime(ts.year, ts.month, 1, tzinfo=UTC)


def _next_month(start: datetime) -> datetime:
    return datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=UTC)


def partition_bounds(table: str, ts: datetime) -> tuple[str, datetime, datetime]:
    """Name and ``[from, to)`` of the partition of ``table`` holding ``ts``."""
    ts = ts.astimezone(UTC)
    if table == POINTS:
        start = month_start(ts)
        return f"{POINTS}_p{start:%Y%m}", start, _next_month(start)
    start = datetime(ts.year, 1, 1, tzinfo=UTC)
    return f"{ROLLUPS}_p{start:%Y}", start, datetime(ts.year + 1, 1, 1, tzinfo=UTC)


def _cache(session: AsyncSession) -> set[str]:
    bind: Any = session.get_bind()
    return _KNOWN_PARTITIONS.setdefault(str(bind.engine.url), set())


def forget_partitions() -> None:
    """Forget what is cached (after a partition went missing under a write)."""
    _KNOWN_PARTITIONS.clear()


async def ensure_partitions(*, session: AsyncSession, table: str, times: Iterable[datetime]) -> list[str]:
    """Make the partitions of ``table`` holding ``times`` (PostgreSQL; a no-op elsewhere).
    Returns the names of those it created."""
    if _dialect(session) != "postgresql":
        return []
    known = _cache(session)
    needed = {}
    for ts in times:
        name, start, end = partition_bounds(table, ts)
        if name not in known:
            needed[name] = (start, end)
    created: list[str] = []
    if not needed:
        return created
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PARTITION_LOCK})
    for name, (start, end) in sorted(needed.items()):
        exists = await session.scalar(text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name})
        if not exists:
            # Bounds are ISO literals of UTC instants: no input reaches this statement.
            await session.execute(
                text(
                    f'CREATE TABLE "{name}" PARTITION OF {table} '
                    f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                )
            )
            created.append(name)
        known.add(name)
    return created


async def partitions(*, session: AsyncSession, table: str) -> list[tuple[str, datetime, datetime]]:
    """The partitions of ``table`` with their bounds, oldest first (PostgreSQL)."""
    rows = await session.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :t"
        ),
        {"t": table},
    )
    found = []
    for (name,) in rows:
        suffix = str(name).rsplit("_p", 1)[-1]
        try:
            ts = datetime.strptime(suffix + ("01" if table == POINTS else "0101"), "%Y%m%d").replace(tzinfo=UTC)
        except ValueError:
            continue  # not one of ours
        found.append(partition_bounds(table, ts))
    return sorted(found, key=lambda p: p[1])


# --- writes ---------------------------------------------------------------------------------------
def hour_of(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


async def write_points(
    *,
    session: AsyncSession,
    series: Series,
    points: Sequence[tuple[datetime, dict[str, str], dict[str, float]]],
    known_label_sets: dict[str, int] | None = None,
) -> int:
    """Insert or replace points (one transaction: all or nothing); returns the rows written.

    Partitions must exist (:func:`ensure_partitions`). Idempotent per (label set, timestamp,
    field): writing a point again replaces the values it names. ``known_label_sets`` (digest ->
    id) is a cache the caller keeps between batches; new ids are added to it."""
    index = {name: i for i, name in enumerate(series.fields or [])}
    known = known_label_sets if known_label_sets is not None else {}
    digests: dict[int, str] = {}  # checked label sets are shared objects: one digest each
    for p in points:
        if id(p[1]) not in digests:
            digests[id(p[1])] = digest(p[1])
    wanted = {digests[id(p[1])]: p[1] for p in points}
    missing = [labels for d, labels in wanted.items() if d not in known]
    if missing:
        known.update(await label_set_ids(session=session, series_id=series.id, label_sets=missing))
    ids = known
    ls_col: list[int] = []
    field_col: list[int] = []
    ts_col: list[datetime] = []
    value_col: list[float] = []
    dirty: set[tuple[int, datetime]] = set()
    for ts, labels, values in points:
        label_set = ids[digests[id(labels)]]
        for name, value in values.items():
            ls_col.append(label_set)
            field_col.append(index[name])
            ts_col.append(ts)
            value_col.append(value)
        dirty.add((label_set, hour_of(ts)))
    if _dialect(session) == "postgresql":
        await session.execute(
            text(
                "INSERT INTO series_points (series_id, label_set_id, field, ts, value) "
                "SELECT :s, l, f, t, v FROM unnest(CAST(:ls AS bigint[]), CAST(:fs AS smallint[]), "
                "CAST(:ts AS timestamptz[]), CAST(:vs AS float8[])) AS x(l, f, t, v) "
                "ON CONFLICT (series_id, label_set_id, field, ts) DO UPDATE SET value = EXCLUDED.value"
            ),
            {"s": series.id, "ls": ls_col, "fs": field_col, "ts": ts_col, "vs": value_col},
        )
        marks = sorted(dirty)
        await session.execute(
            text(
                "INSERT INTO series_dirty_hours (series_id, label_set_id, hour) "
                "SELECT :s, l, h FROM unnest(CAST(:ls AS bigint[]), CAST(:hs AS timestamptz[])) AS x(l, h) "
                "ON CONFLICT DO NOTHING"
            ),
            {"s": series.id, "ls": [m[0] for m in marks], "hs": [m[1] for m in marks]},
        )
        ends = _run_ends(dirty)
        await session.execute(
            text(_MARK_NEXT),
            {"s": series.id, "ls": [e[0] for e in ends], "ts": [e[1] for e in ends], "fs": list(range(len(index)))},
        )
    else:
        stmt = sqlite.insert(SeriesPoint)
        stmt = stmt.on_conflict_do_update(
            index_elements=[SeriesPoint.series_id, SeriesPoint.label_set_id, SeriesPoint.field, SeriesPoint.ts],
            set_={"value": stmt.excluded.value},
        )
        await session.execute(
            stmt,
            [
                {"series_id": series.id, "label_set_id": ls, "field": f, "ts": t, "value": v}
                for ls, f, t, v in zip(ls_col, field_col, ts_col, value_col, strict=True)
            ],
        )
    return len(value_col)


def _run_ends(hours: set[tuple[int, datetime]]) -> list[tuple[int, datetime]]:
    """The hour after each run of consecutive written hours, per label set."""
    ends = []
    for label_set, hour in sorted(hours):
        after = hour + timedelta(hours=1)
        if (label_set, after) not in hours:
            ends.append((label_set, after))
    return ends


# --- reads ----------------------------------------------------------------------------------------
@dataclass
class Source:
    """Which table answered a bucketed query (reported by the API)."""

    name: str = "raw"


def _raw_start(series: Series, start: datetime, now: datetime) -> datetime:
    return max(start, now - timedelta(days=series.raw_retention_days))


async def raw_points(
    *,
    session: AsyncSession,
    series: Series,
    query: Query,
    label_ids: dict[int, dict[str, str]],
    limit: int,
    now: datetime,
) -> list[Point]:
    """Points in the query's range (at most ``limit``), by label set then time."""
    index = {name: i for i, name in enumerate(series.fields or [])}
    names = {index[f]: f for f in query.fields if f in index}
    if not names or not label_ids:
        return []
    stmt = (
        select(SeriesPoint.label_set_id, SeriesPoint.ts, SeriesPoint.field, SeriesPoint.value)
        .where(
            SeriesPoint.series_id == series.id,
            SeriesPoint.field.in_(list(names)),
            SeriesPoint.ts >= _raw_start(series, query.start, now),
            SeriesPoint.ts < query.end,
        )
        .order_by(SeriesPoint.label_set_id, SeriesPoint.ts, SeriesPoint.field)
        .limit((limit + 1) * len(names))
    )
    if query.labels:
        stmt = stmt.where(SeriesPoint.label_set_id.in_(list(label_ids)))
    out: list[Point] = []
    current: tuple[int, datetime] | None = None
    for ls, ts, fld, value in await session.execute(stmt):
        if ls not in label_ids:
            continue
        ts = _utc(ts)
        if current != (ls, ts):
            if len(out) >= limit:
                out.append(Point(ts=ts, labels={}, values={}))  # one more than the limit: the caller refuses
                break
            current = (ls, ts)
            out.append(Point(ts=ts, labels=dict(label_ids[ls]), values={}))
        out[-1].values[names[fld]] = value
    return out


async def latest_points(
    *,
    session: AsyncSession,
    series: Series,
    label_ids: dict[int, dict[str, str]],
    fields: list[str],
    now: datetime | None = None,
) -> list[Point]:
    """The newest point of each label set within the series' retention: its timestamp and the
    values written at it."""
    oldest = (now or datetime.now(UTC)) - timedelta(days=series.raw_retention_days)
    index = {name: i for i, name in enumerate(series.fields or [])}
    names = {index[f]: f for f in fields if f in index}
    if not names or not label_ids:
        return []
    if _dialect(session) == "postgresql":
        rows = await session.execute(
            text(
                "SELECT q.label_set_id, q.field, q.ts, q.value "
                "FROM unnest(CAST(:ls AS bigint[])) AS l(id) CROSS JOIN unnest(CAST(:fs AS smallint[])) AS f(idx) "
                "CROSS JOIN LATERAL (SELECT label_set_id, field, ts, value FROM series_points "
                "WHERE series_id = :s AND label_set_id = l.id AND field = f.idx AND ts >= :oldest "
                "ORDER BY ts DESC LIMIT 1) AS q"
            ),
            {"s": series.id, "ls": list(label_ids), "fs": list(names), "oldest": oldest},
        )
        found = [(int(r[0]), int(r[1]), _utc(r[2]), float(r[3])) for r in rows]
    else:
        # SQLite: the bare columns of an aggregate query come from the row holding max(ts).
        rows = await session.execute(
            select(SeriesPoint.label_set_id, SeriesPoint.field, func.max(SeriesPoint.ts), SeriesPoint.value)
            .where(SeriesPoint.series_id == series.id, SeriesPoint.field.in_(list(names)), SeriesPoint.ts >= oldest)
            .group_by(SeriesPoint.label_set_id, SeriesPoint.field)
        )
        found = []
        for ls, fld, ts, value in rows:
            if int(ls) in label_ids:
                when = ts if isinstance(ts, datetime) else datetime.fromisoformat(str(ts))
                found.append((int(ls), int(fld), _utc(when), float(value)))
    newest: dict[int, tuple[datetime, dict[str, float]]] = {}
    for ls, fld, ts, value in found:
        held = newest.get(ls)
        if held is None or ts > held[0]:
            newest[ls] = (ts, {names[fld]: value})
        elif ts == held[0]:
            held[1][names[fld]] = value
    points = [Point(ts=ts, labels=dict(label_ids[ls]), values=values) for ls, (ts, values) in newest.items()]
    return sorted(points, key=lambda p: labels_key(p.labels))


async def bucket_points(
    *,
    session: AsyncSession,
    series: Series,
    query: Query,
    label_ids: dict[int, dict[str, str]],
    now: datetime,
    source: Source | None = None,
    use_rollups: bool | None = None,
) -> list[Bucket]:
    """Aggregates per bucket (``query.edges`` set by :func:`autoplat.series.check_size`).

    On PostgreSQL hour-aligned buckets are read from the rollups (``use_rollups=False`` forces the
    points, for comparisons); otherwise from the points."""
    index = {name: i for i, name in enumerate(series.fields or [])}
    names = {index[f]: f for f in query.fields if f in index and f in query.aggs}
    if not names or not label_ids:
        return []
    wanted = {a for f in names.values() for a in query.aggs[f]}
    keyed: dict[int, dict[str, str]] = dict(label_ids)
    if _dialect(session) != "postgresql":
        stats = await _sqlite_stats(session, series, query, keyed, names, wanted, now)
    else:
        rollups = hour_aligned(query.edges) if use_rollups is None else use_rollups
        if source is not None:
            source.name = "rollup" if rollups else "raw"
        stats = await _pg_stats(session, series, query, keyed, names, wanted, now, rollups)
    labels_of: dict[Any, dict[str, str]] = keyed
    return buckets_of(query, stats, labels_of)


async def _sqlite_stats(
    session: AsyncSession,
    series: Series,
    query: Query,
    label_ids: dict[int, dict[str, str]],
    names: dict[int, str],
    wanted: set[str],
    now: datetime,
) -> dict[tuple[Any, int], Stats]:
    start = _raw_start(series, query.edges[0], now)
    stmt = (
        select(SeriesPoint.label_set_id, SeriesPoint.field, SeriesPoint.ts, SeriesPoint.value)
        .where(
            SeriesPoint.series_id == series.id,
            SeriesPoint.field.in_(list(names)),
            SeriesPoint.ts >= start,
            SeriesPoint.ts < query.edges[-1],
        )
        .order_by(SeriesPoint.label_set_id, SeriesPoint.field, SeriesPoint.ts)
    )
    readings: dict[tuple[int, str], list[tuple[datetime, float]]] = {}
    for ls, fld, ts, value in await session.execute(stmt):
        if ls in label_ids:
            readings.setdefault((int(ls), names[fld]), []).append((_utc(ts), float(value)))
    previous: dict[tuple[int, str], float] = {}
    if "increase" in wanted:
        rows = await session.execute(
            select(SeriesPoint.label_set_id, SeriesPoint.field, func.max(SeriesPoint.ts), SeriesPoint.value)
            .where(SeriesPoint.series_id == series.id, SeriesPoint.field.in_(list(names)), SeriesPoint.ts < start)
            .group_by(SeriesPoint.label_set_id, SeriesPoint.field)
        )
        previous = {(int(ls), names[fld]): float(v) for ls, fld, _, v in rows if ls in label_ids}
    return aggregate(readings, previous, query.edges)


_INC = "CASE WHEN {prev} IS NULL THEN 0 WHEN {v} >= {prev} THEN {v} - {prev} ELSE {v} END"

#: Hourly aggregates of the points of the (label set, hour) pairs in ``d`` (the rollup job's
#: computation, also used by queries for hours not rolled up yet). An hour's ``inc`` is its
#: counter's increase including the step from the reading before its first point (in an earlier
#: hour), so the increase over any run of hours is a plain sum. Runs of consecutive hours are read
#: as one range of the index (gaps and islands), not hour by hour.
_HOUR = "date_bin('1 hour', p.ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
_DAY_OF_HOUR = "date_bin('1 day', hour, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
_HOURLY_FROM_POINTS = f"""
SELECT x.series_id, x.label_set_id, x.field, x.hour AS ts, count(*) AS n, sum(x.value) AS s,
       min(x.value) AS lo, max(x.value) AS hi,
       (array_agg(x.value ORDER BY x.ts))[1] AS first, (array_agg(x.value ORDER BY x.ts DESC))[1] AS last,
       sum({_INC.format(prev="x.prev", v="x.value")}) AS inc
FROM (
  SELECT y.*, coalesce(y.lagged, (
           SELECT q.value FROM series_points q
           WHERE q.series_id = y.series_id AND q.label_set_id = y.label_set_id AND q.field = y.field AND q.ts < y.lo
           ORDER BY q.ts DESC LIMIT 1)) AS prev
  FROM (
    SELECT p.series_id, p.label_set_id, p.field, {_HOUR} AS hour, p.ts, p.value, r.lo,
           lag(p.value) OVER (PARTITION BY p.label_set_id, p.field, r.lo ORDER BY p.ts) AS lagged
    FROM (
      SELECT series_id, label_set_id, min(hour) AS lo, max(hour) + interval '1 hour' AS hi
      FROM (SELECT series_id, label_set_id, hour,
                   hour - row_number() OVER (PARTITION BY series_id, label_set_id ORDER BY hour) * interval '1 hour'
                     AS island
            FROM d) AS runs
      GROUP BY series_id, label_set_id, island
    ) AS r
    JOIN series_points p ON p.series_id = r.series_id AND p.label_set_id = r.label_set_id
         AND p.ts >= r.lo AND p.ts < r.hi {{field_filter}}
  ) AS y
) AS x
GROUP BY x.series_id, x.label_set_id, x.field, x.hour
"""

#: After a write: the hour of the next point following each run of written hours is marked too
#: (its first step counts from a value that may have changed).
_MARK_NEXT = """
INSERT INTO series_dirty_hours (series_id, label_set_id, hour)
SELECT :s, e.l, date_bin('1 hour', q.ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')
FROM unnest(CAST(:ls AS bigint[]), CAST(:ts AS timestamptz[])) AS e(l, t)
CROSS JOIN unnest(CAST(:fs AS smallint[])) AS f(idx)
CROSS JOIN LATERAL (SELECT ts FROM series_points
   WHERE series_id = :s AND label_set_id = e.l AND field = f.idx AND ts >= e.t ORDER BY ts LIMIT 1) AS q
ON CONFLICT DO NOTHING
"""

#: The last point before the range of each (label set, field): a counter's first step.
_PREVIOUS = """
SELECT q.label_set_id, q.field, q.ts, q.value
FROM unnest(CAST(:ls AS bigint[])) AS l(id) CROSS JOIN unnest(CAST(:fs AS smallint[])) AS f(idx)
CROSS JOIN LATERAL (SELECT label_set_id, field, ts, value FROM series_points
   WHERE series_id = :s AND label_set_id = l.id AND field = f.idx AND ts < :start ORDER BY ts DESC LIMIT 1) AS q
"""


def _day(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _split_days(edges: Sequence[datetime], rstart: datetime) -> list[datetime]:
    """UTC days of the range not wholly inside one bucket (crossed by an edge, at the ends, or at
    the rollup retention limit): read hour by hour; the other days from the daily rollups."""
    out = {_day(e) for e in edges if e != _day(e)}
    out.add(_day(rstart))
    return sorted(out)


def _days_sql(wanted: set[str]) -> str:
    """Day, week and month buckets: whole UTC days from the daily rollups (unless an hour of the
    day waits to be rolled up), the hours of split or waiting days from the hourly rollups, and
    the waiting hours from the points."""
    hourly = _HOURLY_FROM_POINTS.format(field_filter="AND p.field = ANY(CAST(:fs AS smallint[]))")
    cols = "r.count AS n, r.sum AS s, r.min AS lo, r.max AS hi, r.first, r.last, r.increase AS inc"
    where = (
        "r.series_id = :s AND r.label_set_id = ANY(CAST(:ls AS bigint[])) AND r.field = ANY(CAST(:fs AS smallint[]))"
    )
    return f"""
WITH d AS (
  SELECT series_id, label_set_id, hour FROM series_dirty_hours
  WHERE series_id = :s AND label_set_id = ANY(CAST(:ls AS bigint[])) AND hour >= :start AND hour < :end
), dd AS (
  SELECT DISTINCT label_set_id, {_DAY_OF_HOUR} AS day FROM d
), split AS (
  SELECT day FROM unnest(CAST(:split AS timestamptz[])) AS t(day)
), h AS (
  SELECT r.label_set_id, r.field, r.day AS ts, {cols}
  FROM series_rollups_daily r
  WHERE {where} AND r.day >= :rstart AND r.day < :end AND r.day <> ALL(CAST(:split AS timestamptz[]))
    AND NOT EXISTS (SELECT 1 FROM dd WHERE dd.label_set_id = r.label_set_id AND dd.day = r.day)
  UNION ALL
  SELECT r.label_set_id, r.field, r.hour AS ts, {cols}
  FROM split JOIN series_rollups r ON r.hour >= split.day AND r.hour < split.day + interval '1 day'
  WHERE {where} AND r.hour >= :rstart AND r.hour >= :start AND r.hour < :end
    AND NOT EXISTS (SELECT 1 FROM d WHERE d.label_set_id = r.label_set_id AND d.hour = r.hour)
  UNION ALL
  SELECT r.label_set_id, r.field, r.hour AS ts, {cols}
  FROM dd JOIN series_rollups r ON r.label_set_id = dd.label_set_id
       AND r.hour >= dd.day AND r.hour < dd.day + interval '1 day'
  WHERE {where} AND r.hour >= :rstart AND r.hour >= :start AND r.hour < :end
    AND dd.day <> ALL(CAST(:split AS timestamptz[]))
    AND NOT EXISTS (SELECT 1 FROM d WHERE d.label_set_id = r.label_set_id AND d.hour = r.hour)
  UNION ALL
  SELECT label_set_id, field, ts, n, s, lo, hi, first, last, inc FROM ({hourly}) AS fresh
)
SELECT label_set_id, field, width_bucket(ts, CAST(:edges AS timestamptz[])) AS b,
       {_outer(wanted, "s", "first", "last", "inc")}
FROM h GROUP BY 1, 2, 3
"""


def _outer(wanted: set[str], value: str, first: str, last: str, inc: str) -> str:
    # Only what is asked for: on a year of hours each aggregate costs.
    cols = ["sum(n)", f"sum({value})" if wanted & {"avg", "sum"} else "NULL"]
    cols += ["min(lo)" if "min" in wanted else "NULL", "max(hi)" if "max" in wanted else "NULL"]
    cols.append(f"(array_agg({first} ORDER BY ts))[1]" if "first" in wanted else "NULL")
    cols.append(f"(array_agg({last} ORDER BY ts DESC))[1]" if "last" in wanted else "NULL")
    cols.append(f"sum({inc})" if "increase" in wanted else "NULL")
    return ", ".join(cols)


async def _pg_stats(
    session: AsyncSession,
    series: Series,
    query: Query,
    label_ids: dict[int, dict[str, str]],
    names: dict[int, str],
    wanted: set[str],
    now: datetime,
    rollups: bool,
) -> dict[tuple[Any, int], Stats]:
    start, end = query.edges[0], query.edges[-1]
    params: dict[str, Any] = {
        "s": series.id,
        "ls": list(label_ids),
        "fs": list(names),
        "start": start,
        "end": end,
        "edges": list(query.edges),
        "rawstart": _raw_start(series, start, now),
        "rstart": max(start, now - timedelta(days=series.rollup_retention_days)),
    }
    increase = "increase" in wanted
    filters = "series_id = :s AND label_set_id = ANY(CAST(:ls AS bigint[])) AND field = ANY(CAST(:fs AS smallint[]))"
    if not rollups:
        previous = f"UNION ALL SELECT label_set_id, field, ts, value FROM ({_PREVIOUS}) AS pv" if increase else ""
        window = ", lag(value) OVER (PARTITION BY label_set_id, field ORDER BY ts) AS prev" if increase else ""
        sql = f"""
WITH pts AS (
  SELECT label_set_id, field, ts, value FROM series_points
  WHERE {filters} AND ts >= :rawstart AND ts < :end
  {previous}
), w AS (SELECT label_set_id, field, ts, value, 1 AS n, value AS lo, value AS hi{window} FROM pts)
SELECT label_set_id, field, width_bucket(ts, CAST(:edges AS timestamptz[])) AS b,
       {_outer(wanted, "value", "value", "value", _INC.format(prev="prev", v="value"))}
FROM w WHERE ts >= :start GROUP BY 1, 2, 3
"""
    elif query.step in ("1d", "1w", "1mo"):
        params["split"] = _split_days(query.edges, params["rstart"])
        sql = _days_sql(wanted)
    else:
        hourly = _HOURLY_FROM_POINTS.format(field_filter="AND p.field = ANY(CAST(:fs AS smallint[]))")
        sql = f"""
WITH d AS (
  SELECT series_id, label_set_id, hour FROM series_dirty_hours
  WHERE series_id = :s AND label_set_id = ANY(CAST(:ls AS bigint[])) AND hour >= :start AND hour < :end
), h AS (
  SELECT r.label_set_id, r.field, r.hour AS ts, r.count AS n, r.sum AS s, r.min AS lo, r.max AS hi,
         r.first, r.last, r.increase AS inc
  FROM series_rollups r
  WHERE r.series_id = :s AND r.label_set_id = ANY(CAST(:ls AS bigint[])) AND r.field = ANY(CAST(:fs AS smallint[]))
    AND r.hour >= :rstart AND r.hour < :end
    AND NOT EXISTS (SELECT 1 FROM d WHERE d.label_set_id = r.label_set_id AND d.hour = r.hour)
  UNION ALL
  SELECT label_set_id, field, ts, n, s, lo, hi, first, last, inc FROM ({hourly}) AS fresh
)
SELECT label_set_id, field, width_bucket(ts, CAST(:edges AS timestamptz[])) AS b,
       {_outer(wanted, "s", "first", "last", "inc")}
FROM h GROUP BY 1, 2, 3
"""
    # These plans' cost estimates (a subplan per partition) cross jit_above_cost; compiling them
    # takes ~400 ms on a small box, far more than running them.
    await session.execute(text("SET LOCAL jit = off"))
    out: dict[tuple[Any, int], Stats] = {}
    for ls, fld, b, n, s, lo, hi, first, last, inc in await session.execute(text(sql), params):
        if not 1 <= b < len(query.edges) or not n:
            continue
        out[((int(ls), names[int(fld)]), int(b) - 1)] = Stats(
            count=int(n),
            sum=float(s or 0.0),
            min=float(lo if lo is not None else math.inf),
            max=float(hi if hi is not None else -math.inf),
            first=None if first is None else float(first),
            last=None if last is None else float(last),
            increase=float(inc or 0.0),
        )
    return out


# --- maintenance ----------------------------------------------------------------------------------
async def roll_up(*, session: AsyncSession, limit: int = 5000) -> int:
    """Recompute up to ``limit`` marked hours from their points (PostgreSQL); returns how many.
    Claims marks with ``SKIP LOCKED``, so concurrent runs share the work; a write during the run
    marks its hour again, for the next one."""
    if _dialect(session) != "postgresql":
        return 0
    await session.execute(text("SET LOCAL jit = off"))
    # One rollup transaction at a time: two recomputing hours of the same day would each miss the
    # other's hours in the day's row.
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ROLLUP_LOCK})
    claimed = (
        await session.execute(
            text(
                "DELETE FROM series_dirty_hours WHERE (series_id, label_set_id, hour) IN ("
                "SELECT series_id, label_set_id, hour FROM series_dirty_hours "
                "ORDER BY series_id, label_set_id, hour LIMIT :n "
                "FOR UPDATE SKIP LOCKED) RETURNING series_id, label_set_id, hour"
            ),
            {"n": limit},
        )
    ).all()
    if not claimed:
        return 0
    params = {
        "ss": [int(r[0]) for r in claimed],
        "ls": [int(r[1]) for r in claimed],
        "hs": [r[2] for r in claimed],
    }
    await ensure_partitions(session=session, table=ROLLUPS, times=set(params["hs"]))
    claim = (
        "WITH d AS (SELECT * FROM unnest(CAST(:ss AS int[]), CAST(:ls AS bigint[]), CAST(:hs AS timestamptz[])) "
        "AS c(series_id, label_set_id, hour)) "
    )
    await session.execute(
        text(
            claim + "DELETE FROM series_rollups r USING d WHERE r.series_id = d.series_id "
            "AND r.label_set_id = d.label_set_id AND r.hour = d.hour"
        ),
        params,
    )
    await session.execute(
        text(
            claim
            + "INSERT INTO series_rollups (series_id, label_set_id, field, hour, count, sum, min, max, first, last, "
            "increase) SELECT series_id, label_set_id, field, ts, n, s, lo, hi, first, last, inc FROM ("
            + _HOURLY_FROM_POINTS.format(field_filter="")
            + ") AS fresh"
        ),
        params,
    )
    days = (
        "WITH d AS (SELECT * FROM unnest(CAST(:ss AS int[]), CAST(:ls AS bigint[]), CAST(:hs AS timestamptz[])) "
        "AS c(series_id, label_set_id, hour)), "
        f"days AS (SELECT DISTINCT series_id, label_set_id, {_DAY_OF_HOUR} AS day FROM d) "
    )
    await session.execute(
        text(
            days + "DELETE FROM series_rollups_daily r USING days WHERE r.series_id = days.series_id "
            "AND r.label_set_id = days.label_set_id AND r.day = days.day"
        ),
        params,
    )
    await session.execute(
        text(
            days
            + "INSERT INTO series_rollups_daily (series_id, label_set_id, field, day, count, sum, min, max, first, "
            "last, increase) SELECT r.series_id, r.label_set_id, r.field, days.day, sum(r.count), sum(r.sum), "
            "min(r.min), max(r.max), (array_agg(r.first ORDER BY r.hour))[1], "
            "(array_agg(r.last ORDER BY r.hour DESC))[1], sum(r.increase) "
            "FROM days JOIN series_rollups r ON r.series_id = days.series_id AND r.label_set_id = days.label_set_id "
            "AND r.hour >= days.day AND r.hour < days.day + interval '1 day' "
            "GROUP BY r.series_id, r.label_set_id, r.field, days.day"
        ),
        params,
    )
    return len(claimed)


async def drop_expired(*, session: AsyncSession, now: datetime | None = None) -> dict[str, list[str]]:
    """Retention. PostgreSQL: drop the partitions whose end is older than the longest retention of
    any series (raw points, rollups); reads clip each series to its own. SQLite: delete each
    series' points older than its raw retention. Returns what went, by table."""
    now = now or datetime.now(UTC)
    raw_days, rollup_days = (
        await session.execute(select(func.max(Series.raw_retention_days), func.max(Series.rollup_retention_days)))
    ).one()
    dropped: dict[str, list[str]] = {POINTS: [], ROLLUPS: []}
    if _dialect(session) != "postgresql":
        for row in await list_all(session=session):
            result = await session.execute(
                delete(SeriesPoint).where(
                    SeriesPoint.series_id == row.id,
                    SeriesPoint.ts < now - timedelta(days=row.raw_retention_days),
                )
            )
            if result.rowcount:  # type: ignore[attr-defined]
                dropped[POINTS].append(f"{row.name}: {result.rowcount} points")  # type: ignore[attr-defined]
        return dropped
    from autoplat.series import DEFAULT_RAW_RETENTION_DAYS, DEFAULT_ROLLUP_RETENTION_DAYS

    limits = {
        POINTS: now - timedelta(days=int(raw_days or DEFAULT_RAW_RETENTION_DAYS)),
        ROLLUPS: now - timedelta(days=int(rollup_days or DEFAULT_ROLLUP_RETENTION_DAYS)),
    }
    for table, cutoff in limits.items():
        for name, _start, end in await partitions(session=session, table=table):
            if end <= cutoff:
                await session.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
                _cache(session).discard(name)
                dropped[table].append(name)
    # Daily rows: one per label set, field and day, so a day's worth is a short DELETE.
    result = await session.execute(
        delete(SeriesDailyRollup).where(SeriesDailyRollup.day < limits[ROLLUPS] - timedelta(days=1))
    )
    if result.rowcount:  # type: ignore[attr-defined]
        dropped[DAILY] = [f"{result.rowcount} daily rows"]  # type: ignore[attr-defined]
    return dropped


async def list_all(*, session: AsyncSession) -> list[Series]:
    return list(await session.scalars(select(Series).order_by(Series.id)))


async def prepare_ahead(*, session: AsyncSession, now: datetime | None = None, months: int = 2) -> list[str]:
    """Make this month's and the next ``months`` months' partitions (and their rollup years)."""
    now = now or datetime.now(UTC)
    times = [month_start(now)]
    for _ in range(months):
        times.append(_next_month(times[-1]))
    created = await ensure_partitions(session=session, table=POINTS, times=times)
    created += await ensure_partitions(session=session, table=ROLLUPS, times=times)
    return created


async def pending_hours(*, session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(SeriesDirtyHour)) or 0)


async def rollup_count(*, session: AsyncSession, series_id: int) -> int:
    return int(
        await session.scalar(select(func.count()).select_from(SeriesRollup).where(SeriesRollup.series_id == series_id))
        or 0
    )


# --- the query API --------------------------------------------------------------------------------
@dataclass
class SeriesInfo:
    """A declared series with what has been written to it (``GET /series``)."""

    defn: SeriesDef
    label_sets: int
    label_values: dict[str, list[str]]


@dataclass
class QueryResult:
    """What ``GET /series/query`` answers: points (raw, latest) or buckets, grouped by label set."""

    module: str
    defn: SeriesDef
    query: Query
    source: str
    points: list[Point]
    buckets: list[Bucket]


async def _module_series(*, session: AsyncSession, module: str) -> tuple[str, dict[str, SeriesDef]]:
    from registry.errors import NotFound

    found = await module_manifest(session=session, name=module)
    if found is None:
        raise NotFound(f"module {module!r} not found", details={"module": module})
    return found[0], declared(found[1])


async def describe(*, session: AsyncSession, module: str, max_values: int = 1000) -> list[SeriesInfo]:
    """The module's declared series with their label values (at most ``max_values`` per label)."""
    module_id, series_defs = await _module_series(session=session, module=module)
    rows = {row.name: row for row in await list_series(session=session, module_id=module_id)}
    out = []
    for name, defn in series_defs.items():
        sets: dict[int, dict[str, str]] = {}
        if name in rows:
            sets = await label_sets(session=session, series_id=rows[name].id)
        values: dict[str, list[str]] = {}
        for label in defn.labels:
            values[label] = sorted({s[label] for s in sets.values() if label in s})[:max_values]
        out.append(SeriesInfo(defn=defn, label_sets=len(sets), label_values=values))
    return out


async def run_query(
    *,
    session: AsyncSession,
    module: str,
    series: str,
    start: Any,
    end: Any,
    step: str,
    tz: str,
    labels: list[str],
    fields: list[str] | None,
    agg: list[str] | None,
    latest: bool,
    max_points: int,
    now: datetime | None = None,
    use_rollups: bool | None = None,
) -> QueryResult:
    """One ``GET /series/query`` (``labels``: ``name:value`` filters): checked (422 naming the
    problem), refused past ``max_points`` (422 naming the limit and a coarser step), then answered
    from the rollups or the points (``use_rollups=False`` forces the points: the benchmark's
    baseline)."""
    from autoplat.series import TooManyPoints, build_query, check_size, suggest_step
    from registry.errors import InvalidInput, NotFound

    now = now or datetime.now(UTC)
    module_id, series_defs = await _module_series(session=session, module=module)
    defn = series_defs.get(series)
    if defn is None:
        raise NotFound(
            f"module {module!r} declares no series {series!r}",
            details={"module": module, "series": series, "declared": sorted(series_defs)},
        )
    filters: dict[str, str] = {}
    for item in labels:
        name, sep, value = item.partition(":")
        if not sep or not value:
            raise InvalidInput(f"label filter {item[:80]!r} is not name:value", details={"label": item[:80]})
        filters[name] = value
    try:
        query = build_query(
            defn,
            start=start if start is not None else now - timedelta(days=1),
            end=end if end is not None else now,
            step=step,
            tz=tz,
            labels=filters,
            fields=fields or None,
            agg=_parse_aggs(agg) if agg else None,
        )
        if latest and step != "raw":
            raise ValueError("latest=true answers the newest point of each label set: leave step out")
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    row = await get_series(session=session, module_id=module_id, name=series)
    ids = await label_sets(session=session, series_id=row.id, filters=query.labels) if row is not None else {}
    result = QueryResult(module=module, defn=defn, query=query, source="raw", points=[], buckets=[])
    try:
        if latest:
            result.source = "latest"
            if row is not None:
                result.points = await latest_points(
                    session=session, series=row, label_ids=ids, fields=query.fields, now=now
                )
        elif query.step == "raw":
            if row is not None:
                found = await raw_points(
                    session=session, series=row, query=query, label_ids=ids, limit=max_points, now=now
                )
                if len(found) > max_points:
                    raise TooManyPoints(max_points, None, suggest_step(query, len(ids), max_points))
                result.points = found
        else:
            check_size(query, len(ids), max_points)
            if row is not None:
                source = Source()
                result.buckets = await bucket_points(
                    session=session,
                    series=row,
                    query=query,
                    label_ids=ids,
                    now=now,
                    source=source,
                    use_rollups=use_rollups,
                )
                result.source = source.name
    except TooManyPoints as exc:
        raise InvalidInput(str(exc), details={"limit": exc.limit, "suggested_step": exc.step}) from None
    return result


def _parse_aggs(values: list[str]) -> dict[str, list[str]] | list[str]:
    """``agg=avg`` (every field) or ``agg=energy_kwh:increase`` (one field); not both kinds."""
    per_field: dict[str, list[str]] = {}
    plain: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if ":" in part:
                name, _, agg = part.partition(":")
                per_field.setdefault(name, []).append(agg)
            else:
                plain.append(part)
    if per_field and plain:
        raise ValueError("give agg either as names for every field (agg=avg) or per field (agg=power_w:avg), not both")
    return per_field or plain
