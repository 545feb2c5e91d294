"""The one dynamic workflow serving every ``<module>.<job-type>`` workflow type.

Deterministic and small: resolve the run (a local activity, unless the run was started with its
plan), run each step as its own activity (Temporal does timeouts, retries and cancellation), write
the end of the mirror (the last step on success, a local activity otherwise), send the job's
notifications once after the final attempt.

A ``forEach`` step fans out: one activity per item of the previous step's list, at most
``concurrency`` at once, each with the step's timeout and attempts. Its items write nothing to the
registry themselves; the workflow writes the step's progress and the items' logs a few times per
step (``MIRROR_ITEMS``), so a step of many items costs a handful of writes, not several per item.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.types import (
        ITEM_ENVELOPE,
        ITEM_LOGS_DETAIL,
        MIRROR_FINISH,
        MIRROR_ITEMS,
        MIRROR_START,
        NON_RETRYABLE,
        NOTIFY,
        STEP_GRACE_SECONDS,
        FinishInput,
        ItemsInput,
        JobInput,
        NotifyInput,
        RunPlan,
        StartInput,
        StepEnd,
        StepInput,
        StepPlan,
        failed_step_end,
        is_end_detail,
        item_logs,
        open_step_outcome,
        pending_end,
    )
    from autoplat._sync import to_completion
    from autoplat.context import TRUNCATION_MARKER

_LOCAL_TIMEOUT = timedelta(seconds=30)
# Mirror writes retry while the registry is unreachable, for as long as the run's timeout allows
# (``_until_deadline``); a write that still fails then fails the run (the sweeper records it). A
# write the database refuses fails at once (``RegistryError``, non-retryable): it would only repeat.
_LOCAL_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5))
#: Kept back from the run's deadline for the writes that end the run.
_END_RESERVE = timedelta(seconds=30)
#: The bound of platform-side retries of a run started without a timeout.
_UNBOUNDED_RUN_RETRIES = timedelta(minutes=30)
#: A ``forEach`` step writes its progress (item counts, the ended items' logs) once this many items
#: ended since its last write, or once this long passed with at least one ended.
_ITEMS_PER_WRITE = 50
_ITEMS_WRITE_EVERY = timedelta(seconds=5)


def classify(exc: BaseException) -> str:
    """Map a step failure onto the execution status."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, CancelledError | asyncio.CancelledError):
            return "CANCELLED"
        if isinstance(cause, TimeoutError):
            return "TIMED_OUT"
        if isinstance(cause, ApplicationError):
            if cause.type == "StepTimeout":
                return "TIMED_OUT"
            if cause.type == "Cancelled":
                return "CANCELLED"
        cause = cause.__cause__
    return "FAILED"


def _deadline() -> datetime:
    """When the run's own timeout ends it (a run started without one gets a generous bound)."""
    info = workflow.info()
    if info.execution_timeout:
        return info.workflow_start_time + info.execution_timeout
    if info.run_timeout:
        return info.start_time + info.run_timeout
    return info.start_time + _UNBOUNDED_RUN_RETRIES


def _until_deadline(at_least: timedelta, *, reserve: timedelta = _END_RESERVE) -> timedelta:
    """What is left of the run's time, less ``reserve`` (for the writes that end it), and never
    below ``at_least``."""
    return max(_deadline() - workflow.now() - reserve, at_least)


def _error(exc: BaseException) -> dict[str, Any]:
    cause: BaseException = exc
    while isinstance(cause, ActivityError) and cause.__cause__ is not None:
        cause = cause.__cause__
    error: dict[str, Any] = {"message": str(getattr(cause, "message", None) or cause) or type(cause).__name__}
    if isinstance(cause, ApplicationError):
        error["type"] = cause.type
        # Without the step's unwritten end (its logs), which ``mirror_finish`` writes where it belongs,
        # nor an item's logs, which the fan-out keeps with the run's logs.
        details = [d for d in cause.details if not is_end_detail(d) and not _is_item_logs(d)]
        if details:
            error["details"] = details
    elif isinstance(cause, TimeoutError):
        error["type"] = f"Timeout.{cause.type.name if cause.type else 'UNKNOWN'}"
    else:
        error["type"] = type(cause).__name__
    return error


def _is_item_logs(detail: Any) -> bool:
    return isinstance(detail, dict) and ITEM_LOGS_DETAIL in detail


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _Items:
    """A ``forEach`` step's progress as the workflow keeps it between writes."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.completed = 0
        self.failed = 0
        self.ended_since_write = 0
        self.logs: list[str] = []
        self.written_at = workflow.now()
        #: What is left of the step's log budget (``MIRROR_ITEMS`` answers it on the first write).
        self.room = 0
        self.truncated = False
        self.done = False

    def ended(self, logs: str, *, ok: bool) -> None:
        if ok:
            self.completed += 1
        else:
            self.failed += 1
        self.ended_since_write += 1
        self.keep(logs)

    def keep(self, logs: str) -> None:
        if not logs or self.truncated:
            return
        if len(logs) + 1 > self.room:
            self.truncated = True
            logs = json.dumps({"ts": workflow.now().isoformat(), "level": "WARNING", "message": TRUNCATION_MARKER})
        self.room -= len(logs) + 1
        self.logs.append(logs)

    def due(self) -> bool:
        return self.done or (
            self.ended_since_write > 0
            and (self.ended_since_write >= _ITEMS_PER_WRITE or workflow.now() - self.written_at >= _ITEMS_WRITE_EVERY)
        )

    def take_logs(self) -> str:
        text, self.logs = "\n".join(self.logs), []
        self.ended_since_write = 0
        self.written_at = workflow.now()
        return text


def _step_value(result: Any) -> Any:
    """What the next step receives: a route call's step result is wrapped with the response status
    and headers (``__route_response__``); the next step gets the handler's own return value."""
    if isinstance(result, dict) and result.get("__route_response__") is True:
        return result.get("body")
    return result


def _step_input(plan: RunPlan, job: JobInput, index: int, step: StepPlan, **extra: Any) -> StepInput:
    """The activity input of step ``index`` (or of one of its items): what every step shares, and
    ``extra`` (the previous value, the request, the item, the run's first / last step flags)."""
    return StepInput(
        execution_id=plan.execution_id,
        job_id=job.job_id,
        module=plan.module,
        module_version=plan.module_version,
        bundle_sha256=plan.bundle_sha256,
        job_type=plan.job_type,
        step=step.name,
        step_index=index,
        handler=step.handler,
        max_attempts=step.max_attempts,
        timeout_seconds=step.timeout_seconds,
        trigger=job.trigger,
        event=job.event,
        config_override=job.config_override,
        **extra,
    )


def _retry_policy(plan: RunPlan, *, maximum_attempts: int) -> RetryPolicy:
    """The run's backoff; ``maximum_attempts`` 0 (unbounded, a step counting its own attempts) or
    the step's attempts (a forEach item)."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=plan.retry_initial_seconds),
        backoff_coefficient=plan.retry_backoff,
        maximum_interval=(
            timedelta(seconds=plan.retry_max_interval_seconds) if plan.retry_max_interval_seconds else None
        ),
        maximum_attempts=maximum_attempts,
        non_retryable_error_types=NON_RETRYABLE,
    )


@workflow.defn(dynamic=True, sandboxed=False)
class JobWorkflow:
    @workflow.run
    async def run(self, args: Sequence[RawValue]) -> Any:
        info = workflow.info()
        job = workflow.payload_converter().from_payload(args[0].payload, JobInput) if args else JobInput()
        plan: RunPlan
        cancelled_at_start = False
        if job.plan is not None:
            plan = job.plan
        else:
            plan, cancelled_at_start = await to_completion(
                workflow.execute_local_activity(
                    MIRROR_START,
                    StartInput(
                        workflow_id=info.workflow_id,
                        run_id=info.run_id,
                        workflow_type=info.workflow_type,
                        job=job,
                        attempt=info.attempt,
                    ),
                    result_type=RunPlan,
                    start_to_close_timeout=_LOCAL_TIMEOUT,
                    schedule_to_close_timeout=_until_deadline(_LOCAL_TIMEOUT),
                    retry_policy=_LOCAL_RETRY,
                )
            )
            if plan.skip_reason is not None:
                return {"execution_id": plan.execution_id, "status": "SKIPPED", "reason": plan.skip_reason}

        previous: Any = None
        #: A step's end its activity could not write, handed to the next write of the run.
        unwritten: StepEnd | None = None
        finalized = False
        status, error, result = "COMPLETED", None, None
        failure: BaseException | None = None
        try:
            if cancelled_at_start:
                raise asyncio.CancelledError  # recorded below as CANCELLED, before any step
            for index, step in enumerate(plan.steps):
                if step.for_each is not None and index > 0:
                    previous = await self._fan_out(plan, job, index, step, _step_value(previous), unwritten)
                    unwritten = None
                    continue
                attempt_timeout = timedelta(seconds=step.timeout_seconds + STEP_GRACE_SECONDS)
                starts_run = job.plan is not None and index == 0
                finishes_run = index == len(plan.steps) - 1
                outcome = await workflow.execute_activity(
                    step.activity,
                    _step_input(
                        plan,
                        job,
                        index,
                        step,
                        previous=_step_value(previous),
                        request=job.request,
                        starts_run=starts_run,
                        finishes_run=finishes_run,
                        pending_end=unwritten,
                    ),
                    start_to_close_timeout=attempt_timeout,
                    # The job's attempts are counted by the step itself (handler failures only);
                    # platform-side failures (the registry unreachable, a worker lost) retry with
                    # backoff for as long as the run's own timeout allows.
                    schedule_to_close_timeout=_until_deadline(attempt_timeout),
                    heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_seconds),
                    retry_policy=_retry_policy(plan, maximum_attempts=0),
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
                # Steps that start or finish the run answer an envelope, and so does a step whose
                # end could not be written; the others their value.
                unwritten = pending_end(outcome)
                previous, finalized, skipped = open_step_outcome(outcome)
                if skipped is not None:
                    # The first step found the job or module changed since the run was requested
                    # and recorded the run as SKIPPED.
                    return {"execution_id": plan.execution_id, "status": "SKIPPED", "reason": skipped}
            result = previous
        except (ActivityError, ApplicationError, CancelledError, asyncio.CancelledError) as exc:
            status, error, failure = classify(exc), _error(exc), exc
            finalized = False
            # A failed step whose end (status, logs) the registry could not take hands it on here;
            # it had written the previous step's end before running its handler.
            unwritten = failed_step_end(exc) or unwritten
            if status == "CANCELLED":
                error = {"message": "cancelled", "type": "Cancelled"}

        if not finalized:
            # The last step writes the COMPLETED row itself; every other ending is written here.
            ended, _ = await to_completion(
                workflow.execute_local_activity(
                    MIRROR_FINISH,
                    FinishInput(
                        execution_id=plan.execution_id, status=status, result=result, error=error, step_end=unwritten
                    ),
                    start_to_close_timeout=_LOCAL_TIMEOUT,
                    schedule_to_close_timeout=_until_deadline(_END_RESERVE, reserve=timedelta(0)),
                    retry_policy=_LOCAL_RETRY,
                )
            )
            if isinstance(ended, dict) and ended.get("status") == "COMPLETED":
                # The last step had completed the run before its completion was lost (a worker
                # died after the commit): the handler's work is done and the row says so.
                status, error, failure, result = "COMPLETED", None, None, ended.get("result")
        await self._notify(plan, status, error)
        if status == "CANCELLED":
            raise CancelledError("execution cancelled")
        if failure is not None:
            raise ApplicationError(
                (error or {}).get("message", status),
                {"status": status, "execution_id": plan.execution_id},
                type=status,
                non_retryable=True,
            )
        return {"execution_id": plan.execution_id, "status": status, "result": result}

    async def _fan_out(
        self, plan: RunPlan, job: JobInput, index: int, step: StepPlan, items: Any, unwritten: StepEnd | None
    ) -> list[Any]:
        """Run a ``forEach`` step: its handler once per item of ``items``, as one activity each, at
        most ``concurrency`` at once; answers the values in item order (``{"ok", "value"}`` /
        ``{"ok", "error"}`` envelopes with ``continueOnItemError``).

        Raises:
            ApplicationError: ``items`` is not a list or has too many items (non-retryable), or an
                item used up its attempts (without ``continueOnItemError``): the item's error, its
                index named, once the items still running are cancelled.
            asyncio.CancelledError: The run was cancelled (the items running are cancelled first).
        """
        spec = step.for_each or {}
        concurrency = int(spec.get("concurrency") or 10)
        max_items = int(spec.get("maxItems") or 1000)
        keep_going = bool(spec.get("continueOnItemError"))
        problem: ApplicationError | None = None
        if not isinstance(items, list):
            problem = ApplicationError(
                f"step {step.name} runs once per item of a list, and the previous step returned {_json_kind(items)}",
                type="ForEachNotAList",
                non_retryable=True,
            )
        elif len(items) > max_items:
            problem = ApplicationError(
                f"step {step.name} got {len(items)} items, over its forEach.maxItems of {max_items}",
                type="ForEachTooManyItems",
                non_retryable=True,
            )
        total = len(items) if isinstance(items, list) else 0
        progress = _Items(total)
        progress.room = await self._write_items(
            plan,
            index,
            step,
            progress,
            status="FAILED" if problem else "RUNNING",
            starts=True,
            error=problem.message if problem else None,
            pending=unwritten,
        )
        if problem is not None:
            raise problem
        assert isinstance(items, list)

        attempt_timeout = timedelta(seconds=step.timeout_seconds + STEP_GRACE_SECONDS)
        slots = asyncio.Semaphore(concurrency)
        results: list[Any] = [None] * total
        failures: list[tuple[int, ActivityError]] = []

        async def run_item(i: int) -> None:
            async with slots:
                if failures and not keep_going:
                    return  # the step has failed: start no more items
                try:
                    outcome = await workflow.execute_activity(
                        step.activity,
                        _step_input(plan, job, index, step, item_index=i, item=items[i]),
                        start_to_close_timeout=attempt_timeout,
                        schedule_to_close_timeout=_until_deadline(attempt_timeout),
                        heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_seconds),
                        # Each item retries on its own, up to the step's attempts.
                        retry_policy=_retry_policy(plan, maximum_attempts=step.max_attempts),
                        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    )
                except ActivityError as exc:
                    if classify(exc) == "CANCELLED":
                        raise asyncio.CancelledError from exc  # a cancelled item wrote its own logs
                    progress.ended(item_logs(exc), ok=False)
                    if keep_going:
                        error = _error(exc)
                        results[i] = {"ok": False, "error": {"message": error["message"], "type": error.get("type")}}
                    else:
                        failures.append((i, exc))
                        for other in tasks:
                            if other is not asyncio.current_task():
                                other.cancel()
                    return
                envelope = outcome if isinstance(outcome, dict) and outcome.get(ITEM_ENVELOPE) == 1 else {}
                progress.ended(str(envelope.get("logs") or ""), ok=True)
                value = envelope.get("value")
                results[i] = {"ok": True, "value": value} if keep_going else value

        async def write_progress() -> None:
            while True:
                await workflow.wait_condition(progress.due)
                if progress.done:
                    return
                await self._write_items(plan, index, step, progress, status="RUNNING")

        writer = asyncio.create_task(write_progress())
        tasks = [asyncio.create_task(run_item(i)) for i in range(total)]
        cancelled = False
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            cancelled = True  # the run is cancelled: so are its items (and their activities)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        progress.done = True
        await writer
        if cancelled:
            await self._write_items(plan, index, step, progress, status="CANCELLED", error="cancelled")
            raise asyncio.CancelledError
        if failures:
            i, exc = failures[0]
            error = _error(exc)
            status = classify(exc)
            failure = ApplicationError(
                f"item {i} of step {step.name} failed: {error['message']}",
                *error.get("details", []),
                type=error.get("type"),
                non_retryable=True,
            )
            await self._write_items(plan, index, step, progress, status=status, error=failure.message)
            raise failure
        await self._write_items(plan, index, step, progress, status="COMPLETED")
        return results

    async def _write_items(
        self,
        plan: RunPlan,
        index: int,
        step: StepPlan,
        progress: _Items,
        *,
        status: str,
        starts: bool = False,
        error: str | None = None,
        pending: StepEnd | None = None,
    ) -> int:
        room, _ = await to_completion(
            workflow.execute_local_activity(
                MIRROR_ITEMS,
                ItemsInput(
                    execution_id=plan.execution_id,
                    step_index=index,
                    step=step.name,
                    status=status,
                    total=progress.total,
                    completed=progress.completed,
                    failed=progress.failed,
                    logs=progress.take_logs(),
                    error=error,
                    starts=starts,
                    pending_end=pending,
                ),
                result_type=int,
                start_to_close_timeout=_LOCAL_TIMEOUT,
                schedule_to_close_timeout=_until_deadline(_LOCAL_TIMEOUT),
                retry_policy=_LOCAL_RETRY,
            )
        )
        return int(room)

    async def _notify(self, plan: RunPlan, status: str, error: dict[str, Any] | None) -> None:
        """Send the job's declared notifications once, after the final attempt."""
        key = {"COMPLETED": "onSuccess", "FAILED": "onFailure", "TIMED_OUT": "onTimeout"}.get(status)
        channels = plan.notifications.get(key or "", []) if key else []
        for channel in channels:
            subject = f"[autoplat] {plan.module}.{plan.job_type} {status}"
            body = f"Execution {plan.execution_id} of {plan.module}.{plan.job_type} ended {status}."
            if error:
                body += f"\nError: {error.get('message')}"
            try:
                await workflow.execute_activity(
                    NOTIFY,
                    NotifyInput(
                        channel=channel,
                        subject=subject,
                        body=body,
                        module=plan.module,
                        data={"execution_id": plan.execution_id, "status": status, "error": error},
                    ),
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=30)),
                )
            except ActivityError:
                workflow.logger.warning("notification to %s failed for %s", channel, plan.execution_id)
