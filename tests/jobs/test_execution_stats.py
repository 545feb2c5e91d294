"""Execution stats are aggregated in the database (nearest-rank p95, mean), filters applied."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from registry.db import create_engine, create_session_factory, unit_of_work
from registry.migrate import upgrade
from registry.models import Execution, Job, Module
from registry.services.executions import stats


async def add_runs(sessions: Any, module: str, durations: list[int], status: str = "COMPLETED") -> None:
    async with unit_of_work(sessions) as session:
        for d in durations:
            execution_id = str(uuid.uuid4())
            session.add(
                Execution(
                    id=execution_id,
                    module_name=module,
                    job_type="t",
                    workflow_id=f"exec-{execution_id}",
                    trigger="manual",
                    status=status,
                    duration_ms=d,
                )
            )


async def test_p95_and_mean_over_a_larger_history(sessions):
    durations = [(n * 37) % 101 + 1 for n in range(40)]  # 40 distinct-ish values, unsorted
    await add_runs(sessions, "big", durations)
    await add_runs(sessions, "other", [10_000] * 5, status="FAILED")
    async with sessions() as session:
        big = await stats(session=session, module="big")
        everything = await stats(session=session)
    ordered = sorted(durations)
    assert big["total"] == 40
    assert big["p95_duration_ms"] == ordered[math.ceil(0.95 * 40) - 1]
    assert big["mean_duration_ms"] == sum(durations) / 40
    assert everything["total"] == 45 and everything["p95_duration_ms"] == 10_000
    assert everything["success_rate"] == round(40 / 45, 4)


async def test_empty_history_has_no_durations(sessions):
    async with sessions() as session:
        empty = await stats(session=session, module="nothing")
    assert empty["total"] == 0
    assert empty["mean_duration_ms"] is None and empty["p95_duration_ms"] is None and empty["success_rate"] is None


def expected(rows: list[dict[str, Any]], since: datetime | None, until: datetime | None) -> dict[str, Any]:
    """Stats recomputed from the rows by hand: what the trigger-kept counts must agree with."""
    inside = [r for r in rows if (since is None or r["at"] >= since) and (until is None or r["at"] < until)]
    by_status: dict[str, int] = {}
    for r in inside:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    timed = [r["d"] for r in inside if r["d"] is not None]
    return {"total": len(inside), "by_status": by_status, "mean": sum(timed) / len(timed) if timed else None}


@pytest.fixture(params=["postgresql", "sqlite"])
async def any_sessions(request: pytest.FixtureRequest, sessions: Any, tmp_path: Any) -> AsyncIterator[Any]:
    if request.param == "postgresql":
        yield sessions
        return
    url = f"sqlite+aiosqlite:///{tmp_path / 'stats.db'}"
    await upgrade(url)
    engine = create_engine(url)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


async def test_counts_kept_by_triggers_match_the_rows_for_every_range(any_sessions):
    """Inserts, status and duration changes, deletes and a job's deletion (job_id set to null) all
    reach the hourly counts; ranges with partial hours at either edge, inside one hour, or open
    on either side answer exactly what the rows say."""
    sessions = any_sessions
    module = f"stats-{uuid.uuid4().hex[:8]}"
    base = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    rows: dict[str, dict[str, Any]] = {}
    async with unit_of_work(sessions) as session:
        mod = Module(name=module, version="1.0.0", display_name=module, manifest={}, status="ENABLED")
        session.add(mod)
        await session.flush()
        job = Job(module_id=mod.id, module_name=module, job_type="t", name="j", config={})
        session.add(job)
        await session.flush()
        job_id = job.id
        for n in range(60):
            at = base + timedelta(minutes=7 * n + 3)  # about seven hours, uneven minutes
            status = "RUNNING" if n % 5 == 0 else "COMPLETED"
            d = None if status == "RUNNING" else n * 10
            execution = Execution(
                module_name=module,
                job_type="t",
                job_id=job_id if n % 2 else None,
                workflow_id=f"exec-{module}-{n}",
                trigger="manual",
                status=status,
                duration_ms=d,
                created_at=at,
            )
            session.add(execution)
            await session.flush()
            rows[execution.id] = {"at": at, "status": status, "d": d, "job": execution.job_id}
    # Finish half of the running ones, fail one completed run's duration over, delete three.
    async with unit_of_work(sessions) as session:
        changed = [i for i, r in rows.items() if r["status"] == "RUNNING"][::2]
        for execution_id in changed:
            execution = await session.get(Execution, execution_id)
            execution.status, execution.duration_ms = "FAILED", 999
            rows[execution_id].update(status="FAILED", d=999)
        gone = list(rows)[10:13]
        for execution_id in gone:
            await session.delete(await session.get(Execution, execution_id))
            del rows[execution_id]
        # Logs-only updates (the mirror's log flushes) change nothing counted.
        some = await session.get(Execution, list(rows)[20])
        some.logs = "a line\n"
    async with unit_of_work(sessions) as session:
        await session.delete(await session.get(Job, job_id))
    for r in rows.values():
        r["job"] = None
    ranges = [
        (None, None),
        (base + timedelta(minutes=20), None),
        (None, base + timedelta(hours=4, minutes=41)),
        (base + timedelta(minutes=20), base + timedelta(hours=5, minutes=10)),
        (base + timedelta(hours=2, minutes=5), base + timedelta(hours=2, minutes=50)),  # within one hour
        (base + timedelta(hours=1), base + timedelta(hours=3)),  # whole hours only
        (base + timedelta(hours=3, minutes=30), base + timedelta(hours=4, minutes=30)),  # across one boundary
    ]
    async with sessions() as session:
        for since, until in ranges:
            got = await stats(session=session, module=module, since=since, until=until)
            want = expected(list(rows.values()), since, until)
            assert got["total"] == want["total"], (since, until)
            assert {k: v for k, v in got["by_status"].items() if v} == want["by_status"], (since, until)
            assert got["mean_duration_ms"] == pytest.approx(want["mean"]), (since, until)
        # After the job's deletion every run counts under its module and job type, none under the job.
        whole = await stats(session=session, module=module)
        assert [(e["job_id"], e["total"]) for e in whole["per_job"]] == [(None, len(rows))]
        assert (await stats(session=session, job_id=job_id))["total"] == 0


async def test_counts_stop_at_the_cap_and_estimate_above_it(sessions):
    """A list never counts more than the cap: above it the total is the planner's estimate, flagged."""
    from registry.services.common import EXACT_COUNT_CAP, paginate_large

    module = f"cap-{uuid.uuid4().hex[:8]}"
    await add_runs(sessions, module, [1] * 12)
    stmt = select(Execution).where(Execution.module_name == module).order_by(Execution.created_at)
    async with sessions() as session:
        exact = await paginate_large(session, stmt, page=1, limit=5, cap=20)
        capped = await paginate_large(session, stmt, page=2, limit=5, cap=8)
        last = await paginate_large(session, stmt, page=3, limit=5, cap=8)
    assert (exact.total, exact.total_exact, exact.has_more, len(exact.items)) == (12, True, True, 5)
    assert (capped.total_exact, capped.has_more, len(capped.items)) == (False, True, 5)
    assert capped.total >= 9  # at least what was counted: the estimate never answers fewer
    # The last page knows its total without counting.
    assert (last.total, last.total_exact, last.has_more, len(last.items)) == (12, True, False, 2)
    # The estimate is read for filters with lists too (statuses: IN (...) expanded for EXPLAIN).
    from registry.services.common import _estimated_rows

    listed = select(Execution).where(Execution.status.in_(["COMPLETED", "FAILED"]), Execution.module_name == module)
    async with sessions() as session:
        assert await _estimated_rows(session, listed) is not None
    # Without any filter too (the count's FROM must not depend on a WHERE clause).
    async with sessions() as session:
        unfiltered = await paginate_large(session, select(Execution).order_by(Execution.id), page=1, limit=1)
        everything = await session.scalar(select(func.count()).select_from(Execution))
    assert unfiltered.has_more and unfiltered.total == min(everything, EXACT_COUNT_CAP) or not unfiltered.total_exact


async def test_last_executions_answer_one_row_per_job_even_on_ties(sessions):
    from registry.services.jobs import last_executions

    module = f"last-{uuid.uuid4().hex[:8]}"
    at = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    async with unit_of_work(sessions) as session:
        mod = Module(name=module, version="1.0.0", display_name=module, manifest={}, status="ENABLED")
        session.add(mod)
        await session.flush()
        jobs = [Job(module_id=mod.id, module_name=module, job_type="t", name=f"j{n}", config={}) for n in range(3)]
        session.add_all(jobs)
        await session.flush()
        for n, (job, minutes) in enumerate([(jobs[0], 1), (jobs[0], 5), (jobs[0], 5), (jobs[1], 2)]):
            session.add(
                Execution(
                    module_name=module,
                    job_type="t",
                    job_id=job.id,
                    workflow_id=f"last-{module}-{n}",
                    trigger="manual",
                    status="COMPLETED",
                    created_at=at + timedelta(minutes=minutes),
                )
            )
        ids = [j.id for j in jobs]
    async with sessions() as session:
        latest = await last_executions(session=session, job_ids=ids)
    # Two runs of j0 share its latest time: one of them, once; j2 never ran.
    assert set(latest) == {ids[0], ids[1]}
    assert latest[ids[0]].created_at == at + timedelta(minutes=5)
    assert latest[ids[1]].created_at == at + timedelta(minutes=2)
