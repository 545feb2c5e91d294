"""Activities that run module handlers and keep the execution mirror.

``run_step`` is one dynamic activity serving every ``<module>.<job-type>[.<step>]`` name, so a
module enabled after the worker started runs without a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

from sqlalchemy import bindparam, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.common import RawValue
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError

from activities.handlers import HandlerFailed, HandlerNotLoaded, HandlerPool, LimitExceeded, RunLimits
from activities.types import (
    ITEM_ENVELOPE,
    ITEM_LOGS_DETAIL,
    MIRROR_FINISH,
    MIRROR_ITEMS,
    MIRROR_START,
    FinishInput,
    ItemsInput,
    RunPlan,
    StartInput,
    StepEnd,
    StepInput,
    end_detail,
    step_outcome,
)
from autoplat._invoke import invoke
from autoplat._loader import HandlerNotFound, load_handler
from autoplat._sync import to_completion
from autoplat.context import ExecutionInfo, HttpRequest, JobContext, LogBuffer
from autoplat.errors import Cancelled, JobError
from registry import logformat, metrics, tracing
from registry.db import is_unavailable, unit_of_work
from registry.models import Execution, ExecutionStatus, Job, Module, ModuleVersion
from registry.services import events, runs
from registry.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: "No result": the step does not end its run (see ``_step_finished``).
_NOTHING: Any = object()
#: The logs one item of a ``forEach`` step keeps (they travel in Temporal history with its result).
ITEM_LOG_LIMIT = 16 * 1024
#: How long a worker reuses what the items of one ``forEach`` step share (config, secrets, code),
#: read from the registry once instead of once per item.
_ITEM_PREPARED_SECONDS = 60.0

#: Extra services (http, browser, notify, storage, state) are built per step by this factory.
ServiceFactory = Callable[[StepInput, JobContext], Awaitable[dict[str, Any]]]
#: Called once when a step ends (completed, failed, timed out or cancelled) to release what the
#: factory acquired for it (browser contexts, connections).
ServiceRelease = Callable[[StepInput, JobContext], Awaitable[None]]


@dataclass
class _Prepared:
    version: ModuleVersion
    config: dict[str, Any]
    secrets: dict[str, Any]
    module_config: dict[str, Any]
    module_secrets: dict[str, Any]
    trigger: str
    #: The job type's ``limits`` (memoryMb, cpuSeconds) from its manifest.
    limits: dict[str, Any]
    #: Which run of the step's handler this is (1 for the first).
    run: int


class _Spent(Exception):
    """The step's attempts are used up before this attempt could run its handler (raised by
    ``_prepare`` once the step's end is written); ``error`` is what the workflow gets."""

    def __init__(self, error: ApplicationError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class _Beat:
    """What every heartbeat of a step tells the step's next attempt: which run of the handler was
    going on, since when, and that it was still going at the time of the heartbeat. An attempt
    that finds its predecessor was still running past its timeout knows Temporal's start-to-close
    timeout ended it (see :meth:`JobActivities._overran`)."""

    run: int = 0
    started: float = 0.0
    #: The end of the failed run (a :class:`StepEnd`) when the registry could not take it (nor,
    #: with ``count_failure``, the failure's count): the next attempt writes both before it runs
    #: the handler.
    ended: dict[str, Any] | None = None
    #: What the previous attempt's heartbeats said, repeated until this attempt's own run starts:
    #: an attempt that fails before that (the registry still down) must not erase it.
    inherited: list[Any] = field(default_factory=list)
    #: The logs of an item's earlier failed runs (``forEach``), handed to the item's next attempt.
    item_logs: str | None = None
    #: What the handler's last ``ctx.heartbeat(*details)`` said, sent after the platform's own
    #: detail with every heartbeat (so the next platform beat does not erase it).
    progress: list[Any] = field(default_factory=list)

    def details(self) -> list[Any]:
        if self.item_logs is not None:
            beat = {_BEAT: 1, "run": self.run, "started": self.started, "at": time.time(), "logs": self.item_logs}
            return [beat, *self.progress]
        if self.ended is not None:
            return [{_BEAT: 1, "run": self.ended["attempt"], "end": self.ended}]
        if not self.run:
            return list(self.inherited)
        return [{_BEAT: 1, "run": self.run, "started": self.started, "at": time.time()}, *self.progress]


#: Key of the platform's heartbeat details (the first detail of every step heartbeat).
_BEAT = "autoplat_step_beat"


class _StepRuntime:
    def __init__(self, activities: JobActivities, inp: StepInput, loop: asyncio.AbstractEventLoop, beat: _Beat) -> None:
        self._activities = activities
        self._inp = inp
        self._loop = loop
        self._beat = beat
        #: How many events of each name the step emitted so far: the n-th event named X of a step
        #: is the same event in every attempt (its id derives from the execution, the step, X and n).
        self._emitted: dict[str, int] = {}

    def heartbeat(self, *details: Any) -> None:
        # Kept, not sent: the step's heartbeat loop sends it with its next beat (every third of the
        # heartbeat timeout), so a handler heartbeating in a tight loop costs the server nothing more.
        self._beat.progress = [_convertible(d) for d in details]

    def is_cancelled(self) -> bool:
        return self._activities.cancelled.get(_cancel_key(self._inp), False)

    async def emit(self, name: str, payload: dict[str, Any]) -> str:
        self._emitted[name] = sequence = self._emitted.get(name, 0) + 1
        return await self._activities.emit(self._inp, name, payload, sequence=sequence)

    def run_coroutine(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(_await(coro), self._loop).result()


def _convertible(detail: Any) -> Any:
    """A heartbeat detail as is if the SDK can convert it, else its repr: a beat with a detail it
    cannot convert fails, and the SDK cancels an activity whose heartbeat fails."""
    try:
        DataConverter.default.payload_converter.to_payloads([detail])  # any thread, no activity context
    except Exception:  # noqa: BLE001 - whatever the converter raises, the step's beats go on
        return repr(detail)[:200]
    return detail


async def _await(aw: Awaitable[Any]) -> Any:
    return await aw


_A = TypeVar("_A")


def _refusals_fail(
    write: Callable[[JobActivities, _A], Awaitable[T]],
) -> Callable[[JobActivities, _A], Awaitable[T]]:
    """A mirror write the database refuses (a constraint, a value, a bug) fails for good:
    retrying it until the run's deadline would only repeat it. While the database is unreachable
    the write fails retryable (the workflow's retry policy tries it again)."""

    @functools.wraps(write)
    async def refusing(self: JobActivities, inp: _A) -> T:
        try:
            return await write(self, inp)
        except SQLAlchemyError as exc:
            if is_unavailable(exc):
                raise
            log.exception("%s: the registry refused the write", write.__name__)
            raise ApplicationError(
                f"the registry refused {write.__name__}: {type(exc).__name__}: {exc}"[:2000],
                type="RegistryError",
                non_retryable=True,
            ) from None

    return refusing


class JobActivities:
    """Holds the worker's shared clients; :meth:`activities` lists what to register."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        services: ServiceFactory | None = None,
        release: ServiceRelease | None = None,
        log_sink: Callable[[str], Callable[[dict[str, Any]], None] | None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.services = services
        self.release = release
        self.log_sink = log_sink
        #: Steps (and items) whose handler is being stopped, by :func:`_cancel_key`.
        self.cancelled: dict[str, bool] = {}
        #: What the items of a ``forEach`` step share, by (execution, step): (until, reading).
        self._items_prepared: dict[tuple[str, int], tuple[float, asyncio.Future[tuple[_Prepared, Path]]]] = {}
        #: Handler processes (``handler_isolation=process``); ``None`` runs handlers in this interpreter.
        self.pool = HandlerPool(settings) if settings.handler_isolation == "process" else None

    def activities(self) -> list[Callable[..., Any]]:
        return [self.mirror_start, self.mirror_finish, self.mirror_items, self.run_step]

    # --- mirror ---------------------------------------------------------------------------------
    @activity.defn(name=MIRROR_START)
    @_refusals_fail
    async def mirror_start(self, inp: StartInput) -> RunPlan:
        since = datetime.now(UTC)
        async with unit_of_work(self.sessions) as session:
            result = await runs.start_run(
                session=session,
                workflow_id=inp.workflow_id,
                run_id=inp.run_id,
                workflow_type=inp.workflow_type,
                job_id=inp.job.job_id,
                trigger=inp.job.trigger,
                execution_id=inp.job.execution_id,
                event=inp.job.event,
                request=inp.job.request,
                config_override=inp.job.config_override,
                attempt=inp.attempt,
            )
            execution = result.execution
            metrics.count_start(session, execution, since=since, workflow_id=inp.workflow_id)
            _keep_trace(execution)
            if result.skip_reason is not None:
                return RunPlan(execution_id=execution.id, skip_reason=result.skip_reason)
            assert result.module is not None
            definition = result.definition
            secrets = self._job_secrets(result.job)
            override = {**(inp.job.config_override or {}), **self._run_secrets(execution)}
            _, masked = runs.resolve_config(definition, result.job, override or None, secrets)
            execution.config = masked
            plan = runs.run_plan(
                execution_id=execution.id,
                module=result.module.name,
                module_version=result.module.version,
                bundle_sha256=result.version.bundle_sha256 if result.version else result.module.bundle_sha256,
                job=result.job,
                job_type=execution.job_type,
                definition=definition,
                heartbeat_timeout_seconds=self.settings.heartbeat_timeout_seconds,
            )
            execution.steps = execution.steps or runs.pending_steps(plan)
            return plan

    @activity.defn(name=MIRROR_FINISH)
    @_refusals_fail
    async def mirror_finish(self, inp: FinishInput) -> dict[str, Any] | None:
        """End the run's row; when it was already COMPLETED by its last step (whose completion never
        reached the workflow: a worker lost just after the commit, then a cancel or a failure),
        answer that outcome so the workflow reports what the row says."""
        async with unit_of_work(self.sessions) as session:
            if inp.step_end is not None:
                execution = await session.get(Execution, inp.execution_id, with_for_update=True)
                if execution is not None:
                    _write_pending(execution, inp.step_end)
                    await session.flush()
            finished = await runs.finish_by_id(
                session=session,
                execution_id=inp.execution_id,
                status=ExecutionStatus(inp.status),
                result=inp.result,
                error=inp.error,
                reason=inp.reason,
                attempt=inp.attempt or 0,
            )
            if finished:
                await _count_finish(session, inp.execution_id)
            if finished is None:
                log.warning("mirror_finish: execution %s not found", inp.execution_id)
            elif not finished and inp.status != ExecutionStatus.COMPLETED.value:
                row = (
                    await session.execute(
                        select(Execution.status, Execution.result).where(Execution.id == inp.execution_id)
                    )
                ).first()
                if row is not None and row.status == ExecutionStatus.COMPLETED.value:
                    return {"status": row.status, "result": row.result}
        return None

    @activity.defn(name=MIRROR_ITEMS)
    @_refusals_fail
    async def mirror_items(self, inp: ItemsInput) -> int:
        """Write a ``forEach`` step's progress: its status and item counts on the row's ``steps``, and
        the logs of the items that ended since the last write, appended in SQL. One transaction for
        many items (the workflow calls it a few times per step). Returns the log budget of the step
        (the run's ``execution_log_limit``)."""
        async with unit_of_work(self.sessions) as session:
            if inp.pending_end is not None:
                execution = await session.get(Execution, inp.execution_id, with_for_update=True)
                if execution is not None:
                    _write_pending(execution, inp.pending_end)
                    await session.flush()
            row = (
                await session.execute(select(Execution.steps).where(Execution.id == inp.execution_id).with_for_update())
            ).first()
            if row is None:
                return self.settings.execution_log_limit
            steps = [dict(s) for s in (row.steps or [])]
            while len(steps) <= inp.step_index:
                steps.append({"name": inp.step, "status": "PENDING", "attempts": 0, "failures": 0})
            step = steps[inp.step_index]
            now = datetime.now(UTC).isoformat()
            step.update(status=inp.status, items={"total": inp.total, "completed": inp.completed, "failed": inp.failed})
            if inp.starts:
                step.update(started_at=now, attempts=1)
                step.pop("finished_at", None)
            if inp.status != "RUNNING":
                step["finished_at"] = now
            if inp.error:
                step["error"] = inp.error[:2000]
            if inp.status == "FAILED":
                step["failures"] = int(step.get("failures") or 0) + 1
            await runs.update_execution(session, inp.execution_id, {"steps": steps}, logs=inp.logs)
        return self.settings.execution_log_limit

    # --- steps ----------------------------------------------------------------------------------
    @activity.defn(dynamic=True)
    async def run_step(self, args: Sequence[RawValue]) -> Any:
        inp: StepInput = activity.payload_converter().from_payload(args[0].payload, StepInput)
        info = activity.info()
        buffer = LogBuffer(
            self.settings.execution_log_limit
            if inp.item_index is None
            else min(self.settings.execution_log_limit, ITEM_LOG_LIMIT),
            # ctx.http's requests are counted from their log entries (registry/metrics.py).
            metrics.http_log_counter(self.log_sink(inp.execution_id) if self.log_sink else None),
        )
        self.cancelled.pop(_cancel_key(inp), None)
        beat = _Beat()
        beater = asyncio.create_task(self._heartbeats(beat))
        # Every log line of the step names its run (AUTOPLAT_LOG_FORMAT=json, registry/logformat.py).
        bound = logformat.bind(
            execution_id=inp.execution_id, job_id=inp.job_id, module=inp.module, job_type=inp.job_type
        )
        try:
            async with tracing.step_span(inp.module, inp.job_type, inp.step, inp.execution_id):
                if inp.item_index is not None:
                    return await self._run_item(inp, info, buffer, beat)
                return await self._run_step(inp, info, buffer, beat)
        finally:
            beater.cancel()
            logformat.unbind(bound)

    async def _run_step(self, inp: StepInput, info: activity.Info, buffer: LogBuffer, beat: _Beat) -> Any:
        ctx: JobContext | None = None
        outcome = "FAILED"
        error_text: str | None = None
        early: dict[str, Any] | None = None
        value: Any = None
        finalized = False
        pending: StepEnd | None = None
        #: The handler failed and the registry could not count it (see ``_count_failure``).
        uncounted = False
        run = info.attempt
        beat.inherited = _platform_beat(info.heartbeat_details)
        try:
            try:
                prepared = await self._prepare(inp, info)
                if not isinstance(prepared, _Prepared):
                    early = prepared
                    return early
                run = prepared.run
                code_root = await self._code_root(prepared.version, inp)
            except _Spent as spent:
                early = {}  # its end is written: the step's attempts are used up
                raise spent.error from None
            except (SQLAlchemyError, OSError) as exc:
                early = {}  # nothing ran: nothing to write (the registry is down anyway)
                if not is_unavailable(exc):
                    # A statement the database refuses fails the same way on every attempt.
                    log.exception("preparing step %s of execution %s failed", inp.step, inp.execution_id)
                    raise ApplicationError(
                        f"the registry refused the step: {type(exc).__name__}: {exc}"[:2000],
                        type="RegistryError",
                        non_retryable=True,
                    ) from None
                # The registry is unreachable: a platform-side failure, retried by Temporal (for
                # as long as the run's timeout allows) without counting against the job's attempts.
                if beat.inherited:
                    activity.heartbeat(*beat.details())  # what the previous attempt left stays
                raise ApplicationError(
                    f"registry unavailable: {type(exc).__name__}", type="PlatformUnavailable"
                ) from None
            key = f"{inp.module}@{inp.module_version}#{inp.bundle_sha256 or ''}"
            fn: Callable[..., Any] | None = None
            if self.pool is None:
                try:
                    fn = await asyncio.to_thread(load_handler, code_root, inp.handler, key=key)
                except HandlerNotFound as exc:
                    raise ApplicationError(str(exc), type="HandlerNotFound", non_retryable=True) from exc
            loop = asyncio.get_running_loop()
            ctx = JobContext(
                info=ExecutionInfo(
                    execution_id=inp.execution_id,
                    module=inp.module,
                    job_type=inp.job_type,
                    job_id=inp.job_id,
                    module_version=inp.module_version,
                    step=inp.step,
                    attempt=run,
                    trigger=prepared.trigger,
                    workflow_id=info.workflow_id,
                    run_id=info.workflow_run_id,
                    trace_id=tracing.current_trace_id(),
                ),
                config=prepared.config,
                secrets=prepared.module_secrets | prepared.secrets,
                module_config=prepared.module_config,
                runtime=_StepRuntime(self, inp, loop, beat),
                log_buffer=buffer,
                previous=inp.previous,
                event=inp.event,
                request=HttpRequest(**inp.request) if inp.request else None,
            )
            if self.services is not None:
                for name, service in (await self.services(inp, ctx)).items():
                    setattr(ctx, name, service)
            beat.run, beat.started = run, time.time()
            if fn is not None:
                value = await self._run_with_heartbeats(invoke(fn, ctx), inp)
            else:
                limits = RunLimits.of(self.settings, prepared.limits, inp.timeout_seconds)
                value = await self._run_with_heartbeats(self._in_process(code_root, key, inp, ctx, limits), inp)
            if ctx.request is not None:
                value = {
                    "__route_response__": True,
                    "body": value,
                    "status": ctx.response.status,
                    "headers": ctx.response.headers,
                }
            _check_result(value)
            outcome = "COMPLETED"
        except asyncio.CancelledError:
            outcome = "CANCELLED"
            buffer.add(_entry("WARNING", "step cancelled", inp, run))
            raise
        except ApplicationError as exc:
            if early is not None:
                raise  # raised before the step ran (see above)
            error_text = exc.message
            if exc.type == "StepTimeout":
                outcome = "TIMED_OUT"
            buffer.add(_entry("ERROR", f"{exc.type}: {exc.message}", inp, run))
            failures = await self._count_failure(inp)
            uncounted = failures is None
            raise self._budgeted(exc, failures, inp) from None
        except JobError as exc:
            error_text = exc.message
            buffer.add(_entry("ERROR", f"JobError: {exc.message}", inp, run))
            uncounted = await self._count_failure(inp) is None
            raise ApplicationError(exc.message, exc.details, type="JobError", non_retryable=True) from None
        except Cancelled as exc:
            outcome = "CANCELLED"
            raise ApplicationError(str(exc) or "cancelled", type="Cancelled", non_retryable=True) from None
        except Exception as exc:  # noqa: BLE001 - any handler exception fails the attempt (retryable)
            name, trace = (
                (exc.type_name, exc.traceback_text) if isinstance(exc, HandlerFailed) else (type(exc).__name__, None)
            )
            error_text = f"{name}: {exc}"
            buffer.add(_entry("ERROR", error_text, inp, run, exc=exc, trace=trace))
            failures = await self._count_failure(inp)
            uncounted = failures is None
            raise self._budgeted(ApplicationError(error_text, type=name), failures, inp) from None
        finally:
            if early is None:
                metrics.step_ended(module=inp.module, job_type=inp.job_type, outcome=outcome, attempt=run)
                completes = inp.finishes_run and outcome == "COMPLETED"
                # Release the step's services and keep its logs and status whatever happens, even
                # when cancellation is delivered again meanwhile (the cleanup is bounded).
                (finalized, stored, pending), interrupted = await to_completion(
                    self._end_step(
                        inp,
                        run,
                        ctx,
                        outcome,
                        error_text,
                        buffer,
                        _stored(value) if completes else _NOTHING,
                        counted=not uncounted,
                    )
                )
                if stored is not _NOTHING:
                    value = stored
                if interrupted and not finalized:
                    # When the write completed the run, the step's success stands (Temporal accepts
                    # a completion after a cancel request), so the workflow and the row agree.
                    raise asyncio.CancelledError
                failure = sys.exc_info()[1]
                if pending is not None and isinstance(failure, ApplicationError):
                    # The registry took neither the failed run's end nor (maybe) its count: the
                    # next attempt finds both in the last heartbeat, the workflow in the error.
                    beat.ended = dataclasses.asdict(pending)
                    activity.heartbeat(*beat.details())
                    raise _with_end(failure, pending) from None
        if inp.starts_run or inp.finishes_run or pending is not None:
            return step_outcome(value, finalized=finalized, pending=pending)
        return value

    async def _prepare(self, inp: StepInput, info: activity.Info) -> _Prepared | dict[str, Any]:
        """One transaction marks the step RUNNING and reads everything the step needs (the code is
        unpacked after it commits: on SQLite the row lock is the whole database).

        The first step of a run started with its plan also starts the run (RUNNING, or SKIPPED when
        its job or module changed since it was requested), and a last step whose run is already
        COMPLETED (its completion was lost on the way to Temporal) is not run again: both answer
        the workflow's step envelope instead of a :class:`_Prepared`.

        Raises:
            _Spent: The step's attempts are used up (its last one ran past its timeout, or failed,
                and Temporal's retry came anyway); its end is written.
        """
        spent: _Spent | None = None
        async with unit_of_work(self.sessions) as session:
            prepared = await self._prepare_in(session, inp, info)
            if isinstance(prepared, _Spent):
                spent = prepared
        if spent is not None:
            raise spent
        assert not isinstance(prepared, _Spent)
        return prepared

    async def _prepare_in(
        self, session: AsyncSession, inp: StepInput, info: activity.Info
    ) -> _Prepared | dict[str, Any] | _Spent:
        prepared = await self._prepare_common(session, inp, info)
        if prepared is not None:
            return prepared
        # Anything else (a step end handed on, an overrun, a skip, a final row, a spent budget, a
        # module or row gone): the full path, in the same transaction, on the ORM row.
        execution = await session.get(Execution, inp.execution_id, with_for_update=True)
        if execution is not None and inp.pending_end is not None:
            _write_pending(execution, inp.pending_end)
        if execution is None and inp.starts_run:
            # A run started with its plan has a row committed before its workflow started.
            raise JobError(f"execution {inp.execution_id} is not in the registry")
        if execution is not None and ExecutionStatus(execution.status).is_final:
            if inp.finishes_run and execution.status == ExecutionStatus.COMPLETED.value:
                return step_outcome(execution.result, finalized=True)
            if inp.starts_run:
                return step_outcome(None, skipped=execution.status_reason or "already finished")
        job = await session.get(Job, inp.job_id) if inp.job_id else None
        state = await runs.module_state(session, inp.module)
        module = state.module if state is not None else None
        version = await runs.module_version(session, module.id, inp.module_version) if module is not None else None
        definition = runs.job_type_definition(version.manifest, inp.job_type) if version is not None else None
        starting = inp.starts_run and execution is not None and execution.status != ExecutionStatus.RUNNING.value
        if starting:
            assert execution is not None
            reason = runs.skip_reason(inp.job_id, job, inp.module, module)
            if reason is None and version is None:
                reason = f"module {inp.module} {inp.module_version} is no longer registered"
            elif reason is None and definition is None:
                reason = f"job type {inp.job_type} does not exist in {inp.module} {inp.module_version}"
            if reason is not None:
                if runs.finish(session=session, execution=execution, status=ExecutionStatus.SKIPPED, reason=reason):
                    metrics.count_end(session, metrics.run_labels(execution, "SKIPPED"))
                return step_outcome(None, skipped=reason)
        if state is None or version is None:
            raise JobError(f"module {inp.module} {inp.module_version} is no longer registered")
        overran = self._overran(inp, info)
        if overran is not None and execution is not None:
            _end_overrun(execution, inp, overran)
        unwritten = _unwritten_end(inp, info)
        if unwritten is not None and execution is not None:
            # The previous run failed while the registry was down: its end and its count first.
            _write_pending(execution, unwritten)
        failures = _failures(execution, inp)
        if failures >= inp.max_attempts:
            # The handler's own budget is spent; only platform-side retries were left.
            return _spend(execution, inp, failures)
        run = self._mark_running(execution, inp, info.attempt)
        if execution is not None:
            _keep_trace(execution)
        prepared, masked = self._resolve(
            inp,
            job=job,
            module=state,
            version=version,
            definition=definition,
            run_secrets=self._run_secrets(execution),
            trigger=execution.trigger if execution else inp.trigger,
            run=run,
        )
        if starting:
            assert execution is not None
            execution.run_id = info.workflow_run_id
            execution.module_version = inp.module_version
            execution.config = masked
            since = datetime.now(UTC)
            runs.mark_started(session, execution, since)
            metrics.count_start(session, execution, since=since, workflow_id=info.workflow_id or "")
        return prepared

    async def _prepare_common(self, session: AsyncSession, inp: StepInput, info: activity.Info) -> _Prepared | None:
        """The common start of a step, in three statements: one read of the columns it needs
        (the row locked, its job and its module's revision joined), one UPDATE (step RUNNING; the
        run RUNNING for a first step) and, for a first step, the ``job.started`` INSERT. The
        module's manifest and config come from :func:`runs.module_state` (read once per
        revision). ``None`` when the step is not the common case (see :meth:`_prepare_in`); it
        has written nothing then."""
        if inp.pending_end is not None or self._overran(inp, info) is not None or _unwritten_end(inp, info) is not None:
            return None
        params = {"_execution_id": inp.execution_id, "_job_id": inp.job_id, "_module": inp.module}
        row = (await session.execute(_PREPARE_READ, params)).first()
        if row is None or ExecutionStatus(row.status).is_final:
            return None
        job = runs.JobRow.of(row)
        state = await runs.module_state(
            session, inp.module, tuple(row._mapping[f"modrow_{c.key}"] for c in runs.MODULE_KEY_COLUMNS)
        )
        if state is None:
            return None
        starting = inp.starts_run and row.status != ExecutionStatus.RUNNING.value
        if starting and runs.skip_reason(inp.job_id, job, inp.module, state.module) is not None:
            return None
        version = await runs.module_version(session, state.module.id, inp.module_version)
        if version is None:
            return None
        definition = runs.job_type_definition(version.manifest, inp.job_type)
        if starting and definition is None:
            return None
        steps = [dict(s) for s in (row.steps or [])]
        while len(steps) <= inp.step_index:
            steps.append({"name": inp.step, "status": "PENDING", "attempts": 0, "failures": 0})
        step = steps[inp.step_index]
        if int(step.get("failures") or 0) >= inp.max_attempts:
            return None
        # As _mark_running does on the ORM row.
        run = int(step.get("attempts") or 0) + 1
        step.update(status="RUNNING", attempts=run, started_at=datetime.now(UTC).isoformat())
        step.pop("finished_at", None)
        values: dict[str, Any] = {"steps": steps}
        if run > (row.attempt or 0):
            values["attempt"] = run
        trace_id = tracing.current_trace_id()
        if trace_id and not row.trace_id:
            values["trace_id"] = trace_id
        prepared, masked = self._resolve(
            inp,
            job=job,
            module=state,
            version=version,
            definition=definition,
            run_secrets=self._decrypt((row.input or {}).get("secret_override")),
            trigger=row.trigger,
            run=run,
        )
        if not starting:
            await runs.update_execution(session, inp.execution_id, values)
            return prepared
        # As runs.mark_started does on the ORM row.
        since = datetime.now(UTC)
        started = {
            "status": ExecutionStatus.RUNNING.value,
            "started_at": row.started_at or datetime.now(UTC),
            "run_id": info.workflow_run_id,
            "module_version": inp.module_version,
            "config": masked,
        }
        await runs.update_execution(session, inp.execution_id, {**values, **started})
        payload = runs.job_event_payload(
            execution_id=inp.execution_id,
            job_id=row.job_id,
            module=row.module_name,
            job_type=row.job_type,
            trigger=row.trigger,
            status=ExecutionStatus.RUNNING.value,
            reason=row.status_reason,
            error=None,
            duration_ms=None,
        )
        await runs.insert_event(
            session, name="job.started", payload=payload, module_name=row.module_name, execution_id=inp.execution_id
        )
        metrics.count_start(
            session,
            SimpleNamespace(**{**row._mapping, **started, "finished_at": None}),
            since=since,
            workflow_id=info.workflow_id or "",
        )
        return prepared

    def _resolve(
        self,
        inp: StepInput,
        *,
        job: Job | runs.JobRow | None,
        module: runs.ModuleState,
        version: ModuleVersion,
        definition: dict[str, Any] | None,
        run_secrets: dict[str, Any],
        trigger: str,
        run: int,
    ) -> tuple[_Prepared, dict[str, Any]]:
        """What a step's handler gets (config, secrets, module config), and the config as the
        row shows it (secrets masked)."""
        from registry.manifest import secret_parts

        secrets = {**self._job_secrets(job), **run_secrets}
        override = {**(inp.config_override or {}), **run_secrets}
        config, masked = runs.resolve_config(definition or {}, job, override or None, secrets)
        module_config, module_secrets = module.config(self.settings.encryption_key())
        job_schema = (definition or {}).get("config") or {}
        prepared = _Prepared(
            version=version,
            config=config,
            # Only the secret parts of values holding one (a nested password, not its host).
            secrets=secret_parts(job_schema, config) if job_schema else secrets,
            module_config=module_config,
            module_secrets=module_secrets,
            trigger=trigger,
            limits=dict((definition or {}).get("limits") or {}),
            run=run,
        )
        return prepared, masked

    # --- the items of a forEach step ------------------------------------------------------------
    async def _item_prepared(self, inp: StepInput) -> tuple[_Prepared, Path]:
        """What the items of a ``forEach`` step share, read once per worker (and refreshed after
        ``_ITEM_PREPARED_SECONDS``): a step of 200 items does not read the job, module and config
        200 times."""
        key = (inp.execution_id, inp.step_index)
        now = time.monotonic()
        for stale in [k for k, (until, _) in self._items_prepared.items() if until <= now]:
            del self._items_prepared[stale]
        entry = self._items_prepared.get(key)
        if entry is None:
            entry = (now + _ITEM_PREPARED_SECONDS, asyncio.ensure_future(self._prepare_item(inp)))
            self._items_prepared[key] = entry
        reading = entry[1]
        try:
            return await asyncio.shield(reading)
        except BaseException:
            if reading.done() and (reading.cancelled() or reading.exception() is not None):
                # A failed read is not kept: the next item (or attempt) reads again.
                if self._items_prepared.get(key) is entry:
                    del self._items_prepared[key]
            raise

    async def _prepare_item(self, inp: StepInput) -> tuple[_Prepared, Path]:
        """Read what an item's handler gets (no lock, no write: the workflow keeps the step's row)."""
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(Execution.trigger, Execution.input).where(Execution.id == inp.execution_id)
                )
            ).first()
            job = await session.get(Job, inp.job_id) if inp.job_id else None
            state = await runs.module_state(session, inp.module)
            version = await runs.module_version(session, state.module.id, inp.module_version) if state else None
            if state is None or version is None:
                raise JobError(f"module {inp.module} {inp.module_version} is no longer registered")
            definition = runs.job_type_definition(version.manifest, inp.job_type)
            token = ((row.input if row is not None else None) or {}).get("secret_override")
            prepared, _ = self._resolve(
                inp,
                job=job,
                module=state,
                version=version,
                definition=definition,
                run_secrets=self._decrypt(token),
                trigger=row.trigger if row is not None else inp.trigger,
                run=1,
            )
        return prepared, await self._code_root(version, inp)

    async def _run_item(self, inp: StepInput, info: activity.Info, buffer: LogBuffer, beat: _Beat) -> Any:
        """One item of a ``forEach`` step: its handler with ``ctx.item``, under the step's timeout.

        It writes nothing to the registry on its way: it answers its value and its logs (or fails
        carrying its logs), and the workflow writes the step's progress and the items' logs a few
        times per step. A failed run's logs ride on the heartbeat to the item's next attempt (Temporal
        retries the item, up to the step's attempts); a cancelled item writes its own logs."""
        carried = _carried_logs(info.heartbeat_details)
        beat.item_logs = carried
        run = info.attempt
        try:
            prepared, code_root = await self._item_prepared(inp)
        except JobError as exc:
            raise ApplicationError(exc.message, type="JobError", non_retryable=True) from None
        except (SQLAlchemyError, OSError) as exc:
            if carried:
                activity.heartbeat(*beat.details())  # the earlier runs' logs stay for the next attempt
            if not is_unavailable(exc):
                log.exception("preparing item %s of execution %s failed", inp.item_index, inp.execution_id)
                raise ApplicationError(
                    f"the registry refused the step: {type(exc).__name__}: {exc}"[:2000],
                    type="RegistryError",
                    non_retryable=True,
                ) from None
            raise ApplicationError(f"registry unavailable: {type(exc).__name__}", type="PlatformUnavailable") from None
        key = f"{inp.module}@{inp.module_version}#{inp.bundle_sha256 or ''}"
        ctx: JobContext | None = None
        outcome = "FAILED"
        failure: ApplicationError | None = None
        value: Any = None
        try:
            fn: Callable[..., Any] | None = None
            if self.pool is None:
                try:
                    fn = await asyncio.to_thread(load_handler, code_root, inp.handler, key=key)
                except HandlerNotFound as exc:
                    raise ApplicationError(str(exc), type="HandlerNotFound", non_retryable=True) from exc
            ctx = JobContext(
                info=ExecutionInfo(
                    execution_id=inp.execution_id,
                    module=inp.module,
                    job_type=inp.job_type,
                    job_id=inp.job_id,
                    module_version=inp.module_version,
                    step=inp.step,
                    attempt=run,
                    trigger=prepared.trigger,
                    workflow_id=info.workflow_id,
                    run_id=info.workflow_run_id,
                    trace_id=tracing.current_trace_id(),
                    item_index=inp.item_index,
                ),
                config=prepared.config,
                secrets=prepared.module_secrets | prepared.secrets,
                module_config=prepared.module_config,
                runtime=_StepRuntime(self, inp, asyncio.get_running_loop(), beat),
                log_buffer=buffer,
                # The item is the handler's second argument too: the whole list is not sent to
                # every item.
                previous=inp.item,
                item=inp.item,
                event=inp.event,
            )
            if self.services is not None:
                for name, service in (await self.services(inp, ctx)).items():
                    setattr(ctx, name, service)
            beat.run, beat.started = run, time.time()
            if fn is not None:
                value = await self._run_with_heartbeats(invoke(fn, ctx), inp)
            else:
                limits = RunLimits.of(self.settings, prepared.limits, inp.timeout_seconds)
                value = await self._run_with_heartbeats(self._in_process(code_root, key, inp, ctx, limits), inp)
            _check_result(value)
            outcome = "COMPLETED"
        except asyncio.CancelledError:
            outcome = "CANCELLED"
            buffer.add(_entry("WARNING", "item cancelled", inp, run))
            raise
        except ApplicationError as exc:
            failure = exc
            if exc.type == "StepTimeout":
                outcome = "TIMED_OUT"
            buffer.add(_entry("ERROR", f"{exc.type}: {exc.message}", inp, run))
        except JobError as exc:
            buffer.add(_entry("ERROR", f"JobError: {exc.message}", inp, run))
            failure = ApplicationError(exc.message, exc.details, type="JobError", non_retryable=True)
        except Cancelled as exc:
            outcome = "CANCELLED"
            failure = ApplicationError(str(exc) or "cancelled", type="Cancelled", non_retryable=True)
        except Exception as exc:  # noqa: BLE001 - any handler exception fails the item's run (retryable)
            name, trace = (
                (exc.type_name, exc.traceback_text) if isinstance(exc, HandlerFailed) else (type(exc).__name__, None)
            )
            buffer.add(_entry("ERROR", f"{name}: {exc}", inp, run, exc=exc, trace=trace))
            failure = ApplicationError(f"{name}: {exc}", type=name)
        finally:
            metrics.step_ended(module=inp.module, job_type=inp.job_type, outcome=outcome, attempt=run)
            if ctx is not None and self.release is not None:
                try:
                    await to_completion(self.release(inp, ctx))
                except Exception:  # noqa: BLE001 - releasing must never mask the item's outcome
                    log.exception("releasing services of item %s of step %s failed", inp.item_index, inp.step)
            if outcome == "CANCELLED" and failure is None:
                # Cancelled (the run, or a failed sibling): nobody hands these logs on, so write them.
                await to_completion(self._keep_item_logs(inp, _joined(carried, buffer.text())))
        if failure is not None:
            logs = _joined(carried, buffer.text())
            retried = not failure.non_retryable and run < inp.max_attempts
            if retried:
                beat.item_logs = logs
                activity.heartbeat(*beat.details())  # read by the item's next attempt
            raise ApplicationError(
                failure.message,
                *failure.details,
                {ITEM_LOGS_DETAIL: logs},
                type=failure.type,
                non_retryable=failure.non_retryable or not retried,
            ) from None
        return {ITEM_ENVELOPE: 1, "value": value, "logs": _joined(carried, buffer.text())}

    async def _keep_item_logs(self, inp: StepInput, text: str) -> None:
        if not text:
            return
        try:
            async with unit_of_work(self.sessions) as session:
                await runs.update_execution(session, inp.execution_id, {}, logs=text)
        except Exception:  # noqa: BLE001 - the item's cancellation stands
            log.exception("could not keep the logs of cancelled item %s of %s", inp.item_index, inp.execution_id)

    @staticmethod
    def _overran(inp: StepInput, info: activity.Info) -> int | None:
        """The run of the handler that Temporal's start-to-close timeout ended, if the previous
        attempt was one: its heartbeats show it still running past the step's timeout, so the step's
        own clock could not stop it (a handler ignoring cancellation, a stalled worker loop)."""
        details = info.heartbeat_details
        beat = details[0] if details and isinstance(details[0], dict) else None
        if info.attempt < 2 or beat is None or beat.get(_BEAT) != 1 or beat.get("end") is not None:
            return None  # (a run whose end is in the heartbeat ended on its own: ``_unwritten_end``)
        try:
            ran = float(beat["at"]) - float(beat["started"])
            run = int(beat["run"])
        except (KeyError, TypeError, ValueError):
            return None
        return run if ran >= inp.timeout_seconds else None

    async def _in_process(self, code_root: Path, key: str, inp: StepInput, ctx: JobContext, limits: RunLimits) -> Any:
        """Run the step's handler in one of the pool's confined processes."""
        assert self.pool is not None
        try:
            return await self.pool.run(
                code_root=code_root,
                key=key,
                handler=inp.handler,
                ctx=ctx,
                limits=limits,
                http=await _http_spec(ctx, self.settings),
            )
        except HandlerNotLoaded as exc:
            raise ApplicationError(str(exc), type="HandlerNotFound", non_retryable=True) from None
        except LimitExceeded as exc:
            # Deterministic more often than not: retrying would only repeat it.
            raise ApplicationError(str(exc), type="LimitExceeded", non_retryable=True) from None

    async def _run_with_heartbeats(self, call: Awaitable[Any], inp: StepInput) -> Any:
        task = asyncio.ensure_future(call)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=inp.timeout_seconds)
        except TimeoutError:
            self.cancelled[_cancel_key(inp)] = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ApplicationError(
                f"step {inp.step} timed out after {inp.timeout_seconds}s", type="StepTimeout"
            ) from None
        except asyncio.CancelledError:
            self.cancelled[_cancel_key(inp)] = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        finally:
            self.cancelled.pop(_cancel_key(inp), None)

    async def _heartbeats(self, beat: _Beat) -> None:
        """Heartbeat for the whole step (loading code included), so slow preparation is not
        mistaken for a lost worker, and cancellation is delivered while the handler runs.

        Three beats per heartbeat timeout reach the server: the worker lowers the SDK's heartbeat
        throttle (80 % of the timeout by default, which would leave a beat a fifth of the timeout
        to arrive) to :data:`workflows.worker.HEARTBEAT_THROTTLE`."""
        timeout = activity.info().heartbeat_timeout
        # What the workflow asked for (it may come from another process's settings); ours otherwise.
        seconds = timeout.total_seconds() if timeout else self.settings.heartbeat_timeout_seconds
        interval = max(seconds / 3, 0.5)
        while True:
            # Sleep first: a short step never pays a heartbeat round trip to the server.
            await asyncio.sleep(interval)
            activity.heartbeat(*beat.details())

    def _budgeted(self, exc: ApplicationError, failures: int | None, inp: StepInput) -> ApplicationError:
        """Handler failures count against the job's retries; the rest of the Temporal budget is
        kept for infrastructure failures (a worker lost mid-step). A failure not counted yet
        (``None``) is counted by the next attempt before it runs the handler."""
        if exc.non_retryable or failures is None or failures < inp.max_attempts:
            return exc
        return ApplicationError(exc.message, *exc.details, type=exc.type or "AttemptsExhausted", non_retryable=True)

    # --- helpers --------------------------------------------------------------------------------
    async def _code_root(self, version: ModuleVersion, inp: StepInput) -> Path:
        from registry import codestore

        sha = version.bundle_sha256 or ""
        target = codestore.code_folder(self.settings.state_dir, inp.module, inp.module_version, sha)
        if not target.exists():
            # First run of this version on this host: unpack the bundle stored in the registry.
            async with self.sessions() as session:
                data = await session.scalar(select(ModuleVersion.bundle).where(ModuleVersion.id == version.id))
            target = await asyncio.to_thread(
                codestore.materialize, self.settings.state_dir, inp.module, inp.module_version, sha, data
            )
        code_root = (version.manifest.get("python") or {}).get("codeRoot") or version.manifest.get("codeRoot") or "."
        return (target / code_root).resolve()

    def _decrypt(self, token: str | None) -> dict[str, Any]:
        if not token:
            return {}
        from registry.crypto import decrypt_json

        return decrypt_json(self.settings.encryption_key(), token)

    def _job_secrets(self, job: Job | runs.JobRow | None) -> dict[str, Any]:
        return self._decrypt(job.secrets) if job is not None else {}

    def _run_secrets(self, execution: Execution | None) -> dict[str, Any]:
        """Secret values of a per-run override, kept encrypted on the row (never in Temporal history)."""
        token = ((execution.input or {}) if execution is not None else {}).get("secret_override")
        return self._decrypt(token)

    @staticmethod
    def _mark_running(execution: Execution | None, inp: StepInput, attempt: int) -> int:
        """Mark the step RUNNING on the (locked) row; returns the number of this run of its handler
        (``attempts``: runs of the handler, not Temporal's attempts, which also count retries of
        platform-side failures before the handler ran)."""
        if execution is None:
            return attempt
        steps = _steps(execution, inp)
        step = steps[inp.step_index]
        run = int(step.get("attempts") or 0) + 1
        step.update(status="RUNNING", attempts=run, started_at=datetime.now(UTC).isoformat())
        step.pop("finished_at", None)
        execution.steps = steps
        execution.attempt = max(execution.attempt or 0, run)
        return run

    async def _count_failure(self, inp: StepInput) -> int | None:
        """Count a handler failure against the job's attempts; returns the step's failures.

        Retried while the registry is unreachable, until the attempt's deadline; then ``None``: the
        failure is counted with the step's end by whoever writes that end (the step's next attempt,
        from the heartbeat, or the workflow's ``mirror_finish``), never skipped. A row or step that
        is gone, or a write the database refuses, use the attempts up: the handler must not run
        again uncounted."""

        async def count() -> int:
            async with unit_of_work(self.sessions) as session:
                execution = await session.get(Execution, inp.execution_id, with_for_update=True)
                if execution is None:
                    return inp.max_attempts
                steps = [dict(s) for s in (execution.steps or [])]
                if inp.step_index >= len(steps):
                    return inp.max_attempts
                steps[inp.step_index]["failures"] = int(steps[inp.step_index].get("failures", 0)) + 1
                execution.steps = steps
                return int(steps[inp.step_index]["failures"])

        try:
            return await _while_unavailable(count, what=f"counting a failure of execution {inp.execution_id}")
        except Exception as exc:  # noqa: BLE001 - whatever the registry answered, the failure stands
            if is_unavailable(exc):
                log.error("could not count a failure of execution %s: the registry is unavailable", inp.execution_id)
                return None
            log.exception("could not count a failure of execution %s: its attempts end here", inp.execution_id)
            return inp.max_attempts

    async def _end_step(
        self,
        inp: StepInput,
        attempt: int,
        ctx: JobContext | None,
        outcome: str,
        error: str | None,
        buffer: LogBuffer,
        result: Any,
        *,
        counted: bool = True,
    ) -> tuple[bool, Any, StepEnd | None]:
        """A step's cleanup: release its services, then keep its logs and status (and, given the
        last step's ``result``, end the run): see :meth:`_step_finished`. The end of a failure the
        registry could not count is not written here: it is handed on with its count (both or
        neither, so whoever writes it counts it once)."""
        if ctx is not None and self.release is not None:
            try:
                await self.release(inp, ctx)
            except Exception:  # noqa: BLE001 - releasing must never mask the step's outcome
                log.exception("releasing services of step %s failed", inp.step)
        if not counted:
            end = StepEnd(step_index=inp.step_index, status=outcome, attempt=attempt, error=error, logs=buffer.text())
            return False, _NOTHING, dataclasses.replace(end, count_failure=True)
        return await self._step_finished(inp, attempt, outcome, error, buffer, result)

    async def _step_finished(
        self,
        inp: StepInput,
        attempt: int,
        outcome: str,
        error: str | None,
        buffer: LogBuffer,
        result: Any = _NOTHING,
    ) -> tuple[bool, Any, StepEnd | None]:
        """Keep the step's logs and status whatever happened (success, failure, timeout, cancel);
        given the ``result`` of a run's last step, also end the run COMPLETED in the same
        transaction. Returns whether the run's row is final, the result an earlier attempt
        stored when that attempt had already completed the run (``_NOTHING`` otherwise), and the
        step's end when it could not be written (the workflow hands it to the run's next write).

        Only the step's latest attempt ends the run (an attempt Temporal gave up on, still running
        somewhere, must not); a run already COMPLETED answers its stored result. Reads only the
        columns it needs and appends the logs in SQL (the stored logs are never read back). While
        the registry is unreachable the write is retried until the attempt's deadline; a value the
        database refuses is dropped and the write tried again without it (it must not cost the step
        its logs)."""
        text = buffer.text()  # JSON lines: control characters are escaped
        value = result
        while True:
            try:
                finalized, stored = await _while_unavailable(
                    functools.partial(self._write_step_end, inp, attempt, outcome, error, text, value),
                    what=f"writing the end of step {inp.step} of execution {inp.execution_id}",
                )
                return finalized, stored, None
            except Exception as exc:  # noqa: BLE001 - never hide the step's own outcome behind a mirror error
                if not is_unavailable(exc) and value is not _NOTHING:
                    log.warning("result of execution %s refused (%s): step ended without it", inp.execution_id, exc)
                    value = _NOTHING
                    continue
                log.exception(
                    "could not write the end of step %s of execution %s: handed to the workflow",
                    inp.step,
                    inp.execution_id,
                )
                return (
                    False,
                    _NOTHING,
                    StepEnd(step_index=inp.step_index, status=outcome, attempt=attempt, error=error, logs=text),
                )

    async def _write_step_end(
        self, inp: StepInput, attempt: int, outcome: str, error: str | None, text: str, result: Any
    ) -> tuple[bool, Any]:
        completes = result is not _NOTHING
        async with unit_of_work(self.sessions) as session:
            row = (await session.execute(_END_READS[completes], {"_execution_id": inp.execution_id})).first()
            if row is None:
                return False, _NOTHING
            values: dict[str, Any] = {}
            steps = [dict(s) for s in (row.steps or [])]
            # False for an attempt Temporal gave up on while a later one has started the step.
            latest = inp.step_index >= len(steps) or int(steps[inp.step_index].get("attempts") or 0) <= attempt
            if latest and inp.step_index < len(steps):
                steps[inp.step_index].update(
                    status=outcome, finished_at=datetime.now(UTC).isoformat(), attempts=attempt
                )
                if error:
                    steps[inp.step_index]["error"] = error[:2000]
                values["steps"] = steps
            if completes and ExecutionStatus(row.status) == ExecutionStatus.COMPLETED:
                # Ended by an earlier attempt whose completion Temporal never got: its result stands.
                stored = await session.scalar(select(Execution.result).where(Execution.id == inp.execution_id))
                await runs.update_execution(session, inp.execution_id, values, logs=text)
                return True, stored
            ending = completes and latest and not ExecutionStatus(row.status).is_final
            if ending:
                finish = runs.final_values(
                    execution_id=inp.execution_id, row=row, status=ExecutionStatus.COMPLETED, result=result
                )
                ended = {**values, **finish.values}
                if await runs.update_execution(session, inp.execution_id, ended, unless_final=True, logs=text):
                    await finish.record(session, inp.execution_id)
                    metrics.count_end(session, finish.payload)
                    return True, _NOTHING
            await runs.update_execution(session, inp.execution_id, values, logs=text)
            return False, _NOTHING

    async def emit(self, inp: StepInput, name: str, payload: dict[str, Any], *, sequence: int | None = None) -> str:
        """Store an event the step emits. The ``sequence``-th event named ``name`` of a step has an id
        derived from the execution, the step, the name and ``sequence`` (not the attempt, not the
        payload), so a retried step that emits it again stores nothing new: it is the one its
        earlier attempt stored. An event of another name is a new event."""
        from registry.services.events import check_payload, validate_name

        validate_name(name)
        # The same checks as POST /events: a module cannot store what the API would refuse.
        check_payload(payload, max_bytes=self.settings.event_payload_max_bytes)
        event_id = (
            emit_id(inp.execution_id, inp.step_index, name, sequence, item_index=inp.item_index)
            if sequence is not None
            else None
        )
        async with unit_of_work(self.sessions) as session:
            event, _ = await events.record_once(
                session=session,
                name=name,
                payload=payload,
                source=inp.module,
                module_name=inp.module,
                execution_id=inp.execution_id,
                event_id=event_id,
            )
            return event.id


_X = runs.EXECUTIONS.c
#: The common start of a step (:meth:`JobActivities._prepare_common`) reads the run's row (never
#: its logs, result or config), locked, with its job and its module's revision.
_PREPARE_READ = (
    select(
        _X.status,
        _X.status_reason,
        _X.steps,
        _X.attempt,
        _X.trigger,
        _X.input,
        _X.trace_id,
        _X.job_id,
        _X.module_name,
        _X.job_type,
        _X.created_at,
        _X.started_at,
        _X.nominal_at,
        *runs.JobRow.columns(),
        *(c.label(f"modrow_{c.key}") for c in runs.MODULE_KEY_COLUMNS),
    )
    .select_from(runs.EXECUTIONS)
    .outerjoin(Job.__table__, Job.__table__.c.id == bindparam("_job_id"))
    .outerjoin(Module.__table__, Module.__table__.c.name == bindparam("_module"))
    .where(_X.id == bindparam("_execution_id"))
    .with_for_update(of=runs.EXECUTIONS)
)
#: What a step's end reads of the run's row, locked: its steps, and what ending the run needs.
_END_READS = {
    completes: select(_X.steps, *(_X[c.key] for c in runs.FINISH_COLUMNS if completes))
    .where(_X.id == bindparam("_execution_id"))
    .with_for_update()
    for completes in (False, True)
}

#: Namespace of the ids of events that steps emit (``emit_id``).
_EMIT_NAMESPACE = uuid.UUID("3f5b1c2e-8a4d-5e6f-9b7a-0c1d2e3f4a5b")


def _keep_trace(execution: Execution) -> None:
    """The run's trace id on its row (tracing on; the first writer wins: a retried step's trace is
    the run's, already)."""
    trace_id = tracing.current_trace_id()
    if trace_id and not execution.trace_id:
        execution.trace_id = trace_id


async def _count_finish(session: AsyncSession, execution_id: str) -> None:
    """Run metrics of a run :meth:`JobActivities.mirror_finish` ended (failures, cancels: the rarer
    path, so one more read of four columns)."""
    row = (
        await session.execute(
            select(
                Execution.module_name, Execution.job_type, Execution.trigger, Execution.status, Execution.duration_ms
            ).where(Execution.id == execution_id)
        )
    ).first()
    if row is not None:
        metrics.count_end(session, dict(row._mapping, module=row.module_name))


def emit_id(execution_id: str, step_index: int, name: str, sequence: int, *, item_index: int | None = None) -> str:
    """The id of a step's ``sequence``-th emitted event named ``name``: the same in every attempt
    of the step (of the item, in a ``forEach`` step). The payload is left out on purpose: a retry's
    payload often differs (a timestamp, the attempt) and is still the same event; the first one
    stored stands."""
    step = str(step_index) if item_index is None else f"{step_index}.{item_index}"
    return str(uuid.uuid5(_EMIT_NAMESPACE, f"{execution_id}:{step}:{name}:{sequence}"))


def _cancel_key(inp: StepInput) -> str:
    """Which handler a cancellation stops: the step's, or one item's (items of one step run side
    by side on a worker)."""
    return inp.execution_id if inp.item_index is None else f"{inp.execution_id}#{inp.step_index}.{inp.item_index}"


def _write_deadline() -> float:
    """When this attempt must have answered Temporal (its start-to-close timeout), less a margin."""
    if not activity.in_activity():
        return time.time() + 30.0
    info = activity.info()
    timeout = info.start_to_close_timeout
    if timeout is None:
        return time.time() + 30.0
    return info.started_time.timestamp() + timeout.total_seconds() - 2.0


async def _while_unavailable(write: Callable[[], Awaitable[T]], *, what: str) -> T:
    """``write()``, tried again with backoff while the registry is unreachable, until the attempt's
    deadline (a write that cannot happen in time raises the last error)."""
    deadline = _write_deadline()
    delay = 0.2
    warned = False
    while True:
        try:
            return await write()
        except Exception as exc:
            if not is_unavailable(exc) or time.time() + delay >= deadline:
                raise
            if not warned:
                log.warning("registry unavailable while %s (%s): retrying", what, type(exc).__name__)
                warned = True
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def _steps(execution: Execution, inp: StepInput) -> list[dict[str, Any]]:
    """A copy of the row's steps, long enough to hold ``inp``'s."""
    steps = [dict(s) for s in (execution.steps or [])]
    while len(steps) <= inp.step_index:
        steps.append({"name": inp.step, "status": "PENDING", "attempts": 0, "failures": 0})
    return steps


def _failures(execution: Execution | None, inp: StepInput) -> int:
    if execution is None or inp.step_index >= len(execution.steps or []):
        return 0
    return int((execution.steps or [])[inp.step_index].get("failures") or 0)


def _append_logs(execution: Execution, text: str) -> None:
    if text:
        execution.logs = f"{execution.logs}\n{text}" if execution.logs else text


def _end_overrun(execution: Execution, inp: StepInput, run: int) -> None:
    """Record that run ``run`` of the step was ended by Temporal's timeout (it ran past its own):
    a failure of the step, TIMED_OUT, once."""
    steps = _steps(execution, inp)
    step = steps[inp.step_index]
    if step.get("status") != "RUNNING" or int(step.get("attempts") or 0) != run:
        return  # already recorded, or another run's end
    message = f"step {inp.step} timed out after {inp.timeout_seconds}s (it did not stop; Temporal ended it)"
    step.update(
        status="TIMED_OUT",
        finished_at=datetime.now(UTC).isoformat(),
        error=message,
        failures=int(step.get("failures") or 0) + 1,
        last_failure="StepTimeout",
    )
    execution.steps = steps
    entry = _entry("ERROR", f"StepTimeout: {message}", inp, run)
    _append_logs(execution, json.dumps(entry, default=str))


def _spend(execution: Execution | None, inp: StepInput, failures: int) -> _Spent:
    """The step's attempts are used up: its row says how it last ended (a run whose end was never
    written ended FAILED), and the workflow gets that outcome, non-retryable."""
    timed_out = False
    if execution is not None:
        steps = _steps(execution, inp)
        step = steps[inp.step_index]
        if step.get("status") not in ("FAILED", "TIMED_OUT"):
            step.update(status="FAILED", finished_at=datetime.now(UTC).isoformat())
            execution.steps = steps
        timed_out = step.get("status") == "TIMED_OUT"
        message = str(step.get("error") or f"step {inp.step} already failed {failures} time(s)")
    else:
        message = f"step {inp.step} already failed {failures} time(s)"
    kind = "StepTimeout" if timed_out else "AttemptsExhausted"
    return _Spent(ApplicationError(message, type=kind, non_retryable=True))


def _write_pending(execution: Execution, end: StepEnd) -> None:
    """Write the end of a run of a step that its own activity could not write (its status, logs
    and, when the registry could not count it either, its failure): only while the step is still
    RUNNING that run. A :class:`StepEnd` handed on more than once (every Temporal attempt of the
    next step, then ``mirror_finish``) is written once."""
    steps = [dict(s) for s in (execution.steps or [])]
    if end.step_index >= len(steps):
        return
    step = steps[end.step_index]
    if step.get("status") != "RUNNING" or int(step.get("attempts") or 0) != end.attempt:
        return  # written already, or the step has moved on to another run
    step.update(status=end.status, finished_at=datetime.now(UTC).isoformat())
    if end.error:
        step["error"] = end.error[:2000]
    if end.count_failure:
        step["failures"] = int(step.get("failures") or 0) + 1
    execution.steps = steps
    _append_logs(execution, end.logs)


def _carried_logs(details: Sequence[Any]) -> str:
    """The logs of an item's earlier failed runs, from the last heartbeat of its previous attempt."""
    beat = _platform_beat(details)
    logs = beat[0].get("logs") if beat else None
    return logs if isinstance(logs, str) else ""


def _joined(*texts: str) -> str:
    return "\n".join(t for t in texts if t)


def _platform_beat(details: Sequence[Any]) -> list[Any]:
    """The platform's own detail of a heartbeat (see :class:`_Beat`), if the heartbeat has one."""
    return [details[0]] if details and isinstance(details[0], dict) and details[0].get(_BEAT) == 1 else []


def _unwritten_end(inp: StepInput, info: activity.Info) -> StepEnd | None:
    """The end of the previous attempt's run that the registry could not take (``_Beat.ended``)."""
    beat = _platform_beat(info.heartbeat_details)
    end = beat[0].get("end") if beat and info.attempt >= 2 else None
    if not isinstance(end, dict):
        return None
    try:
        unwritten = StepEnd(**end)
    except TypeError:
        return None
    return unwritten if unwritten.step_index == inp.step_index else None


def _with_end(error: ApplicationError, end: StepEnd) -> ApplicationError:
    """``error`` carrying the step's unwritten ``end`` as its last detail, for the workflow to hand
    on (``activities.types.failed_step_end``)."""
    return ApplicationError(
        error.message,
        *error.details,
        end_detail(end),
        type=error.type,
        non_retryable=error.non_retryable,
        next_retry_delay=error.next_retry_delay,
    )


#: Largest result Temporal accepts (its default blob size limit).
_MAX_RESULT = 2 * 1024 * 1024


def _check_result(value: Any) -> None:
    """Refuse, once and for good, a step value that Temporal cannot carry: it would fail the same
    way on every attempt, after the handler's work was done."""
    try:
        payload = activity.payload_converter().to_payloads([value])[0]
    except Exception as exc:  # noqa: BLE001 - the converter's refusal, whatever its type
        raise ApplicationError(
            f"the step's result cannot be stored: {exc}", type="ResultNotSerializable", non_retryable=True
        ) from None
    if len(payload.data) > _MAX_RESULT:
        raise ApplicationError(
            f"the step's result is {len(payload.data)} bytes as JSON; the limit is {_MAX_RESULT}",
            type="ResultTooLarge",
            non_retryable=True,
        )


#: A result larger than this (JSON) is not written by the step: the workflow's ``mirror_finish``
#: writes it, after Temporal has accepted it (the server refuses payloads over 2 MB by default).
_MAX_STORED_RESULT = 512 * 1024


def _stored(value: Any) -> Any:
    """The step's value as the mirror stores it: through Temporal's payload converter, as the
    workflow would see it (dataclasses become objects, and so on); ``_NOTHING`` when it is too large
    or cannot be converted, so the run is ended by the workflow instead."""
    try:
        converter = activity.payload_converter()
        payload = converter.to_payloads([value])[0]
        if len(payload.data) > _MAX_STORED_RESULT:
            return _NOTHING
        return converter.from_payloads([payload])[0]
    except Exception:  # noqa: BLE001 - Temporal reports a value it cannot convert; the mirror is not the place
        return _NOTHING


async def _http_spec(ctx: JobContext, settings: Settings) -> dict[str, Any] | None:
    """What a handler process needs to build its own ``ctx.http`` like the step's (hosts, limits,
    address policy, values to mask); ``None`` when the worker provides no HTTP service."""
    from autoplat.http import HostNotAllowed, HttpClient

    client = ctx.http
    if not isinstance(client, HttpClient):
        return None
    spec: dict[str, Any] = {
        "allow_private": settings.http_allow_private,
        "timeout": client.timeout,
        "retries": client.retries,
        "max_backoff": client.max_backoff,
        "max_response_bytes": client.max_response_bytes,
        "max_download_bytes": client.max_download_bytes,
        "secrets": client.masked_values,
    }
    parent = tracing.traceparent()  # None unless AUTOPLAT_TRACING=on
    if parent is not None:
        spec["traceparent"] = parent
    try:
        spec["hosts"] = await client.allowed_hosts()
    except HostNotAllowed as exc:
        spec["refusal"] = exc.message
    return spec


def _entry(
    level: str,
    message: str,
    inp: StepInput,
    attempt: int,
    exc: BaseException | None = None,
    trace: str | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "message": message,
        "step": inp.step,
        "attempt": attempt,
        "source": "platform",
    }
    if inp.item_index is not None:
        entry["item"] = inp.item_index
    if trace is not None:
        entry["exception"] = trace[-8000:]
    elif exc is not None:
        import traceback

        entry["exception"] = "".join(traceback.format_exception(exc, limit=20))[-8000:]
    return entry
