"""Module storage and job state: ``ctx.storage`` / ``ctx.state`` and the ``autoplat.storage`` /
``autoplat.state`` activities, on the registry database (registry/services/storage.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.types import StepInput
from autoplat._sync import Runner, loop_runner
from autoplat.context import JobContext
from autoplat.storage import (
    Document,
    JobStateBase,
    StateConflict,
    StateSnapshot,
    StorageBase,
    StorageError,
)
from registry.db import unit_of_work
from registry.services import storage as store

STORAGE = "autoplat.storage"
STATE = "autoplat.state"


class DbStorage(StorageBase):
    """One module's documents in the registry (the module id is resolved once, on first use)."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], module: str, *, runner: Runner | None, max_value_bytes: int
    ) -> None:
        super().__init__(runner=runner, max_value_bytes=max_value_bytes)
        self._sessions = sessions
        self._module = module
        self._module_id: str | None = None

    async def _owner(self, session: AsyncSession) -> str:
        if self._module_id is None:
            owner = await store.storage_owner(session=session, name=self._module)
            if owner is None:
                raise StorageError(f"module {self._module} is not registered")
            if not owner[1]:
                raise StorageError(
                    f"module {self._module} does not declare the storage service in permissions.services"
                )
            self._module_id = owner[0]
        return self._module_id

    async def _upsert(self, pairs: list[tuple[str, Any]], expires_at: datetime | None) -> None:
        async with unit_of_work(self._sessions) as session:
            owner = await self._owner(session)
            await store.put_documents(session=session, module_id=owner, items=pairs, expires_at=expires_at)

    async def _get(self, key: str) -> Document | None:
        async with self._sessions() as session:
            row = await store.get_document(session=session, module_id=await self._owner(session), key=key)
            return None if row is None else _document(row)

    async def _delete(self, key: str) -> bool:
        async with unit_of_work(self._sessions) as session:
            return await store.delete_document(session=session, module_id=await self._owner(session), key=key)

    async def _query(self, prefix: str, where: dict[str, Any], limit: int) -> list[Document]:
        async with self._sessions() as session:
            rows = await store.query_documents(
                session=session, module_id=await self._owner(session), prefix=prefix, where=where, limit=limit
            )
            return [_document(r) for r in rows]


class DbState(JobStateBase):
    """One job's state row."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        job_id: str,
        *,
        runner: Runner | None,
        max_value_bytes: int,
        execution_id: str | None = None,
    ) -> None:
        super().__init__(runner=runner, max_value_bytes=max_value_bytes)
        self._sessions = sessions
        self._job_id = job_id
        self._execution_id = execution_id

    async def _read(self) -> StateSnapshot:
        async with self._sessions() as session:
            value, version = await store.get_state(session=session, job_id=self._job_id)
        return StateSnapshot(value=value, version=version)

    async def _write(self, value: dict[str, Any], expected_version: int | None) -> int:
        try:
            async with unit_of_work(self._sessions) as session:
                return await store.set_state(
                    session=session,
                    job_id=self._job_id,
                    value=value,
                    expected_version=expected_version,
                    updated_by=self._execution_id,
                )
        except store.StateVersionConflict as exc:
            raise StateConflict(exc.message, current_version=exc.current) from None


class NoJobState(JobStateBase):
    """``ctx.state`` of a run without a job (a module route invoking a job type directly)."""

    async def _read(self) -> StateSnapshot:
        raise StorageError("ctx.state needs a job: this run was invoked without one (module route)")

    async def _write(self, value: dict[str, Any], expected_version: int | None) -> int:
        return (await self._read()).version


def _document(row: Any) -> Document:
    return Document(key=row.key, value=row.value, expires_at=row.expires_at, updated_at=row.updated_at)


@dataclass
class StorageCall:
    """Input of the ``autoplat.storage`` activity (one module's documents)."""

    module: str
    op: Literal["get", "put", "put_many", "delete", "query"]
    key: str | None = None
    value: Any = None
    items: dict[str, Any] | None = None
    ttl_seconds: float | None = None
    prefix: str = ""
    where: dict[str, Any] | None = None
    limit: int = 100


@dataclass
class StateCall:
    """Input of the ``autoplat.state`` activity (one job's state)."""

    job_id: str
    op: Literal["get", "set"]
    value: dict[str, Any] = field(default_factory=dict)
    expected_version: int | None = None


class StorageService:
    def __init__(self, deps: Any) -> None:
        self.deps = deps

    def activities(self) -> list[Callable[..., Any]]:
        return [self.storage, self.state]

    def module_storage(self, module: str, runner: Runner | None = None) -> DbStorage:
        return DbStorage(
            self.deps.sessions, module, runner=runner, max_value_bytes=self.deps.settings.storage_max_value_bytes
        )

    def job_state(self, job_id: str, runner: Runner | None = None, execution_id: str | None = None) -> DbState:
        return DbState(
            self.deps.sessions,
            job_id,
            runner=runner,
            max_value_bytes=self.deps.settings.storage_max_value_bytes,
            execution_id=execution_id,
        )

    async def contribute(self, inp: StepInput, ctx: JobContext) -> dict[str, Any]:
        runner = loop_runner(asyncio.get_running_loop())
        state: JobStateBase = (
            self.job_state(inp.job_id, runner, inp.execution_id) if inp.job_id else NoJobState(runner=runner)
        )
        return {"storage": self.module_storage(inp.module, runner), "state": state}

    @activity.defn(name=STORAGE)
    async def storage(self, call: StorageCall) -> Any:
        """A module storage operation for the platform's workflows (documents as dicts)."""
        target = self.module_storage(call.module)
        try:
            if call.op == "get":
                return await target.get(call.key or "")
            if call.op == "put":
                await target.put(call.key or "", call.value, ttl=call.ttl_seconds)
                return None
            if call.op == "put_many":
                return await target.put_many(call.items or {}, ttl=call.ttl_seconds)
            if call.op == "delete":
                return await target.delete(call.key or "")
            if call.op == "query":
                found = await target.query(call.prefix, where=call.where, limit=call.limit)
                return [{"key": d.key, "value": d.value, "expires_at": d.expires_at} for d in found]
        except StorageError as exc:
            raise ApplicationError(exc.message, exc.details, type="StorageError", non_retryable=True) from None
        raise ApplicationError(f"unknown storage operation {call.op!r}", type="StorageError", non_retryable=True)

    @activity.defn(name=STATE)
    async def state(self, call: StateCall) -> dict[str, Any]:
        """Read (``get``) or write (``set``, with an optional version check) a job's state."""
        target = self.job_state(call.job_id)
        try:
            if call.op == "set":
                version = await target.set(call.value, expected_version=call.expected_version)
                return {"value": call.value, "version": version}
            snapshot = await target.get()
            return {"value": snapshot.value, "version": snapshot.version}
        except StorageError as exc:
            raise ApplicationError(exc.message, exc.details, type="StorageError", non_retryable=True) from None
        except StateConflict as exc:
            raise ApplicationError(str(exc), {"current_version": exc.current_version}, type="StateConflict") from None


def provider(deps: Any) -> StorageService:
    return StorageService(deps)
