"""The registry on the embedded SQLite database (what ``autoplat dev`` runs): the example module
bootstrapped idempotently, and lifecycle transitions serialized without row locks."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select

from registry.db import create_engine, create_session_factory, unit_of_work
from registry.errors import InvalidTransition
from registry.migrate import upgrade
from registry.models import AuditLog, Job, Module
from registry.services import modules
from registry.services.common import Actor
from registry.services.lifecycle import NoHooks
from registry.settings import Settings


async def test_example_module_and_concurrent_transitions_on_sqlite(tmp_path: Path, example_dir: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'autoplat.db'}"
    await upgrade(url)
    engine = create_engine(url)
    try:
        settings = Settings(database_url=url, state_dir=tmp_path / "state", jwt_secret=secrets.token_urlsafe(48))
        state = SimpleNamespace(settings=settings, sessions=create_session_factory(engine), hooks=NoHooks())
        assert await modules.ensure_module_from_path(state=state, path=example_dir) == "data-sync 1.2.0: ENABLED"
        assert await modules.ensure_module_from_path(state=state, path=example_dir) == "data-sync 1.2.0: ENABLED"

        actor = Actor.system("test")

        async def act(action: str) -> bool:
            fn = modules.enable_module if action == "enable" else modules.disable_module
            try:
                async with unit_of_work(state.sessions) as session:
                    await fn(session=session, actor=actor, hooks=state.hooks, name="data-sync")
            except InvalidTransition:
                return False
            return True

        actions = ["disable", "enable"] * 4
        results = await asyncio.gather(*(act(a) for a in actions))
        async with state.sessions() as session:
            module: Any = await session.scalar(select(Module))
            trail = list(
                await session.scalars(
                    select(AuditLog.action)
                    .where(AuditLog.action.in_(["module.enable", "module.disable"]))
                    .order_by(AuditLog.id)
                )
            )
        assert trail[0] == "module.enable"  # by the bootstrap
        assert len(trail) == 1 + sum(results)
        assert all(t == ("module.enable" if i % 2 == 0 else "module.disable") for i, t in enumerate(trail))
        assert module.status == ("ENABLED" if trail[-1] == "module.enable" else "DISABLED")
        # The manifest's jobs were made once, whatever the enables since (createJob is idempotent).
        async with state.sessions() as session:
            made = list(await session.scalars(select(Job.job_type).where(Job.origin == "manifest")))
        assert sorted(made) == ["daily-report", "health-check", "hourly-sync", "notify", "sync-failed"]
    finally:
        await engine.dispose()
