"""``ctx.series`` in memory, for :mod:`autoplat.testing`: records writes and answers reads with the
platform's rules and bucket arithmetic (:mod:`autoplat.series`), so handler unit tests need no server."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from autoplat._sync import Runner
from autoplat.series import (
    DEFAULT_MAX_POINTS,
    Bucket,
    Point,
    Query,
    SeriesBase,
    SeriesDef,
    aggregate,
    buckets_of,
    definitions,
    labels_key,
    matches,
    undeclared,
)

__all__ = ["MemorySeries"]


class MemorySeries(SeriesBase):
    """The module's series in dicts. Build it from the manifest (``MemorySeries.from_manifest(m)``)
    or from :class:`SeriesDef` s; pass one to several runs to keep the points.

    Attributes:
        points: ``{series: {(labels key, ts): Point}}``, as written.
    """

    def __init__(
        self,
        declared: Mapping[str, SeriesDef] | None = None,
        *,
        runner: Runner | None = None,
        max_points: int = DEFAULT_MAX_POINTS,
        now: datetime | None = None,
    ) -> None:
        super().__init__(runner=runner, max_points=max_points)
        self.declared: dict[str, SeriesDef] = dict(declared or {})
        self.points: dict[str, dict[tuple[str, datetime], Point]] = {}
        self._fixed_now = now

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any] | Any, **kwargs: Any) -> MemorySeries:
        """From a manifest dict (or :class:`autoplat.Manifest`)."""
        data = manifest.to_json_dict() if hasattr(manifest, "to_json_dict") else manifest
        return cls(definitions(data), **kwargs)

    def declare_from(self, manifest: Mapping[str, Any]) -> MemorySeries:
        """Add the series ``manifest`` declares (those already known stay as they are)."""
        for name, defn in definitions(manifest).items():
            self.declared.setdefault(name, defn)
        return self

    def _now(self) -> datetime:
        return self._fixed_now or super()._now()

    def written(self, series: str) -> list[Point]:
        """Every point of ``series``, by label set then time."""
        stored = self.points.get(series, {})
        return [stored[k] for k in sorted(stored, key=lambda k: (k[0], k[1]))]

    async def _definition(self, series: str) -> SeriesDef:
        if series not in self.declared:
            raise undeclared(series, self.declared)
        return self.declared[series]

    async def _store(self, defn: SeriesDef, points: list[tuple[datetime, dict[str, str], dict[str, float]]]) -> None:
        stored = self.points.setdefault(defn.name, {})
        for ts, labels, values in points:
            key = (labels_key(labels), ts)
            old = stored.get(key)
            merged = {**old.values, **values} if old is not None else dict(values)
            stored[key] = Point(ts=ts, labels=dict(labels), values=merged)

    def _selected(self, query: Query) -> list[Point]:
        oldest = self._now().timestamp() - query.defn.raw_retention_days * 86400
        return [
            p for p in self.written(query.defn.name) if matches(p.labels, query.labels) and p.ts.timestamp() >= oldest
        ]

    async def _raw(self, query: Query, limit: int) -> list[Point]:
        found = []
        for p in self._selected(query):
            if query.start <= p.ts < query.end:
                values = {f: v for f, v in p.values.items() if f in query.fields}
                if values:
                    found.append(Point(ts=p.ts, labels=dict(p.labels), values=values))
                    if len(found) >= limit:
                        break
        return found

    async def _buckets(self, query: Query) -> list[Bucket]:
        readings: dict[tuple[str, str], list[tuple[datetime, float]]] = {}
        previous: dict[tuple[str, str], float] = {}
        labels_of: dict[str, dict[str, str]] = {}
        start, end = query.edges[0], query.edges[-1]
        for p in self._selected(query):
            key = labels_key(p.labels)
            labels_of[key] = p.labels
            for name, value in p.values.items():
                if name not in query.fields:
                    continue
                if p.ts < start:
                    previous[(key, name)] = value
                elif p.ts < end:
                    readings.setdefault((key, name), []).append((p.ts, value))
        return buckets_of(query, aggregate(readings, previous, query.edges), labels_of)

    async def _latest(self, defn: SeriesDef, labels: dict[str, str], fields: list[str]) -> list[Point]:
        newest: dict[str, Point] = {}
        for p in self.written(defn.name):
            if matches(p.labels, labels) and any(f in p.values for f in fields):
                newest[labels_key(p.labels)] = p
        return [
            Point(ts=p.ts, labels=dict(p.labels), values={f: v for f, v in p.values.items() if f in fields})
            for _, p in sorted(newest.items())
        ]
