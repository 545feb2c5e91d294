"""Execution stats are aggregated in the database (nearest-rank p95, mean), filters applied."""

from __future__ import annotations

import math
import uuid
from typing import Any

from registry.db import unit_of_work
from registry.models import Execution
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
