"""What a run needs at start and writes at its end: the execution mirror, from the workflow's side.

Called by the mirror activities. Every write is keyed by the workflow id / execution id, so a
retried activity or a redelivered task never creates a second row or moves a final status.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, Text, bindparam, case, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from activities.types import RunPlan, StepPlan
from registry import tracing
from registry.manifest import apply_config_defaults, mask_secrets
from registry.models import Event, Execution, ExecutionStatus, Job, Module, ModuleStatus, ModuleVersion, new_id
from registry.services import events, slots

_EXECUTION_NS = uuid.UUID("5b0e4a4e-3f5e-4f6b-9a0e-2c1f7f8d9a10")

STATUS_EVENTS = {
    ExecutionStatus.COMPLETED: "job.completed",
    ExecutionStatus.FAILED: "job.failed",
    ExecutionStatus.TIMED_OUT: "job.timed_out",
    ExecutionStatus.CANCELLED: "job.cancelled",
    ExecutionStatus.SKIPPED: "job.skipped",
}


def execution_id_for(workflow_id: str) -> str:
    """Deterministic execution id of a run started outside the API (schedules)."""
    return str(uuid.uuid5(_EXECUTION_NS, workflow_id))


def job_type_definition(manifest: dict[str, Any], job_type: str) -> dict[str, Any] | None:
    for job in manifest.get("jobs") or []:
        if isinstance(job, dict) and job.get("name") == job_type:
            return job
    return None


def steps_of(definition: dict[str, Any], module: str, job_type: str) -> list[dict[str, Any]]:
    """The steps of a job type; a single handler is one step named after the job type."""
    if definition.get("steps"):
        return [
            {
                "name": step["name"],
                "handler": step["handler"],
                "activity": f"{module}.{job_type}.{step['name']}",
                "timeout_seconds": step.get("timeoutSeconds"),
                "retries": step_retries(step.get("retries")),
                "for_each": for_each(step),
            }
            for step in definition["steps"]
        ]
    return [
        {
            "name": job_type,
            "handler": definition["handler"],
            "activity": f"{module}.{job_type}",
            "timeout_seconds": None,
            "retries": None,
            "for_each": None,
        }
    ]


def step_retries(declared: Any) -> int | None:
    """How many times a step retries: its manifest ``retries`` is a retry policy (``maxAttempts``
    counts the first attempt); a bare number of retries is taken as it is."""
    if isinstance(declared, dict):
        return max(int(declared.get("maxAttempts") or 1), 1) - 1
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    return None


#: The defaults of a step's ``forEach`` (registry/manifest/schema.json).
FOR_EACH_DEFAULTS: dict[str, Any] = {"concurrency": 10, "maxItems": 1000, "continueOnItemError": False}


def for_each(step: dict[str, Any]) -> dict[str, Any] | None:
    """A step's ``forEach`` with its defaults applied, or ``None`` for an ordinary step."""
    declared = step.get("forEach")
    if not isinstance(declared, dict):
        return None
    return {**FOR_EACH_DEFAULTS, **{k: v for k, v in declared.items() if k in FOR_EACH_DEFAULTS}}


def resolve_config(
    definition: dict[str, Any], job: Job | JobRow | None, override: dict[str, Any] | None, secrets: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config with secrets, config with secrets masked) for a run starting now."""
    schema = definition.get("config") or {}
    merged: dict[str, Any] = {}
    if job is not None:
        merged.update(job.config or {})
    merged.update(secrets)
    if override:
        merged.update(override)
    resolved = apply_config_defaults(schema, merged) if schema else merged
    return resolved, mask_secrets(schema, resolved) if schema else dict(resolved)


#: The columns of a job row that starting or running it reads (not its schedule's bookkeeping).
JOB_COLUMNS = (
    Job.id,
    Job.name,
    Job.module_name,
    Job.job_type,
    Job.enabled,
    Job.config,
    Job.secrets,
    Job.timeout_seconds,
    Job.retries,
    Job.retry_backoff,
    Job.notifications,
)


@dataclass(frozen=True)
class JobRow:
    """What a run needs of its job (:data:`JOB_COLUMNS`), read without the ORM's unit of work."""

    id: str
    name: str
    module_name: str
    job_type: str
    enabled: bool
    config: dict[str, Any]
    secrets: str | None
    timeout_seconds: int
    retries: int
    retry_backoff: dict[str, Any]
    notifications: dict[str, Any]

    @staticmethod
    def columns(prefix: str = "jobrow_") -> list[Any]:
        """:data:`JOB_COLUMNS` labelled with ``prefix`` (to read them joined with other tables)."""
        return [c.label(f"{prefix}{c.key}") for c in JOB_COLUMNS]

    @classmethod
    def of(cls, row: Any, prefix: str = "jobrow_") -> JobRow | None:
        """The job in a row read with :meth:`columns`; None when the row has none (an outer join)."""
        mapping = row._mapping
        if mapping[f"{prefix}id"] is None:
            return None
        return cls(**{c.key: mapping[f"{prefix}{c.key}"] for c in JOB_COLUMNS})


#: The columns that say whether a cached :class:`ModuleState` is current (any change of the row
#: bumps ``revision``; status and version are compared too).
MODULE_KEY_COLUMNS = (Module.id, Module.revision, Module.status, Module.version)


@dataclass
class ModuleState:
    """A module row as of one revision, kept per process: a run checks the row's
    :data:`MODULE_KEY_COLUMNS` (a small indexed read) instead of reading the manifest and config
    each time, and its config in clear is decrypted once per revision, not once per step."""

    key: tuple[str, int, str, str]
    #: Detached, read-only: what :func:`skip_reason`, the config helpers and the plan read.
    module: Module
    _definitions: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    _config: tuple[dict[str, Any], dict[str, Any]] | None = None

    def definition(self, job_type: str) -> dict[str, Any] | None:
        if job_type not in self._definitions:
            self._definitions[job_type] = job_type_definition(self.module.manifest, job_type)
        return self._definitions[job_type]

    def config(self, secret_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the module config in clear with its defaults, its secret parts): what a step gets."""
        if self._config is None:
            from registry.manifest import secret_parts
            from registry.services.modules import config_schema, resolved_config

            resolved = resolved_config(module=self.module, secret_key=secret_key)
            self._config = (resolved, secret_parts(config_schema(self.module), resolved))
        # Copies: a handler in this process may change what it gets.
        return json.loads(json.dumps(self._config[0])), json.loads(json.dumps(self._config[1]))


_MODULES: dict[str, ModuleState] = {}


async def module_state(session: AsyncSession, name: str, key: Any = None) -> ModuleState | None:
    """The module named ``name`` as the registry has it now. ``key``: its
    :data:`MODULE_KEY_COLUMNS` when the caller read them already (joined to its own query;
    ``None`` values when the module does not exist), else they are read here."""
    if key is None:
        found = (await session.execute(select(*MODULE_KEY_COLUMNS).where(Module.name == name))).first()
        key = tuple(found) if found is not None else None
    if key is None or key[0] is None:
        _MODULES.pop(name, None)
        return None
    cached = _MODULES.get(name)
    if cached is not None and cached.key == tuple(key):
        return cached
    module = await session.get(Module, key[0], populate_existing=True)
    if module is None:
        return None
    session.expunge(module)
    # Keyed by what was read with the manifest, so a change racing this read is seen next time.
    state = ModuleState(key=(module.id, module.revision, module.status, module.version), module=module)
    _MODULES[name] = state
    return state


@dataclass
class StartResult:
    execution: Execution
    skip_reason: str | None = None
    definition: dict[str, Any] = field(default_factory=dict)
    module: Module | None = None
    version: ModuleVersion | None = None
    job: Job | None = None


#: Registered versions never change (an upgrade is a new row, a re-registered module a new id),
#: so each process keeps the rows it has read: a run does not query its version twice.
_VERSIONS: dict[tuple[str, str], ModuleVersion] = {}
_VERSIONS_MAX = 2000


async def module_version(session: AsyncSession, module_id: str, version: str) -> ModuleVersion | None:
    """The (detached, read-only) version row of a module, cached per process. The code bundle is
    deferred and never loaded here."""
    key = (module_id, version)
    found = _VERSIONS.get(key)
    if found is not None:
        return found
    found = await session.scalar(
        select(ModuleVersion).where(ModuleVersion.module_id == module_id, ModuleVersion.version == version)
    )
    if found is not None:
        session.expunge(found)
        if len(_VERSIONS) >= _VERSIONS_MAX:
            _VERSIONS.clear()
        _VERSIONS[key] = found
    return found


async def start_run(
    *,
    session: AsyncSession,
    workflow_id: str,
    run_id: str,
    workflow_type: str,
    job_id: str | None,
    trigger: str,
    execution_id: str | None,
    event: dict[str, Any] | None,
    request: dict[str, Any] | None,
    config_override: dict[str, Any] | None,
    attempt: int,
    masked_config: Any = None,
) -> StartResult:
    """Create or adopt the run's mirror row and decide whether it runs or is skipped."""
    module_name, _, job_type = workflow_type.partition(".")
    execution = await session.scalar(select(Execution).where(Execution.workflow_id == workflow_id).with_for_update())
    now = datetime.now(UTC)
    job = await session.get(Job, job_id) if job_id else None
    # A slot run (schedule, catch-up, backfill: ``sched-<job>-<nominal time>``) records its slot;
    # a second start of a slot that already has a run answers that run and runs nothing.
    nominal = slots.nominal_of(workflow_id, job_id) if trigger in ("schedule", "backfill") else None
    if execution is None and nominal is not None and job is not None and trigger == "schedule" and job.schedule:
        if not slots.is_policy_slot(job.schedule, job.timezone, nominal, slots.job_dst(job)):
            # Temporal fired a time the job's daylight-saving policy does not run: no run, no row.
            transient = Execution(
                id=execution_id or execution_id_for(workflow_id), job_id=job_id, workflow_id=workflow_id
            )
            return StartResult(
                execution=transient, skip_reason=f"{nominal.isoformat()} is not a slot under the DST policy"
            )
    if execution is None and nominal is not None and job is not None:
        taken = await session.scalar(
            select(Execution).where(Execution.job_id == job_id, Execution.nominal_at == nominal)
        )
        if taken is not None:
            return StartResult(execution=taken, skip_reason=f"slot {nominal.isoformat()} already has run {taken.id}")
    if execution is None:
        execution = Execution(
            id=execution_id or execution_id_for(workflow_id),
            # A run of a job deleted meanwhile is still recorded (as skipped), without the dangling link.
            job_id=job_id if job is not None else None,
            module_name=module_name,
            job_type=job_type,
            workflow_id=workflow_id,
            trigger=trigger,
            event_id=(event or {}).get("id"),
            input={"request": request} if request else None,
            status=ExecutionStatus.PENDING.value,
            created_at=now,
            nominal_at=nominal if job is not None else None,
        )
        session.add(execution)
        try:
            async with session.begin_nested():
                await session.flush()
        except IntegrityError:
            execution = await session.scalar(select(Execution).where(Execution.workflow_id == workflow_id))
            if execution is None and nominal is not None:
                taken = await session.scalar(
                    select(Execution).where(Execution.job_id == job_id, Execution.nominal_at == nominal)
                )
                assert taken is not None
                return StartResult(
                    execution=taken, skip_reason=f"slot {nominal.isoformat()} already has run {taken.id}"
                )
            assert execution is not None
    if not ExecutionStatus(execution.status).is_final:
        # (A start of a run that ended already, e.g. a slot started again, leaves its row as is.)
        execution.run_id = run_id
        execution.attempt = max(execution.attempt or 0, attempt)

    module = await session.scalar(select(Module).where(Module.name == module_name))
    reason = skip_reason(job_id, job, module_name, module)
    result = StartResult(execution=execution, module=module, job=job)
    if reason is None and module is not None:
        version = await module_version(session, module.id, module.version)
        definition = job_type_definition(module.manifest, job_type)
        if definition is None:
            reason = f"job type {job_type} does not exist in {module_name} {module.version}"
        else:
            result.definition = definition
            result.version = version
            execution.module_version = module.version

    if ExecutionStatus(execution.status).is_final:
        # A redelivered start for a run that already ended: report it as is.
        result.skip_reason = reason or execution.status_reason or "already finished"
        return result
    if reason is not None:
        finish(session=session, execution=execution, status=ExecutionStatus.SKIPPED, reason=reason)
        result.skip_reason = reason
        return result
    mark_started(session, execution, now)
    if masked_config is not None:
        execution.config = masked_config
    return result


def skip_reason(job_id: str | None, job: Job | JobRow | None, module_name: str, module: Module | None) -> str | None:
    """Why a run starting now must not run (its job or module changed since it was requested)."""
    if job_id and job is None:
        return "the job was deleted after this run was requested"
    if job is not None and not job.enabled:
        return "the job is disabled"
    if module is None:
        return f"module {module_name} no longer exists"
    if module.status != ModuleStatus.ENABLED.value:
        return f"module {module_name} is {module.status}"
    return None


def mark_started(session: AsyncSession, execution: Execution, now: datetime) -> None:
    """Move a (locked) row to RUNNING once, recording ``job.started``."""
    if execution.status == ExecutionStatus.RUNNING.value:
        return
    execution.status = ExecutionStatus.RUNNING.value
    execution.started_at = execution.started_at or now
    events.record(
        session=session,
        name="job.started",
        payload=_event_payload(execution),
        source="platform",
        module_name=execution.module_name,
        execution_id=execution.id,
    )


def run_plan(
    *,
    execution_id: str,
    module: str,
    module_version: str,
    bundle_sha256: str | None,
    job: Job | JobRow | None,
    job_type: str,
    definition: dict[str, Any],
    heartbeat_timeout_seconds: int,
) -> RunPlan:
    """What the workflow needs to run a job type: its steps with their timeouts and attempts, the
    retry policy and the notifications (no config: that is resolved by each step, secrets included)."""
    retries = definition.get("retries") or {}
    timeout = job.timeout_seconds if job is not None else int(definition.get("timeoutSeconds") or 300)
    max_attempts = (job.retries + 1) if job is not None else int(retries.get("maxAttempts") or 1)
    backoff = (job.retry_backoff if job is not None else None) or {}
    steps = [
        StepPlan(
            name=s["name"],
            handler=s["handler"],
            activity=s["activity"],
            timeout_seconds=int(s["timeout_seconds"] or timeout),
            max_attempts=int(s["retries"] + 1) if s["retries"] is not None else max_attempts,
            for_each=s.get("for_each"),
        )
        for s in steps_of(definition, module, job_type)
    ]
    notifications = (job.notifications if job is not None else None) or definition.get("notifications") or {}
    return RunPlan(
        execution_id=execution_id,
        module=module,
        module_version=module_version,
        bundle_sha256=bundle_sha256,
        job_type=job_type,
        steps=steps,
        retry_initial_seconds=float(backoff.get("initial_interval_seconds", retries.get("initialIntervalSeconds", 1))),
        retry_backoff=float(backoff.get("backoff_coefficient", retries.get("backoffCoefficient", 2.0))),
        retry_max_interval_seconds=backoff.get("maximum_interval_seconds", retries.get("maximumIntervalSeconds")),
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        notifications={k: list(v) for k, v in notifications.items() if isinstance(v, list)},
    )


def pending_steps(plan: RunPlan) -> list[dict[str, Any]]:
    """The ``steps`` column of a run that has not started."""
    return [{"name": s.name, "status": "PENDING", "attempts": 0, "failures": 0} for s in plan.steps]


def finish(
    *,
    session: AsyncSession,
    execution: Execution,
    status: ExecutionStatus,
    result: Any = None,
    error: dict[str, Any] | None = None,
    reason: str | None = None,
) -> bool:
    """Move a row to its final status once; later calls are no-ops (returns False)."""
    if ExecutionStatus(execution.status).is_final:
        return False
    now = datetime.now(UTC)
    execution.status = status.value
    execution.status_reason = reason
    execution.result = storable(result)
    execution.error = storable(error)
    execution.finished_at = now
    if execution.started_at is not None:
        execution.duration_ms = int((now - execution.started_at).total_seconds() * 1000)
    name = STATUS_EVENTS.get(status)
    if name:
        events.record(
            session=session,
            name=name,
            payload=_event_payload(execution),
            source="platform",
            module_name=execution.module_name,
            execution_id=execution.id,
        )
    return True


#: The columns :func:`finish_by_id` reads to end a run (never the logs, steps or config).
FINISH_COLUMNS = (
    Execution.status,
    Execution.started_at,
    Execution.attempt,
    Execution.job_id,
    Execution.module_name,
    Execution.job_type,
    Execution.trigger,
)
FINAL_STATUSES = [s.value for s in ExecutionStatus if s.is_final]


async def finish_by_id(
    *,
    session: AsyncSession,
    execution_id: str,
    status: ExecutionStatus,
    result: Any = None,
    error: dict[str, Any] | None = None,
    reason: str | None = None,
    attempt: int = 0,
) -> bool | None:
    """:func:`finish` for a row not loaded in the session: reads only the columns it needs (never the
    logs, steps or config) and writes one UPDATE, guarded so that a final status never moves even
    where FOR UPDATE locks nothing (SQLite). Returns None when the row does not exist, else
    whether this call ended the run."""
    row = (await session.execute(select(*FINISH_COLUMNS).where(Execution.id == execution_id).with_for_update())).first()
    if row is None:
        return None
    values: dict[str, Any] = {}
    if attempt and attempt > (row.attempt or 0):
        values["attempt"] = attempt
    if not ExecutionStatus(row.status).is_final:
        ending = final_values(
            execution_id=execution_id, row=row, status=status, result=result, error=error, reason=reason
        )
        if await update_execution(session, execution_id, {**values, **ending.values}, unless_final=True):
            await ending.record(session, execution_id)
            return True
    if values:
        await update_execution(session, execution_id, values)
    return False


#: The tables the hot path writes with prebuilt Core statements: no ORM unit of work, and a
#: statement built once (its cache key is cheap) whose values come as execution parameters.
EXECUTIONS = cast(Table, Execution.__table__)
EVENTS = cast(Table, Event.__table__)
_UPDATE = update(EXECUTIONS).where(EXECUTIONS.c.id == bindparam("_execution_id"))
_UPDATE_UNLESS_FINAL = _UPDATE.where(EXECUTIONS.c.status.not_in(FINAL_STATUSES))
#: The logs appended in SQL (the stored logs are never read back).
_APPENDED = {
    "logs": case(
        (EXECUTIONS.c.logs == "", bindparam("_logs", type_=Text)),
        else_=EXECUTIONS.c.logs + "\n" + bindparam("_logs", type_=Text),
    )
}
_UPDATES = {
    (False, False): _UPDATE,
    (True, False): _UPDATE_UNLESS_FINAL,
    (False, True): _UPDATE.values(_APPENDED),
    (True, True): _UPDATE_UNLESS_FINAL.values(_APPENDED),
}


async def update_execution(
    session: AsyncSession,
    execution_id: str,
    values: dict[str, Any],
    *,
    unless_final: bool = False,
    logs: str | None = None,
) -> bool:
    """One UPDATE of an execution row (nothing loaded into the session) setting ``values`` (column
    values) and appending ``logs`` (JSON lines) to its logs; with ``unless_final``, only while
    its status is not final (atomic on SQLite too, where FOR UPDATE locks nothing). Returns
    whether a row changed."""
    params = {**values, "_execution_id": execution_id}
    if logs:
        params["_logs"] = logs
    if len(params) == 1:
        return True  # nothing to write
    done = await session.execute(_UPDATES[(unless_final, bool(logs))], params)
    return bool(getattr(done, "rowcount", 1))


@dataclass
class Ending:
    """The column values that end a run, and its ``job.*`` event (recorded once the guarded UPDATE
    changed the row)."""

    values: dict[str, Any]
    event: str | None
    payload: dict[str, Any]
    module_name: str

    async def record(self, session: AsyncSession, execution_id: str) -> None:
        if self.event:
            await insert_event(
                session, name=self.event, payload=self.payload, module_name=self.module_name, execution_id=execution_id
            )


async def insert_event(
    session: AsyncSession, *, name: str, payload: dict[str, Any], module_name: str | None, execution_id: str
) -> None:
    """:func:`registry.services.events.record` of a platform ``job.*`` event as one INSERT (no
    ORM object: nobody reads it back in this transaction)."""
    now = datetime.now(UTC)
    await session.execute(
        _INSERT_EVENT,
        {
            "id": new_id(),
            "name": name,
            "payload": payload,
            "source": events.PLATFORM_SOURCE,
            "module_name": module_name,
            "execution_id": execution_id,
            "occurred_at": now,
            "received_at": now,
            "dispatch_status": "PENDING",
            "dispatch_attempts": 0,
            "next_attempt_at": now,
            "traceparent": tracing.traceparent(),
        },
    )


_INSERT_EVENT = EVENTS.insert()


def final_values(
    *,
    execution_id: str,
    row: Any,
    status: ExecutionStatus,
    result: Any = None,
    error: dict[str, Any] | None = None,
    reason: str | None = None,
) -> Ending:
    """How to end a run whose :data:`FINISH_COLUMNS` are ``row`` (not final)."""
    now = datetime.now(UTC)
    duration_ms = int((now - row.started_at).total_seconds() * 1000) if row.started_at is not None else None
    result, error = storable(result), storable(error)
    return Ending(
        values={
            "status": status.value,
            "status_reason": reason,
            "result": result,
            "error": error,
            "finished_at": now,
            "duration_ms": duration_ms,
        },
        event=STATUS_EVENTS.get(status),
        payload=job_event_payload(
            execution_id=execution_id,
            job_id=row.job_id,
            module=row.module_name,
            job_type=row.job_type,
            trigger=row.trigger,
            status=status.value,
            reason=reason,
            error=error,
            duration_ms=duration_ms,
        ),
        module_name=row.module_name,
    )


def storable(value: Any) -> Any:
    """``value`` as both databases can store it in a JSON column: NaN and infinities (which
    Temporal's JSON accepts, PostgreSQL does not) become null, NUL characters U+FFFD. Values
    without them are returned as they are (one ``json.dumps`` to find out)."""
    if value is None or isinstance(value, bool | int | str):
        return _scrub(value)  # cheap for scalars
    try:
        text = json.dumps(value, allow_nan=False)
    except ValueError:
        return _scrub(value)
    except TypeError:
        return value  # not JSON at all: the column's own serializer reports it
    return _scrub(value) if "\\u0000" in text else value


def _scrub(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_scrub(k) if isinstance(k, str) else k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _event_payload(execution: Execution) -> dict[str, Any]:
    return job_event_payload(
        execution_id=execution.id,
        job_id=execution.job_id,
        module=execution.module_name,
        job_type=execution.job_type,
        trigger=execution.trigger,
        status=execution.status,
        reason=execution.status_reason,
        error=execution.error,
        duration_ms=execution.duration_ms,
    )


def job_event_payload(
    *,
    execution_id: str,
    job_id: str | None,
    module: str,
    job_type: str,
    trigger: str,
    status: str,
    reason: str | None,
    error: dict[str, Any] | None,
    duration_ms: int | None,
) -> dict[str, Any]:
    """The payload of a ``job.*`` event."""
    payload: dict[str, Any] = {
        "execution_id": execution_id,
        "job_id": job_id,
        "module": module,
        "job_type": job_type,
        "trigger": trigger,
        "status": status,
    }
    if reason:
        payload["reason"] = reason
    if error:
        payload["error"] = error.get("message")
    if duration_ms is not None:
        payload["duration_ms"] = duration_ms
    return payload
