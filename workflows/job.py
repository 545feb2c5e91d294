"""The one dynamic workflow serving every ``<module>.<job-type>`` workflow type.

Deterministic and small: resolve the run (a local activity, unless the run was started with its
plan), run each step as its own activity (Temporal does timeouts, retries and cancellation), write
the end of the mirror (the last step on success, a local activity otherwise), send the job's
notifications once after the final attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.types import (
        MIRROR_FINISH,
        MIRROR_START,
        NON_RETRYABLE,
        NOTIFY,
        STEP_GRACE_SECONDS,
        FinishInput,
        JobInput,
        NotifyInput,
        RunPlan,
        StartInput,
        StepEnd,
        StepInput,
        failed_step_end,
        is_end_detail,
        open_step_outcome,
        pending_end,
    )
    from autoplat._sync import to_completion

_LOCAL_TIMEOUT = timedelta(seconds=30)
# Mirror writes retry while the registry is unreachable, for as long as the run's timeout allows
# (``_until_deadline``); a write that still fails then fails the run (the sweeper records it). A
# write the database refuses fails at once (``RegistryError``, non-retryable): it would only repeat.
_LOCAL_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5))
#: Kept back from the run's deadline for the writes that end the run.
_END_RESERVE = timedelta(seconds=30)
#: The bound of platform-side retries of a run started without a timeout.
_UNBOUNDED_RUN_RETRIES = timedelta(minutes=30)


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
        # Without the step's unwritten end (its logs), which ``mirror_finish`` writes where it belongs.
        details = [d for d in cause.details if not is_end_detail(d)]
        if details:
            error["details"] = details
    elif isinstance(cause, TimeoutError):
        error["type"] = f"Timeout.{cause.type.name if cause.type else 'UNKNOWN'}"
    else:
        error["type"] = type(cause).__name__
    return error


def _step_value(result: Any) -> Any:
    """What the next step receives: a route call's step result is wrapped with the response status
    and headers (``__route_response__``); the next step gets the handler's own return value."""
    if isinstance(result, dict) and result.get("__route_response__") is True:
        return result.get("body")
    return result


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
                attempt_timeout = timedelta(seconds=step.timeout_seconds + STEP_GRACE_SECONDS)
                starts_run = job.plan is not None and index == 0
                finishes_run = index == len(plan.steps) - 1
                outcome = await workflow.execute_activity(
                    step.activity,
                    StepInput(
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
                        previous=_step_value(previous),
                        event=job.event,
                        request=job.request,
                        config_override=job.config_override,
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
                    retry_policy=RetryPolicy(
                        initial_interval=timedelta(seconds=plan.retry_initial_seconds),
                        backoff_coefficient=plan.retry_backoff,
                        maximum_interval=(
                            timedelta(seconds=plan.retry_max_interval_seconds)
                            if plan.retry_max_interval_seconds
                            else None
                        ),
                        maximum_attempts=0,
                        non_retryable_error_types=NON_RETRYABLE,
                    ),
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
        except (ActivityError, CancelledError, asyncio.CancelledError) as exc:
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
