"""Helpers of the event tests: a listening module, jobs straight in the DB, a dispatcher start function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from registry.db import unit_of_work
from registry.models import Event, Execution, Job, Module
from tests.jobs.helpers import put_module, write_module

CODE = """
def refresh(ctx):
    return {"event": ctx.event, "table": ctx.config.get("table")}

def audit(ctx):
    return {"event": ctx.event["name"]}
"""

JOBS = [
    {
        "name": "refresh",
        "description": "refreshes a table",
        "handler": "refresh",
        "config": {"type": "object", "properties": {"table": {"type": "string", "default": "none"}}},
    },
    {"name": "audit", "description": "records events", "handler": "audit"},
]

LISTENERS = {
    "events": {
        "listeners": [
            {"pattern": "data.*", "job": "refresh", "filter": {"kind": "full"}, "mapping": {"table": "data.table"}},
            {"pattern": "job.**", "job": "audit"},
        ]
    }
}


async def listening_module(sessions: Any, state_dir: Path, root: Path, *, status: str = "ENABLED") -> Module:
    folder = write_module(root, name="listen", code=CODE, jobs=JOBS, extra=LISTENERS)
    return await put_module(sessions, state_dir, folder, status=status)


async def add_job(
    sessions: Any, module: Module, job_type: str, *, name: str | None = None, enabled: bool = True, **kw: Any
) -> Job:
    async with unit_of_work(sessions) as session:
        job = Job(
            module_id=module.id,
            module_name=module.name,
            job_type=job_type,
            name=name or f"{job_type}-job",
            enabled=enabled,
            config={},
            event_triggers=kw.pop("event_triggers", []),
            **kw,
        )
        session.add(job)
    return job


async def executions_for(sessions: Any, event_id: str) -> list[Execution]:
    async with sessions() as session:
        return list(await session.scalars(select(Execution).where(Execution.event_id == event_id)))


async def get_event(sessions: Any, event_id: str) -> Event:
    async with sessions() as session:
        event = await session.scalar(select(Event).where(Event.id == event_id))
        assert event is not None
        return event


async def count_events(sessions: Any) -> int:
    async with sessions() as session:
        return await session.scalar(select(func.count()).select_from(Event)) or 0
