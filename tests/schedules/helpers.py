"""Shared by the schedule tests: a module with one quick job type, and job helpers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from registry.models import Execution

CODE = """
def tick(ctx):
    return {"trigger": ctx.trigger}
"""
JOBS = [{"name": "tick", "description": "ticks", "handler": "tick"}]
EVERY_SECOND = "* * * * * *"


async def create_job(client: Any, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
    body = {"module": "slots", "job_type": "tick", "name": "tick", "schedule": EVERY_SECOND, **extra}
    r = await client.post("/api/v1/jobs", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def job_runs(sessions: Any, job_id: str) -> list[Execution]:
    async with sessions() as session:
        return list(await session.scalars(select(Execution).where(Execution.job_id == job_id)))
