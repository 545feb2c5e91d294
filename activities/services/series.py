"""Time series: ``ctx.series`` on the registry database, and the ``autoplat.series_maintenance``
activity (rollups, partitions ahead, retention) that the maintenance schedules run.

A step's ``ctx.series`` belongs to the step's module, which the worker knows (never the handler):
the module's current manifest says which series exist and what they hold, and whether the module
requested the ``series`` service.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.types import StepInput
from autoplat._sync import Runner, loop_runner
from autoplat.context import JobContext
from autoplat.series import Bucket, Point, Query, SeriesBase, SeriesDef, SeriesError, undeclared
from registry.db import unit_of_work
from registry.models import Series
from registry.services import series as store

log = logging.getLogger(__name__)

#: The activity the maintenance workflow runs for series (``task``: ``rollup`` or ``retention``).
SERIES_MAINTENANCE = "autoplat.series_maintenance"


class DbSeries(SeriesBase):
    """One module's series in the registry (module and manifest resolved once, on first use)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        module: str,
        *,
        runner: Runner | None,
        max_points: int,
        max_future: timedelta,
    ) -> None:
        super().__init__(runner=runner, max_points=max_points)
        self.max_future = max_future
        self._sessions = sessions
        self._module = module
        self._owner: tuple[str, dict[str, SeriesDef]] | None = None
        #: Kept for the step's later batches: series rows, label set ids, partitions made.
        self._rows: dict[str, Series] = {}
        self._label_sets: dict[str, dict[str, int]] = {}
        self._partitions: set[tuple[str, str]] = set()

    async def _resolve(self) -> tuple[str, dict[str, SeriesDef]]:
        if self._owner is None:
            async with self._sessions() as session:
                found = await store.module_manifest(session=session, name=self._module)
            if found is None:
                raise SeriesError(f"module {self._module} is not registered")
            module_id, manifest = found
            services = (manifest.get("permissions") or {}).get("services") or []
            if "series" not in services:
                raise SeriesError(f"module {self._module} does not declare the series service in permissions.services")
            self._owner = (module_id, store.declared(manifest))
        return self._owner

    async def _definition(self, series: str) -> SeriesDef:
        _, declared = await self._resolve()
        if not isinstance(series, str) or series not in declared:
            raise undeclared(str(series), declared)
        return declared[series]

    async def _row(self, session: AsyncSession, defn: SeriesDef, *, create: bool) -> Series | None:
        module_id, _ = await self._resolve()
        if create:
            return await store.ensure_series(session=session, module_id=module_id, defn=defn)
        return await store.get_series(session=session, module_id=module_id, name=defn.name)

    async def _store(self, defn: SeriesDef, points: list[tuple[datetime, dict[str, str], dict[str, float]]]) -> None:
        times = {p[0] for p in points}
        needed = {(t, store.partition_bounds(t, ts)[0]) for t in (store.POINTS, store.ROLLUPS) for ts in times}
        for attempt in (1, 2):
            if not needed <= self._partitions:
                async with unit_of_work(self._sessions) as session:
                    # Partitions first, in their own short transaction (DDL locks the parent table).
                    await store.ensure_partitions(session=session, table=store.POINTS, times=times)
                    await store.ensure_partitions(session=session, table=store.ROLLUPS, times=times)
                self._partitions |= needed
            try:
                async with unit_of_work(self._sessions) as session:
                    row = self._rows.get(defn.name) or await self._row(session, defn, create=True)
                    assert row is not None
                    # A copy: ids made in a transaction that rolls back must not be kept.
                    known = dict(self._label_sets.get(defn.name, {}))
                    await store.write_points(session=session, series=row, points=points, known_label_sets=known)
                self._rows[defn.name] = row
                self._label_sets[defn.name] = known
                return
            except DBAPIError as exc:
                # A partition dropped under this worker's cache (retention elsewhere): make it again.
                if attempt == 2 or "no partition" not in str(exc.orig):
                    raise
                store.forget_partitions()
                self._partitions.clear()

    async def _label_ids(self, session: AsyncSession, row: Series, labels: dict[str, str]) -> dict[int, dict[str, str]]:
        return await store.label_sets(session=session, series_id=row.id, filters=labels)

    async def _raw(self, query: Query, limit: int) -> list[Point]:
        async with self._sessions() as session:
            row = await self._row(session, query.defn, create=False)
            if row is None:
                return []
            ids = await self._label_ids(session, row, query.labels)
            return await store.raw_points(
                session=session, series=row, query=query, label_ids=ids, limit=limit, now=self._now()
            )

    async def _buckets(self, query: Query) -> list[Bucket]:
        async with self._sessions() as session:
            row = await self._row(session, query.defn, create=False)
            if row is None:
                return []
            ids = await self._label_ids(session, row, query.labels)
            return await store.bucket_points(session=session, series=row, query=query, label_ids=ids, now=self._now())

    async def _latest(self, defn: SeriesDef, labels: dict[str, str], fields: list[str]) -> list[Point]:
        async with self._sessions() as session:
            row = await self._row(session, defn, create=False)
            if row is None:
                return []
            ids = await self._label_ids(session, row, labels)
            return await store.latest_points(session=session, series=row, label_ids=ids, fields=fields, now=self._now())


class SeriesService:
    def __init__(self, deps: Any) -> None:
        self.deps = deps

    def activities(self) -> list[Callable[..., Any]]:
        return [self.series_maintenance]

    def module_series(self, module: str, runner: Runner | None = None) -> DbSeries:
        settings = self.deps.settings
        return DbSeries(
            self.deps.sessions,
            module,
            runner=runner,
            max_points=settings.series_max_points,
            max_future=timedelta(seconds=settings.series_max_future_seconds),
        )

    async def contribute(self, inp: StepInput, ctx: JobContext) -> dict[str, Any]:
        return {"series": self.module_series(inp.module, loop_runner(asyncio.get_running_loop()))}

    @activity.defn(name=SERIES_MAINTENANCE)
    async def series_maintenance(self, task: str) -> dict[str, Any]:
        """``rollup``: roll up the hours written since the last run. ``retention``: make the coming
        months' partitions, roll up, then drop what is past retention. Idempotent: a second run
        finds nothing to do."""
        sessions = self.deps.sessions
        result: dict[str, Any] = {"task": task}
        if task == "retention":
            async with unit_of_work(sessions) as session:
                result["partitions_created"] = await store.prepare_ahead(session=session)
        result["hours_rolled_up"] = await self.roll_up_all()
        if task == "retention":
            async with unit_of_work(sessions) as session:
                dropped = await store.drop_expired(session=session, now=datetime.now(UTC))
            result["dropped"] = dropped
            for table, names in dropped.items():
                if names:
                    log.info("series retention: dropped from %s: %s", table, ", ".join(names))
            if result["partitions_created"]:
                log.info("series partitions created ahead: %s", ", ".join(result["partitions_created"]))
        log.info("series %s: %d hour(s) rolled up", task, result["hours_rolled_up"], extra={"series": result})
        return result

    async def roll_up_all(self, *, budget_seconds: float = 240.0, batch: int = 5000) -> int:
        """Roll up marked hours in batches (one transaction each) until none is left or the budget
        is spent (the next run goes on)."""
        total = 0
        deadline = time.monotonic() + budget_seconds
        while time.monotonic() < deadline:
            async with unit_of_work(self.deps.sessions) as session:
                done = await store.roll_up(session=session, limit=batch)
            total += done
            if done < batch:
                break
            if activity.in_activity():
                activity.heartbeat(total)
        return total


def provider(deps: Any) -> SeriesService:
    return SeriesService(deps)
