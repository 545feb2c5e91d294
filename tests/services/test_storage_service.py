"""Module storage and job state: one contract for the in-memory harness store, PostgreSQL and
SQLite; isolation between modules; TTL purge; optimistic state updates; the activities."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.services.storage import StateCall, StorageCall, StorageService
from autoplat.storage import MemoryState, MemoryStorage, StateConflict, StorageError
from registry.db import create_engine, create_session_factory, unit_of_work
from registry.models import Job, Module, ModuleDocument
from registry.services.storage import purge_expired
from tests.conftest import eventually


async def _module_and_job(sessions: Any, name: str, services: tuple[str, ...] = ("storage",)) -> str:
    manifest = {"name": name, "permissions": {"services": list(services)}}
    async with unit_of_work(sessions) as session:
        module = Module(name=name, display_name=name, version="1.0.0", manifest=manifest, status="ENABLED")
        session.add(module)
        await session.flush()
        job = Job(module_id=module.id, module_name=name, job_type="sync", name=f"{name}-job", schedule=None)
        session.add(job)
        await session.flush()
        return job.id


@dataclass
class Backend:
    name: str
    service: StorageService | None = None
    jobs: dict[str, str] | None = None
    memory: dict[str, Any] | None = None

    def storage(self, module: str = "mod-a") -> Any:
        if self.service is None:
            assert self.memory is not None
            return self.memory.setdefault(module, MemoryStorage(max_value_bytes=2048))
        return self.service.module_storage(module)

    def state(self, module: str = "mod-a") -> Any:
        if self.service is None:
            assert self.memory is not None
            return self.memory.setdefault(f"state:{module}", MemoryState(max_value_bytes=2048))
        assert self.jobs is not None
        return self.service.job_state(self.jobs[module])


@asynccontextmanager
async def _backend(kind: str, settings: Any, pg_sessions: Any, tmp_path: Any) -> AsyncIterator[Backend]:
    if kind == "memory":
        yield Backend("memory", memory={})
        return
    settings.storage_max_value_bytes = 2048
    engine = None
    sessions = pg_sessions
    if kind == "sqlite":
        from registry.migrate import upgrade

        url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
        await upgrade(url)
        engine = create_engine(url)
        sessions = create_session_factory(engine)
    try:
        jobs = {name: await _module_and_job(sessions, name) for name in ("mod-a", "mod-b")}
        yield Backend(kind, StorageService(SimpleNamespace(settings=settings, sessions=sessions)), jobs)
    finally:
        if engine is not None:
            await engine.dispose()


@pytest.fixture(params=["memory", "postgresql", "sqlite"])
async def backend(
    request: pytest.FixtureRequest, settings: Any, sessions: Any, tmp_path: Any
) -> AsyncIterator[Backend]:
    """Every implementation of the contract (the harness's in-memory one included)."""
    async with _backend(request.param, settings, sessions, tmp_path) as made:
        yield made


@pytest.fixture(params=["postgresql", "sqlite"])
async def db_backend(
    request: pytest.FixtureRequest, settings: Any, sessions: Any, tmp_path: Any
) -> AsyncIterator[Backend]:
    """The database implementations, where modules are namespaces."""
    async with _backend(request.param, settings, sessions, tmp_path) as made:
        yield made


async def test_put_get_delete(backend):
    store = backend.storage()
    assert await store.get("k") is None and await store.get("k", 7) == 7
    await store.put("k", {"n": 1, "tags": ("a", "b")})
    assert await store.get("k") == {"n": 1, "tags": ["a", "b"]}  # stored as JSON
    await store.put("k", [1, 2])
    assert await store.get("k") == [1, 2]
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    assert await store.get("k") is None


async def test_put_many_and_query(backend):
    store = backend.storage()
    written = await store.put_many(
        {
            "rec:1": {"status": "new", "n": 1, "ok": True},
            "rec:2": {"status": "done", "n": 2, "ok": False},
            "rec:3": {"status": "new", "n": 1.0, "ok": 1},
            "rec%x": {"status": "new"},
            "other:1": {"status": "new"},
        }
    )
    assert written == 5
    assert [d.key for d in await store.query("rec:")] == ["rec:1", "rec:2", "rec:3"]
    assert [d.key for d in await store.query("rec%")] == ["rec%x"]  # LIKE characters are literal
    assert [d.key for d in await store.query("rec:", where={"status": "new"})] == ["rec:1", "rec:3"]
    assert [d.key for d in await store.query(where={"status": "new"}, limit=2)] == ["other:1", "rec%x"]
    # JSON equality: true is not 1, "1" is not 1; 1 and 1.0 are the same number.
    assert [d.key for d in await store.query("rec:", where={"ok": True})] == ["rec:1"]
    assert [d.key for d in await store.query("rec:", where={"n": 1})] == ["rec:1", "rec:3"]
    assert await store.query("rec:", where={"n": "1"}) == []
    assert [d.key for d in await store.query("rec:", where={"status": "new", "n": 1, "ok": 1})] == ["rec:3"]
    found = await store.query("rec:2")
    assert found[0].value == {"status": "done", "n": 2, "ok": False} and found[0].updated_at is not None
    # Upsert replaces.
    await store.put_many([("rec:2", {"status": "new"})])
    assert [d.key for d in await store.query("rec:", where={"status": "new"})] == ["rec:1", "rec:2", "rec:3"]


async def test_ttl(backend):
    store = backend.storage()
    await store.put("short", 1, ttl=0.3)
    await store.put("long", 2, ttl=timedelta(hours=1))
    await store.put("forever", 3)
    document = await store.get_document("long")
    assert document is not None and document.expires_at is not None
    assert document.expires_at > datetime.now(UTC) + timedelta(minutes=59)

    async def expired() -> bool:
        return await store.get("short") is None

    await eventually(expired, timeout=5, what="document expired")
    assert [d.key for d in await store.query()] == ["forever", "long"]
    await store.put("short", 4)  # an expired key can be written again, without TTL
    assert await store.get("short") == 4


async def test_limits(backend):
    store = backend.storage()
    with pytest.raises(StorageError, match="longer than 512"):
        await store.put("k" * 513, 1)
    with pytest.raises(StorageError, match="non-empty"):
        await store.put("", 1)
    with pytest.raises(StorageError, match="larger than 2048 bytes"):
        await store.put("big", "x" * 3000)
    with pytest.raises(StorageError, match="not JSON"):
        await store.put("bad", {"when": datetime.now()})
    with pytest.raises(StorageError, match="ttl must be positive"):
        await store.put("t", 1, ttl=0)
    with pytest.raises(StorageError, match="top-level field"):
        await store.query(where={"a.b": 1})
    with pytest.raises(StorageError, match="only str, int"):
        await store.query(where={"a": [1]})
    with pytest.raises(StorageError, match="limit"):
        await store.query(limit=0)
    with pytest.raises(StorageError, match="larger than"):
        await store.put_many({"ok": 1, "big": "x" * 3000})
    assert await store.get("ok") is None  # nothing half-written
    with pytest.raises(StorageError, match="NUL"):
        await store.put("nul", {"s": "a\u0000b"})
    with pytest.raises(StorageError, match="control characters"):
        await store.query("a\x00")


async def test_a_batch_with_a_repeated_key_keeps_the_last_value(backend):
    store = backend.storage()
    await store.put_many([("k", 1), ("j", 0), ("k", 2)])
    assert await store.get("k") == 2 and await store.get("j") == 0


async def test_modules_cannot_reach_each_others_documents(db_backend):
    backend = db_backend
    a, b = backend.storage("mod-a"), backend.storage("mod-b")
    await a.put("secret", {"owner": "a"})
    await a.put_many({"rec:1": {"owner": "a"}, "rec:2": {"owner": "a"}})
    assert await b.get("secret") is None
    assert await b.query() == [] and await b.query("rec:", where={"owner": "a"}) == []
    assert await b.delete("secret") is False
    await b.put("secret", {"owner": "b"})  # the same key, another namespace
    assert await a.get("secret") == {"owner": "a"} and await b.get("secret") == {"owner": "b"}
    assert [d.key for d in await a.query()] == ["rec:1", "rec:2", "secret"]


async def test_unregistered_or_undeclared_module_is_refused(db_backend):
    with pytest.raises(StorageError, match="not registered"):
        await db_backend.storage("nope").put("k", 1)
    assert db_backend.service is not None
    await _module_and_job(db_backend.service.deps.sessions, "no-storage", services=("http",))
    with pytest.raises(StorageError, match="does not declare the storage service"):
        await db_backend.storage("no-storage").get("k")


async def test_job_state_versions(backend):
    state = backend.state()
    snapshot = await state.get()
    assert snapshot.value == {} and snapshot.version == 0
    assert await state.set({"cursor": 10}) == 1
    assert await state.set({"cursor": 20}, expected_version=1) == 2
    with pytest.raises(StateConflict) as info:
        await state.set({"cursor": 99}, expected_version=1)
    assert info.value.current_version == 2
    assert (await state.get()).value == {"cursor": 20}
    with pytest.raises(StorageError, match="a dict"):
        await state.set([1, 2])  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="larger than"):
        await state.set({"blob": "x" * 3000})


async def test_state_update_retries_on_a_concurrent_change(backend):
    state = backend.state()
    other = backend.state()  # another run of the same job
    await state.set({"cursor": 1, "seen": []})
    calls = 0

    async def interfere() -> None:
        await other.set({"cursor": 5, "seen": ["other"]})

    def bump(value: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        value["cursor"] += 1
        value["seen"].append("mine")

    # First read, then another run writes, then our write conflicts and is re-applied on top.
    original = state._read

    async def read_then_interfere() -> Any:
        snapshot = await original()
        if calls == 0:
            await interfere()
        return snapshot

    state._read = read_then_interfere
    new = await state.update(bump)
    assert calls == 2
    assert new == {"cursor": 6, "seen": ["other", "mine"]}
    assert (await other.get()).value == new


async def test_concurrent_updates_all_land_on_postgres(sessions, settings):
    job_id = await _module_and_job(sessions, "mod-c")
    service = StorageService(SimpleNamespace(settings=settings, sessions=sessions))

    runs = [service.job_state(job_id) for _ in range(8)]
    for run in runs:
        run.UPDATE_ATTEMPTS = 50  # eight writers racing on one row: give each room to retry
    await asyncio.gather(*(run.update(lambda v: {"n": v.get("n", 0) + 1}) for run in runs))
    snapshot = await service.job_state(job_id).get()
    assert snapshot.value == {"n": 8} and snapshot.version == 8


async def test_purge_expired_removes_only_expired(sessions, settings):
    await _module_and_job(sessions, "mod-d")
    service = StorageService(SimpleNamespace(settings=settings, sessions=sessions))
    store = service.module_storage("mod-d")
    await store.put_many({"old:1": 1, "old:2": 2}, ttl=3600)
    await store.put("keep", 3, ttl=7200)
    await store.put("forever", 4)
    async with unit_of_work(sessions) as session:
        assert await purge_expired(session=session, now=datetime.now(UTC) + timedelta(hours=1, minutes=1)) == 2
    async with sessions() as session:
        from sqlalchemy import select

        keys = sorted(await session.scalars(select(ModuleDocument.key)))
    assert keys == ["forever", "keep"]


async def test_storage_and_state_activities(sessions, settings):
    job_id = await _module_and_job(sessions, "mod-e")
    service = StorageService(SimpleNamespace(settings=settings, sessions=sessions))
    env = ActivityEnvironment()
    await env.run(service.storage, StorageCall(module="mod-e", op="put", key="a", value={"x": 1}))
    assert await env.run(service.storage, StorageCall(module="mod-e", op="put_many", items={"b": 2, "c": 3})) == 2
    assert await env.run(service.storage, StorageCall(module="mod-e", op="get", key="a")) == {"x": 1}
    found = await env.run(service.storage, StorageCall(module="mod-e", op="query", where={"x": 1}))
    assert [d["key"] for d in found] == ["a"]
    assert await env.run(service.storage, StorageCall(module="mod-e", op="delete", key="a")) is True
    with pytest.raises(ApplicationError) as info:
        await env.run(service.storage, StorageCall(module="mod-e", op="put", key="", value=1))
    assert info.value.type == "StorageError" and info.value.non_retryable

    assert await env.run(service.state, StateCall(job_id=job_id, op="get")) == {"value": {}, "version": 0}
    written = await env.run(service.state, StateCall(job_id=job_id, op="set", value={"c": 1}, expected_version=0))
    assert written["version"] == 1
    with pytest.raises(ApplicationError) as info:
        await env.run(service.state, StateCall(job_id=job_id, op="set", value={"c": 2}, expected_version=0))
    assert info.value.type == "StateConflict" and not info.value.non_retryable
