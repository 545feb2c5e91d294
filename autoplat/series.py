"""Time series (``ctx.series``): readings a module writes from its jobs and queries by time.

A module declares its series in the manifest's ``series`` section (name, numeric fields, each a
``gauge`` or a ``counter``, labels, retention) and ``"series"`` in ``permissions.services``. A
handler then writes points and reads ranges, rollups and the latest point per label set::

    await ctx.series.write("meter", {"meter": "m1"}, {"energy_kwh": 1234.5}, at=reading_time)
    await ctx.series.write_many("meter", [{"ts": t, "labels": {"meter": "m1"}, "values": {...}}])
    buckets = await ctx.series.rollup("meter", start, end, step="1d", agg={"energy_kwh": ["increase"]})

The rules every implementation applies (the platform's database, :mod:`autoplat._series_memory`
for the test harness) live here, with the bucket arithmetic both share, so a handler sees the
same answers under test as in production. See docs/series.md.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from autoplat._sync import Runner
from autoplat.errors import JobError

__all__ = [
    "AGGREGATIONS",
    "Bucket",
    "Point",
    "SeriesBase",
    "SeriesDef",
    "SeriesError",
    "STEPS",
]

FIELD_KINDS = ("gauge", "counter")
AGGREGATIONS = ("avg", "min", "max", "sum", "count", "first", "last", "increase")
#: Query steps: ``raw`` (the points themselves) and bucket sizes; ``1d``, ``1w`` and ``1mo`` are
#: calendar days, weeks (from Monday) and months in the query's timezone.
STEPS = ("raw", "1m", "5m", "1h", "1d", "1w", "1mo")
_FIXED = {"1m": 60, "5m": 300, "1h": 3600}
DEFAULT_RAW_RETENTION_DAYS = 400
DEFAULT_ROLLUP_RETENTION_DAYS = 1826  # five years
#: Most points one ``write_many`` call takes (larger batches are refused whole).
MAX_BATCH = 10_000
#: How far ahead of the writer's clock a timestamp may be.
DEFAULT_MAX_FUTURE = timedelta(days=1)
#: Most points a read returns unless the platform's setting says otherwise.
DEFAULT_MAX_POINTS = 100_000
MAX_LABEL_VALUE = 200
MAX_FAILURES_REPORTED = 20
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SeriesError(JobError):
    """An invalid series call (undeclared series or field, bad value or timestamp, too many points):
    fails the step without a retry; ``details`` says which points failed and why."""


@dataclass(frozen=True)
class SeriesDef:
    """A series as the manifest declares it (defaults applied)."""

    name: str
    fields: dict[str, str]
    labels: tuple[str, ...] = ()
    raw_retention_days: int = DEFAULT_RAW_RETENTION_DAYS
    rollup_retention_days: int = DEFAULT_ROLLUP_RETENTION_DAYS
    description: str = ""

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any]) -> SeriesDef:
        retention = entry.get("retention") or {}
        return cls(
            name=str(entry["name"]),
            fields={str(k): str((v or {}).get("type", "gauge")) for k, v in (entry.get("fields") or {}).items()},
            labels=tuple(str(label) for label in entry.get("labels") or ()),
            raw_retention_days=int(retention.get("rawDays") or DEFAULT_RAW_RETENTION_DAYS),
            rollup_retention_days=int(retention.get("rollupDays") or DEFAULT_ROLLUP_RETENTION_DAYS),
            description=str(entry.get("description") or ""),
        )

    def as_dict(self) -> dict[str, Any]:
        """As a manifest entry."""
        return {
            "name": self.name,
            "description": self.description,
            "fields": {name: {"type": kind} for name, kind in self.fields.items()},
            "labels": list(self.labels),
            "retention": {"rawDays": self.raw_retention_days, "rollupDays": self.rollup_retention_days},
        }


def definitions(manifest: Mapping[str, Any] | None) -> dict[str, SeriesDef]:
    """The series a manifest declares, by name."""
    entries = (manifest or {}).get("series") or []
    return {str(e["name"]): SeriesDef.from_manifest(e) for e in entries if isinstance(e, Mapping) and "name" in e}


@dataclass(frozen=True)
class Point:
    """A reading: its time (UTC), labels and field values."""

    ts: datetime
    labels: dict[str, str]
    values: dict[str, float]


@dataclass(frozen=True)
class Bucket:
    """One bucket of a rollup: its start (UTC), labels and ``{field: {aggregation: value}}``."""

    ts: datetime
    labels: dict[str, str]
    values: dict[str, dict[str, float | None]]


# --- validation shared by every implementation ---------------------------------------------------
def parse_time(value: Any, what: str = "timestamp") -> datetime:
    """A timezone-aware datetime, an ISO 8601 string with an offset, or Unix seconds → UTC datetime."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a datetime, an ISO 8601 string or Unix seconds, not a bool")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite")
        try:
            return _EPOCH + timedelta(seconds=float(value))
        except OverflowError:
            raise ValueError(f"{what} {value!r} is out of range") from None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{what} {value[:40]!r} is not an ISO 8601 date-time") from None
        value = parsed
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{what} {value.isoformat()} has no timezone (give an offset, e.g. +00:00)")
        return value.astimezone(UTC)
    raise ValueError(f"{what} must be a datetime, an ISO 8601 string or Unix seconds, not {type(value).__name__}")


def check_labels(defn: SeriesDef, labels: Any) -> dict[str, str]:
    if labels is None:
        labels = {}
    if not isinstance(labels, Mapping):
        raise ValueError(f"labels must be an object of label name -> string, not {type(labels).__name__}")
    unknown = sorted(str(k) for k in labels if k not in defn.labels)
    if unknown:
        raise ValueError(
            f"unknown label(s) {', '.join(unknown)} for series {defn.name!r} (declared: {_listed(defn.labels)})"
        )
    missing = [name for name in defn.labels if name not in labels]
    if missing:
        raise ValueError(f"missing label(s) {', '.join(missing)} (every point names every declared label)")
    out: dict[str, str] = {}
    for name in defn.labels:
        out[name] = check_label_value(name, labels[name])
    return out


def _listed(names: Iterable[str]) -> str:
    return ", ".join(names) or "none"


def check_label_value(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"label {name!r} must be a string, not {type(value).__name__}")
    if not value or len(value) > MAX_LABEL_VALUE:
        raise ValueError(f"label {name!r} must be 1-{MAX_LABEL_VALUE} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError(f"label {name!r} contains a control character or a lone surrogate")
    return value


def check_values(defn: SeriesDef, values: Any) -> dict[str, float]:
    if not isinstance(values, Mapping) or not values:
        raise ValueError("values must be a non-empty object of field name -> number")
    out: dict[str, float] = {}
    for name, value in values.items():
        if name not in defn.fields:
            raise ValueError(
                f"undeclared field {str(name)[:64]!r} for series {defn.name!r} (declared: {', '.join(defn.fields)})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"field {name!r} must be a number, not {type(value).__name__}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"field {name!r} is {value!r}: NaN and infinities are refused")
        out[str(name)] = number
    return out


def check_point(
    defn: SeriesDef,
    ts: Any,
    labels: Any,
    values: Any,
    *,
    now: datetime,
    max_future: timedelta,
    seen: dict[Any, dict[str, str]] | None = None,
) -> tuple[datetime, dict[str, str], dict[str, float]]:
    """One point, normalised; raises ``ValueError`` with the reason. ``seen`` remembers label sets
    already checked (a batch repeats the same few)."""
    when = parse_time(ts)
    if when > now + max_future:
        raise ValueError(
            f"timestamp {when.isoformat()} is more than {_human(max_future)} ahead of the platform's clock"
        )
    oldest = now - timedelta(days=defn.raw_retention_days)
    if when < oldest:
        raise ValueError(
            f"timestamp {when.isoformat()} is before the retention window of {defn.raw_retention_days} days"
        )
    if seen is None:
        return when, check_labels(defn, labels), check_values(defn, values)
    try:
        memo = tuple(labels.items()) if type(labels) is dict else None
    except TypeError:
        memo = None
    checked = seen.get(memo) if memo is not None else None
    if checked is None:
        checked = check_labels(defn, labels)
        # Equal label sets end up as one shared object, whatever form they came in.
        checked = seen.setdefault(("=", *checked.values()), checked)
        if memo is not None:
            seen[memo] = checked
    return when, checked, check_values(defn, values)


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day(s)"
    return f"{seconds} s"


def point_parts(point: Any) -> tuple[Any, Any, Any]:
    """``(ts, labels, values)`` of a :class:`Point`, a mapping or a 3-sequence."""
    if isinstance(point, Point):
        return point.ts, point.labels, point.values
    if isinstance(point, Mapping):
        unknown = set(point) - {"ts", "labels", "values"}
        if unknown:
            raise ValueError(f"unknown point key(s) {', '.join(sorted(map(str, unknown)))} (use ts, labels, values)")
        if "ts" not in point or "values" not in point:
            raise ValueError("a point needs ts and values")
        return point["ts"], point.get("labels"), point["values"]
    if isinstance(point, list | tuple) and len(point) == 3:
        return point[0], point[1], point[2]
    raise ValueError(
        "a point is a Point, an object {ts, labels, values} or a (ts, labels, values) triple, "
        f"not {type(point).__name__}"
    )


def check_batch(
    defn: SeriesDef, points: Iterable[Any], *, now: datetime, max_future: timedelta, max_batch: int = MAX_BATCH
) -> list[tuple[datetime, dict[str, str], dict[str, float]]]:
    """Every point of a batch checked; the whole batch is refused (naming the failed points) when
    one fails. Points for the same (labels, timestamp) merge, the later values winning."""
    if isinstance(points, str | bytes | Mapping):
        raise SeriesError("points must be a list of points")
    items = list(points)
    if len(items) > max_batch:
        raise SeriesError(
            f"{len(items)} points in one call: at most {max_batch} per call; split the batch "
            "(writes are idempotent, a retried step writes no duplicates)",
            details={"limit": max_batch, "count": len(items)},
        )
    failures: list[dict[str, Any]] = []
    merged: dict[tuple[int, datetime], tuple[datetime, dict[str, str], dict[str, float]]] = {}
    seen: dict[Any, dict[str, str]] = {}
    for index, item in enumerate(items):
        try:
            ts, labels, values = check_point(defn, *point_parts(item), now=now, max_future=max_future, seen=seen)
        except ValueError as exc:
            failures.append({"index": index, "error": str(exc)})
            continue
        # Checked label sets are shared objects (and hold the labels in declared order): their id
        # identifies them within the batch.
        key = (id(labels), ts)
        if key in merged:
            merged[key][2].update(values)
        else:
            merged[key] = (ts, labels, values)
    if failures:
        raise SeriesError(
            f"{len(failures)} of {len(items)} point(s) refused, nothing written: "
            f"point {failures[0]['index']}: {failures[0]['error']}",
            details={"count": len(items), "refused": len(failures), "failures": failures[:MAX_FAILURES_REPORTED]},
        )
    return list(merged.values())


def labels_key(labels: Mapping[str, str]) -> str:
    """A stable text key of a label set (sorted JSON)."""
    import json

    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"), ensure_ascii=False)


# --- steps and buckets ------------------------------------------------------------------------------
def check_step(step: Any) -> str:
    if step not in STEPS:
        raise ValueError(f"step {str(step)[:20]!r} is not one of {', '.join(STEPS)}")
    return str(step)


def check_tz(tz: Any) -> ZoneInfo:
    if not isinstance(tz, str) or not tz or len(tz) > 64 or ".." in tz or tz.startswith("/"):
        raise ValueError(f"timezone {str(tz)[:64]!r} is not an IANA timezone name")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {tz[:64]!r} is not an IANA timezone name (e.g. Europe/Berlin)") from None


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def floor_time(ts: datetime, step: str, zone: ZoneInfo) -> datetime:
    """The start of the bucket holding ``ts``."""
    if step in _FIXED:
        size = _FIXED[step]
        local = ts.astimezone(zone)
        offset = int((local.utcoffset() or timedelta()).total_seconds())
        seconds = (ts - _EPOCH).total_seconds() + offset
        return _EPOCH + timedelta(seconds=math.floor(seconds / size) * size - offset)
    day = ts.astimezone(zone).date()
    if step == "1w":
        day = day - timedelta(days=day.weekday())
    elif step == "1mo":
        day = day.replace(day=1)
    start = _local_midnight(day, zone)
    return start if start <= ts else _local_midnight(day - timedelta(days=1), zone)


def next_edge(edge: datetime, step: str, zone: ZoneInfo) -> datetime:
    if step in _FIXED:
        return edge + timedelta(seconds=_FIXED[step])
    day = edge.astimezone(zone).date()
    if step == "1d":
        day += timedelta(days=1)
    elif step == "1w":
        day += timedelta(days=7)
    else:
        day = date(day.year + (day.month == 12), day.month % 12 + 1, 1)
    return _local_midnight(day, zone)


def estimate_buckets(start: datetime, end: datetime, step: str) -> int:
    """An upper bound of the buckets between ``start`` and ``end`` (checked before making them)."""
    seconds = (end - start).total_seconds()
    size = {"1d": 86400 - 3600, "1w": 7 * 86400 - 3600, "1mo": 28 * 86400 - 3600}.get(step) or _FIXED[step]
    return int(seconds // size) + 2


def bucket_edges(start: datetime, end: datetime, step: str, zone: ZoneInfo) -> list[datetime]:
    """Edges of the buckets covering ``[start, end)``: the first bucket starts at or before
    ``start``, the last ends at or after ``end`` (whole buckets only)."""
    edges = [floor_time(start, step, zone)]
    while edges[-1] < end:
        edges.append(next_edge(edges[-1], step, zone))
    return edges


def hour_aligned(edges: Sequence[datetime]) -> bool:
    """Whether every edge is a whole UTC hour: the hourly rollups can answer then."""
    return all(e.minute == 0 and e.second == 0 and e.microsecond == 0 for e in edges)


def increase(previous: float | None, value: float) -> float:
    """A counter's increase from ``previous`` to ``value``; a drop is a reset (from zero)."""
    if previous is None:
        return 0.0
    return value - previous if value >= previous else value


@dataclass
class Stats:
    """Running aggregates of one (label set, field, bucket)."""

    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    first: float | None = None
    last: float | None = None
    increase: float = 0.0

    def value(self, agg: str) -> float | None:
        if agg == "avg":
            return self.sum / self.count if self.count else None
        if agg == "count":
            return float(self.count)
        if agg in ("min", "max"):
            return getattr(self, agg) if self.count else None
        return getattr(self, agg)  # type: ignore[no-any-return]


def aggregate(
    readings: Mapping[Any, Sequence[tuple[datetime, float]]],
    previous: Mapping[Any, float],
    edges: Sequence[datetime],
) -> dict[tuple[Any, int], Stats]:
    """The reference bucket arithmetic: ``readings`` maps a key (label set, field) to its points in
    time order within ``[edges[0], edges[-1])``; ``previous`` the value just before them (for a
    counter's increase). Returns stats by (key, bucket index)."""
    out: dict[tuple[Any, int], Stats] = {}
    for key, points in readings.items():
        prev = previous.get(key)
        for ts, value in points:
            index = bisect_right(edges, ts) - 1
            if index < 0 or index >= len(edges) - 1:
                prev = value
                continue
            stats = out.setdefault((key, index), Stats())
            stats.count += 1
            stats.sum += value
            stats.min = min(stats.min, value)
            stats.max = max(stats.max, value)
            if stats.first is None:
                stats.first = value
            stats.last = value
            stats.increase += increase(prev, value)
            prev = value
    return out


@dataclass
class Query:
    """A checked read: what the database (or the memory store) answers."""

    defn: SeriesDef
    start: datetime
    end: datetime
    step: str = "raw"
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    labels: dict[str, str] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)
    aggs: dict[str, list[str]] = field(default_factory=dict)
    edges: list[datetime] = field(default_factory=list)


def default_aggs(defn: SeriesDef, fields: Iterable[str]) -> dict[str, list[str]]:
    """``avg`` for gauges, ``increase`` for counters."""
    return {f: ["increase" if defn.fields[f] == "counter" else "avg"] for f in fields}


def build_query(
    defn: SeriesDef,
    *,
    start: Any,
    end: Any,
    step: Any = "raw",
    tz: Any = "UTC",
    labels: Mapping[str, Any] | None = None,
    fields: Iterable[str] | None = None,
    agg: Mapping[str, Iterable[str]] | Iterable[str] | None = None,
) -> Query:
    """A read checked against its series (raises ``ValueError`` naming the problem)."""
    begin, finish = parse_time(start, "from"), parse_time(end, "to")
    if begin >= finish:
        raise ValueError(f"from ({begin.isoformat()}) must be before to ({finish.isoformat()})")
    step = check_step(step)
    zone = check_tz(tz)
    filters: dict[str, str] = {}
    for name, value in (labels or {}).items():
        if name not in defn.labels:
            raise ValueError(
                f"unknown label {str(name)[:64]!r} for series {defn.name!r} (declared: {_listed(defn.labels)})"
            )
        filters[name] = check_label_value(name, value)
    chosen = list(fields) if fields else list(defn.fields)
    for name in chosen:
        if name not in defn.fields:
            raise ValueError(
                f"unknown field {str(name)[:64]!r} for series {defn.name!r} (declared: {', '.join(defn.fields)})"
            )
    aggs: dict[str, list[str]] = {}
    if agg:
        if step == "raw":
            raise ValueError("aggregations need a step (1m, 5m, 1h, 1d, 1w or 1mo); step=raw returns the points")
        if isinstance(agg, Mapping):
            wanted = {str(k): list(v) for k, v in agg.items()}
        else:
            names = list(agg)
            wanted = dict.fromkeys(chosen, names)
        for name, names in wanted.items():
            if name not in defn.fields:
                raise ValueError(
                    f"unknown field {name[:64]!r} for series {defn.name!r} (declared: {', '.join(defn.fields)})"
                )
            for a in names:
                if a not in AGGREGATIONS:
                    raise ValueError(f"aggregation {str(a)[:20]!r} is not one of {', '.join(AGGREGATIONS)}")
                if a == "increase" and defn.fields[name] != "counter":
                    raise ValueError(f"increase applies to counter fields; {name!r} is a gauge")
            aggs[name] = list(dict.fromkeys(names))
        if fields is None:
            chosen = list(aggs)
        else:
            for name in chosen:
                aggs.setdefault(name, default_aggs(defn, [name])[name])
    elif step != "raw":
        aggs = default_aggs(defn, chosen)
    return Query(defn=defn, start=begin, end=finish, step=step, zone=zone, labels=filters, fields=chosen, aggs=aggs)


def check_size(query: Query, label_sets: int, max_points: int) -> None:
    """Refuse a bucketed query that would answer more than ``max_points`` points (before reading)."""
    if query.step == "raw":
        return
    estimate = estimate_buckets(query.start, query.end, query.step)
    if estimate * max(label_sets, 1) > max_points * 4:
        raise TooManyPoints(max_points, estimate * label_sets, suggest_step(query, label_sets, max_points))
    query.edges = bucket_edges(query.start, query.end, query.step, query.zone)
    count = (len(query.edges) - 1) * max(label_sets, 1)
    if count > max_points:
        raise TooManyPoints(max_points, count, suggest_step(query, label_sets, max_points))


def suggest_step(query: Query, label_sets: int, max_points: int) -> str | None:
    """The finest step whose buckets fit ``max_points`` for ``label_sets`` label sets."""
    current = STEPS.index(query.step)
    for step in STEPS[max(current, 0) + 1 :]:
        if estimate_buckets(query.start, query.end, step) * max(label_sets, 1) <= max_points:
            return step
    return None


class TooManyPoints(ValueError):
    """A read would answer more points than allowed."""

    def __init__(self, limit: int, count: int | None, step: str | None) -> None:
        hint = f"; use a coarser step (e.g. step={step})" if step else "; narrow the time range or the labels"
        found = f" (about {count})" if count is not None else ""
        super().__init__(f"the query would return more than {limit} points{found}{hint}")
        self.limit = limit
        self.count = count
        self.step = step


def buckets_of(
    query: Query, stats: Mapping[tuple[Any, int], Stats], labels_of: Mapping[Any, dict[str, str]]
) -> list[Bucket]:
    """Stats by ((label set, field), bucket) → :class:`Bucket` list, by label set then time."""
    grouped: dict[tuple[Any, int], dict[str, dict[str, float | None]]] = {}
    for ((label_set, name), index), st in stats.items():
        wanted = query.aggs.get(name)
        if not wanted:
            continue
        grouped.setdefault((label_set, index), {})[name] = {a: st.value(a) for a in wanted}
    order = sorted(grouped, key=lambda k: (labels_key(labels_of[k[0]]), k[1]))
    return [Bucket(ts=query.edges[i], labels=dict(labels_of[ls]), values=grouped[(ls, i)]) for ls, i in order]


def matches(labels: Mapping[str, str], filters: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in filters.items())


# --- the interface ------------------------------------------------------------------------------------
class SeriesBase:
    """``ctx.series``: the module's own series. Subclasses implement the ``_`` methods.

    Async methods for ``async def`` handlers, ``*_sync`` twins for sync handlers.
    """

    def __init__(self, *, runner: Runner | None = None, max_points: int = DEFAULT_MAX_POINTS) -> None:
        self._runner = runner
        self.max_points = max_points

    def bind(self, runner: Runner | None) -> Any:
        """Use ``runner`` for the ``*_sync`` twins (the harness binds each run's loop)."""
        self._runner = runner
        return self

    def _sync(self, aw: Awaitable[Any]) -> Any:
        if self._runner is None:
            close = getattr(aw, "close", None)
            if close is not None:
                close()
            raise RuntimeError("the *_sync methods are only available inside a sync handler")
        return self._runner(aw)

    # what implementations provide
    async def _definition(self, series: str) -> SeriesDef:
        raise NotImplementedError

    async def _store(self, defn: SeriesDef, points: list[tuple[datetime, dict[str, str], dict[str, float]]]) -> None:
        raise NotImplementedError

    async def _raw(self, query: Query, limit: int) -> list[Point]:
        raise NotImplementedError

    async def _buckets(self, query: Query) -> list[Bucket]:
        raise NotImplementedError

    async def _latest(self, defn: SeriesDef, labels: dict[str, str], fields: list[str]) -> list[Point]:
        raise NotImplementedError

    def _now(self) -> datetime:
        return datetime.now(UTC)

    max_future: timedelta = DEFAULT_MAX_FUTURE
    max_batch: int = MAX_BATCH

    # the API
    async def write(
        self, series: str, labels: Mapping[str, str] | None, values: Mapping[str, float], *, at: Any = None
    ) -> None:
        """Write one point (``at``: a timezone-aware datetime, ISO string or Unix seconds; now by
        default). Writing the same (labels, timestamp) again replaces the values it names."""
        await self.write_many(
            series, [{"ts": at if at is not None else self._now(), "labels": labels, "values": values}]
        )

    async def write_many(self, series: str, points: Iterable[Any]) -> int:
        """Write a batch (all or nothing: a refused point refuses the batch, naming each failed
        point); each point is a :class:`Point`, ``{"ts", "labels", "values"}`` or a triple.
        Returns how many distinct points were written."""
        defn = await self._definition(series)
        checked = check_batch(defn, points, now=self._now(), max_future=self.max_future, max_batch=self.max_batch)
        if checked:
            await self._store(defn, checked)
        return len(checked)

    async def range(
        self,
        series: str,
        start: Any,
        end: Any,
        *,
        labels: Mapping[str, str] | None = None,
        fields: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Point]:
        """The raw points in ``[start, end)`` by label set, then time (refused past ``limit``)."""
        defn = await self._definition(series)
        query = _checked(lambda: build_query(defn, start=start, end=end, labels=labels, fields=fields))
        cap = min(limit or self.max_points, self.max_points)
        points = await self._raw(query, cap + 1)
        if len(points) > cap:
            raise SeriesError(f"more than {cap} points in the range; narrow it or use rollup()", details={"limit": cap})
        return points

    async def rollup(
        self,
        series: str,
        start: Any,
        end: Any,
        *,
        step: str = "1h",
        agg: Mapping[str, Iterable[str]] | Iterable[str] | None = None,
        labels: Mapping[str, str] | None = None,
        fields: Iterable[str] | None = None,
        tz: str = "UTC",
    ) -> list[Bucket]:
        """Aggregates per bucket (``step``: 1m, 5m, 1h, 1d, 1w, 1mo in ``tz``): ``agg`` names the
        aggregations (avg, min, max, sum, count, first, last, increase), for every field or per
        field (``{"energy_kwh": ["increase"]}``); default avg for gauges, increase for counters.
        Empty buckets are left out."""
        defn = await self._definition(series)
        if step == "raw":
            raise SeriesError("rollup() needs a step other than raw; range() returns the points")
        query = _checked(
            lambda: build_query(defn, start=start, end=end, step=step, tz=tz, labels=labels, fields=fields, agg=agg)
        )
        _checked(lambda: check_size(query, 1, self.max_points))
        return await self._buckets(query)

    async def latest(
        self, series: str, *, labels: Mapping[str, str] | None = None, fields: Iterable[str] | None = None
    ) -> list[Point]:
        """The newest point of each label set (matching ``labels``)."""
        defn = await self._definition(series)
        now = self._now()
        query = _checked(
            lambda: build_query(defn, start=now - timedelta(days=1), end=now, labels=labels, fields=fields)
        )
        return await self._latest(defn, query.labels, query.fields)

    def write_sync(
        self, series: str, labels: Mapping[str, str] | None, values: Mapping[str, float], *, at: Any = None
    ) -> None:
        self._sync(self.write(series, labels, values, at=at))

    def write_many_sync(self, series: str, points: Iterable[Any]) -> int:
        return self._sync(self.write_many(series, points))  # type: ignore[no-any-return]

    def range_sync(self, series: str, start: Any, end: Any, **kwargs: Any) -> list[Point]:
        return self._sync(self.range(series, start, end, **kwargs))  # type: ignore[no-any-return]

    def rollup_sync(self, series: str, start: Any, end: Any, **kwargs: Any) -> list[Bucket]:
        return self._sync(self.rollup(series, start, end, **kwargs))  # type: ignore[no-any-return]

    def latest_sync(self, series: str, **kwargs: Any) -> list[Point]:
        return self._sync(self.latest(series, **kwargs))  # type: ignore[no-any-return]


def _checked(fn: Any) -> Any:
    try:
        return fn()
    except TooManyPoints as exc:
        raise SeriesError(str(exc), details={"limit": exc.limit, "suggested_step": exc.step}) from None
    except ValueError as exc:
        raise SeriesError(str(exc)) from None


def undeclared(series: str, known: Iterable[str]) -> SeriesError:
    names = ", ".join(sorted(known)) or "none"
    return SeriesError(f"series {str(series)[:64]!r} is not declared in the module's manifest (declared: {names})")
