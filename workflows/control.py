"""Starting, awaiting and cancelling runs: the Temporal side of the jobs and executions API.

A run's mirror row is committed before its workflow starts (the worker adopts it by workflow id),
so a run is never started without a row, nor recorded twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.types import JobInput, RunPlan
from registry.db import unit_of_work
from registry.errors import Conflict, NotFound, ServiceUnavailable
from registry.models import Execution, ExecutionStatus, Job, Module, ModuleStatus
from registry.services import audit, runs
from registry.services.common import Actor
from registry.settings import Settings
from workflows.schedules import search_attributes, workflow_timeout

log = logging.getLogger(__name__)

_JOBS, _MODULES = cast(Table, Job.__table__), cast(Table, Module.__table__)
#: A manual run's start reads its job and its module's revision (the manifest is cached per revision).
_START_READ = (
    select(*runs.JobRow.columns(), *(c.label(f"modrow_{c.key}") for c in runs.MODULE_KEY_COLUMNS))
    .select_from(_JOBS)
    .outerjoin(_MODULES, _MODULES.c.name == _JOBS.c.module_name)
    .where(_JOBS.c.id == bindparam("_job_id"))
)
_INSERT_EXECUTION = runs.EXECUTIONS.insert()


@dataclass
class Runner:
    """Everything needed to start runs: settings, sessions and a Temporal client."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    #: Connects lazily, so requests that fail validation never wait on Temporal.
    client_factory: Callable[[], Awaitable[Client]]

    async def start_job(
        self,
        *,
        job_id: str,
        actor: Actor,
        trigger: str = "manual",
        config_override: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Execution, bool]:
        """Start a manual run of a job. Returns (execution, created).

        One read (the job's columns and its module's revision, joined; the manifest comes from
        :func:`runs.module_state`, read once per revision) and two INSERTs (the PENDING row with its
        plan, the audit row), without the ORM's unit of work."""
        async with unit_of_work(self.sessions) as session:
            found = (await session.execute(_START_READ, {"_job_id": job_id})).first()
            job = runs.JobRow.of(found) if found is not None else None
            if found is None or job is None:
                raise NotFound(f"job {job_id} not found")
            if idempotency_key:
                existing = await session.scalar(
                    select(Execution).where(Execution.job_id == job_id, Execution.idempotency_key == idempotency_key)
                )
                if existing is not None:
                    return existing, False
            if not job.enabled:
                raise Conflict(
                    f"job {job.name} is disabled; enable it to run it", details={"current_state": "disabled"}
                )
            state = await runs.module_state(
                session, job.module_name, tuple(found._mapping[f"modrow_{c.key}"] for c in runs.MODULE_KEY_COLUMNS)
            )
            module = state.module if state is not None else None
            if state is None or module is None or module.status != ModuleStatus.ENABLED.value:
                status = module.status if module else "missing"
                raise Conflict(
                    f"module {job.module_name} is {status}; enable it to run its jobs",
                    details={"current_state": status, "allowed_actions": ["enable"]},
                )
            execution_id = str(uuid.uuid4())
            plan = await self._plan(session, execution_id, job, state)
            values: dict[str, Any] = {
                "id": execution_id,
                "job_id": job.id,
                "module_name": job.module_name,
                "module_version": plan.module_version if plan is not None else None,
                "job_type": job.job_type,
                "workflow_id": f"exec-{execution_id}",
                "trigger": trigger,
                "idempotency_key": idempotency_key,
                "status": ExecutionStatus.PENDING.value,
                "attempt": 0,
                "steps": runs.pending_steps(plan) if plan is not None else [],
                "input": self._override_input(job, state, config_override),
                "logs": "",
                "created_at": datetime.now(UTC),
            }
            if not idempotency_key:
                await session.execute(_INSERT_EXECUTION, values)
            else:
                try:
                    # A savepoint: two concurrent requests with one Idempotency-Key race on the unique
                    # (job, key) constraint; the loser answers the winner's execution.
                    async with session.begin_nested():
                        await session.execute(_INSERT_EXECUTION, values)
                except IntegrityError:
                    existing = await session.scalar(
                        select(Execution).where(
                            Execution.job_id == job_id, Execution.idempotency_key == idempotency_key
                        )
                    )
                    if existing is None:
                        raise
                    return existing, False
            await audit.insert(
                session=session,
                actor=actor,
                action="job.execute",
                target_type="job",
                target_id=job.id,
                details={"execution_id": execution_id, "trigger": trigger},
            )
            timeout = workflow_timeout(job, len(plan.steps) if plan is not None else 1)
        # What the caller gets: the row as inserted (not attached to any session).
        execution = Execution(**values)
        await self._start(
            execution,
            # Only the plain part of an override travels through Temporal history; secret values stay
            # encrypted on the execution row and are merged back by the step activity.
            JobInput(
                job_id=job_id,
                trigger=trigger,
                execution_id=execution.id,
                config_override=(execution.input or {}).get("config_override"),
                plan=plan,
            ),
            timeout,
        )
        return execution, True

    async def _plan(
        self, session: AsyncSession, execution_id: str, job: runs.JobRow, state: runs.ModuleState
    ) -> RunPlan | None:
        """The run's plan, from the job and module just read: the workflow then needs no
        ``mirror_start`` and the first step starts the run. None (the workflow resolves the run
        itself) when the version or job type is missing."""
        module = state.module
        definition = state.definition(job.job_type)
        version = await runs.module_version(session, module.id, module.version)
        if definition is None or version is None:
            return None
        return runs.run_plan(
            execution_id=execution_id,
            module=module.name,
            module_version=module.version,
            bundle_sha256=version.bundle_sha256,
            job=job,
            job_type=job.job_type,
            definition=definition,
            heartbeat_timeout_seconds=self.settings.heartbeat_timeout_seconds,
        )

    def _codec(self) -> Any:
        from registry.services.jobs import SecretCodec

        return SecretCodec(self.settings.encryption_key())

    def _override_input(
        self, job: runs.JobRow, state: runs.ModuleState, override: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Validate a per-run override against the job type's schema; split off its secrets (encrypted)."""
        if not override:
            return None
        from registry.manifest import secret_keys
        from registry.services.jobs import split_config

        definition = state.definition(job.job_type) or {}
        schema = definition.get("config") or {}
        codec = self._codec()
        stored = codec.decrypt(job.secrets)
        _, resolved = split_config(schema, {**(job.config or {}), **override}, stored)  # 422 when invalid
        # Values holding a secret (nested ones too) never travel in the workflow's input.
        holders = secret_keys(schema) if schema else set()
        plain = {k: v for k, v in override.items() if k not in holders}
        secrets = {k: resolved[k] for k in override if k in holders and k in resolved}
        data: dict[str, Any] = {"config_override": plain}
        if secrets:
            data["secret_override"] = codec.encrypt(secrets)
        return data

    async def invoke(
        self,
        *,
        module: str,
        job_type: str,
        trigger: str,
        request: dict[str, Any] | None = None,
        event: dict[str, Any] | None = None,
        timeout: timedelta | None = None,
        plan: RunPlan | None = None,
    ) -> Execution:
        """Run a job type directly, without a job row (module HTTP routes). With the ``plan`` of a
        run of it (any execution id), the workflow needs no ``mirror_start``."""
        async with unit_of_work(self.sessions) as session:
            execution = Execution(
                id=str(uuid.uuid4()),
                module_name=module,
                job_type=job_type,
                trigger=trigger,
                status=ExecutionStatus.PENDING.value,
                input={"request": _summary(request)} if request else None,
            )
            execution.workflow_id = f"call-{execution.id}"
            if plan is not None:
                plan = dataclasses.replace(plan, execution_id=execution.id)
                execution.module_version = plan.module_version
                execution.steps = runs.pending_steps(plan)
            session.add(execution)
        await self._start(
            execution,
            JobInput(
                trigger=trigger,
                execution_id=execution.id,
                request=request,
                event=event,
                job_type_only=True,
                plan=plan,
            ),
            timeout or timedelta(hours=1),
        )
        return execution

    async def _start(self, execution: Execution, job_input: JobInput, timeout: timedelta) -> None:
        try:
            client = await self.client_factory()
            await client.start_workflow(
                f"{execution.module_name}.{execution.job_type}",
                job_input,
                id=execution.workflow_id,
                task_queue=self.settings.task_queue,
                execution_timeout=timeout,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=search_attributes(
                    execution.module_name, execution.job_id, execution.trigger, execution.id
                ),
            )
        except Exception as exc:
            if isinstance(exc, RPCError) and exc.status == RPCStatusCode.ALREADY_EXISTS:
                return
            async with unit_of_work(self.sessions) as session:
                row = await session.get(Execution, execution.id)
                if row is not None:
                    runs.finish(
                        session=session,
                        execution=row,
                        status=ExecutionStatus.FAILED,
                        error={"type": "StartFailed", "message": f"could not start the run: {exc}"},
                        reason="Temporal unavailable",
                    )
            log.warning("could not start %s: %s", execution.workflow_id, exc)
            raise ServiceUnavailable(f"could not start the run on Temporal: {type(exc).__name__}") from exc

    async def wait(self, execution: Execution, timeout: float) -> Execution:
        """Wait for the run to end (bounded); returns the mirror row as it is then.

        The run has ended when its mirror row is final, which the workflow writes before it sends the
        job's notifications: a run that is still notifying (a slow SMTP server) is not waited for.
        The row is only polled after the first second, so quick runs cost no extra query."""
        handle = (await self.client_factory()).get_workflow_handle(execution.workflow_id)
        result = asyncio.ensure_future(handle.result())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait({result}, timeout=min(timeout, 1.0))
            while not result.done() and loop.time() < deadline:
                row = await self._row(execution.id)
                if ExecutionStatus(row.status).is_final:
                    return row
                await asyncio.wait({result}, timeout=min(0.25, max(0.0, deadline - loop.time())))
        finally:
            if result.done():
                result.exception()  # retrieved: a failed or unknown workflow is read from the row
            else:
                result.cancel()
        return await self._row(execution.id)

    async def _row(self, execution_id: str) -> Execution:
        async with self.sessions() as session:
            row = await session.get(Execution, execution_id)
            assert row is not None
            return row

    async def cancel(self, *, session: AsyncSession, execution_id: str, actor: Actor) -> Execution:
        execution = await session.get(Execution, execution_id)
        if execution is None:
            raise NotFound(f"execution {execution_id} not found")
        if ExecutionStatus(execution.status).is_final:
            raise Conflict(
                f"execution {execution_id} already ended {execution.status}",
                details={"current_state": execution.status, "allowed_actions": ["retry"]},
            )
        handle = (await self.client_factory()).get_workflow_handle(execution.workflow_id)
        try:
            await handle.cancel()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise ServiceUnavailable(f"could not cancel on Temporal: {exc.message}") from exc
            # Not running any more (or never started): record what Temporal knows, like the sweeper.
            from workflows.reconcile import CLOSED_STATUS

            closed = await self.describe_status(execution.workflow_id)
            status = CLOSED_STATUS.get(closed, ExecutionStatus.CANCELLED) if closed else ExecutionStatus.CANCELLED
            runs.finish(
                session=session,
                execution=execution,
                status=status,
                reason=f"workflow already {closed.name.lower()}" if closed else "cancelled before its workflow existed",
            )
        audit.record(
            session=session, actor=actor, action="execution.cancel", target_type="execution", target_id=execution_id
        )
        return execution

    async def retry(self, *, execution_id: str, actor: Actor) -> Execution:
        async with self.sessions() as session:
            execution = await session.get(Execution, execution_id)
            if execution is None:
                raise NotFound(f"execution {execution_id} not found")
            if not ExecutionStatus(execution.status).is_final:
                raise Conflict(
                    f"execution {execution_id} is still {execution.status}",
                    details={"current_state": execution.status, "allowed_actions": ["cancel"]},
                )
            job_id = execution.job_id
            stored = execution.input or {}
            override = dict(stored.get("config_override") or {})
            if stored.get("secret_override"):
                override.update(self._codec().decrypt(stored["secret_override"]))
        if job_id is None:
            raise Conflict("only executions of a job can be retried; call the route again")
        new, _ = await self.start_job(job_id=job_id, actor=actor, trigger="manual", config_override=override or None)
        return new

    async def describe_status(self, workflow_id: str) -> WorkflowExecutionStatus | None:
        try:
            desc = await (await self.client_factory()).get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        return desc.status


def _summary(request: dict[str, Any]) -> dict[str, Any]:
    return {k: request.get(k) for k in ("method", "path", "params", "query")}
