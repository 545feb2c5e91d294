"""Why a run is waiting, and who polls the platform's task queues: read from Temporal's own state.

The execution row says PENDING (or RUNNING between two attempts); Temporal knows why: the
workflow's pending workflow task or activity, its attempt and next attempt time, and the pollers of
the task queue it waits in. :func:`waiting_reason` turns that into one reason with a stable
``code`` (docs/observability.md lists them); :func:`task_queue_pollers` answers ``GET /workers``.

Read-only and bounded: two or three RPCs, each under ``RPC_TIMEOUT``; Temporal unreachable is a
reason too (``temporal_unavailable``), never an error of the request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import PendingActivityState, PendingWorkflowTaskState, TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, DescribeWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

log = logging.getLogger(__name__)

RPC_TIMEOUT = timedelta(seconds=3)
#: A poller whose last poll is older than this is gone: a live one polls again at least every
#: ~70 s (Temporal's long-poll timeout), and Temporal lists pollers for minutes after they stopped.
POLLER_ALIVE = timedelta(seconds=90)


@dataclass
class Poller:
    identity: str
    last_seen: datetime | None
    rate_per_second: float
    task_types: list[str] = field(default_factory=list)


@dataclass
class Waiting:
    """One reason a run is not running. ``code`` is stable (docs/observability.md)."""

    code: str
    message: str
    task_queue: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    attempt: int | None = None


def _when(ts: Any) -> datetime | None:
    if ts is None or not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime().replace(tzinfo=UTC)


async def task_queue_pollers(client: Client, task_queue: str, kind: str) -> list[Poller]:
    """Live pollers of ``task_queue`` for ``kind`` (``workflow`` or ``activity``) tasks."""
    queue_type = (
        TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW if kind == "workflow" else TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
    )
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
            task_queue_type=queue_type,
        ),
        timeout=RPC_TIMEOUT,
    )
    now = datetime.now(UTC)
    found = []
    for poller in answer.pollers:
        seen = _when(poller.last_access_time)
        if seen is not None and now - seen > POLLER_ALIVE:
            continue
        found.append(Poller(poller.identity, seen, poller.rate_per_second, [kind]))
    return found


async def workers(client: Client, task_queues: list[str]) -> dict[str, list[Poller]]:
    """Each task queue's live pollers, one entry per worker identity (workflow and activity pollers
    of one worker merged)."""

    async def one(queue: str) -> list[Poller]:
        by_identity: dict[str, Poller] = {}
        for kind in ("workflow", "activity"):
            for poller in await task_queue_pollers(client, queue, kind):
                known = by_identity.get(poller.identity)
                if known is None:
                    by_identity[poller.identity] = poller
                    continue
                known.task_types.append(kind)
                known.rate_per_second += poller.rate_per_second
                if poller.last_seen and (known.last_seen is None or poller.last_seen > known.last_seen):
                    known.last_seen = poller.last_seen
        return sorted(by_identity.values(), key=lambda p: p.identity)

    answers = await asyncio.gather(*(one(q) for q in task_queues))
    return dict(zip(task_queues, answers, strict=True))


async def waiting_reason(
    client: Client,
    *,
    workflow_id: str,
    run_id: str | None,
    module: str,
    module_status: str | None,
    job_enabled: bool | None,
) -> Waiting | None:
    """Why the run of ``workflow_id`` is not running a handler now; None when it is (or closed)."""
    if module_status is None:
        return Waiting("module_missing", f"module {module} no longer exists: the run will be skipped")
    if module_status != "ENABLED":
        return Waiting("module_disabled", f"module {module} is {module_status}: the run will be skipped when it starts")
    if job_enabled is False:
        return Waiting("job_disabled", "the job is disabled: the run will be skipped when it starts")
    try:
        described = await client.workflow_service.describe_workflow_execution(
            DescribeWorkflowExecutionRequest(
                namespace=client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id or ""),
            ),
            timeout=RPC_TIMEOUT,
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return Waiting(
                "not_started",
                "Temporal has no such workflow: its start has not reached Temporal (yet); the run stays pending "
                "until it does",
            )
        return Waiting("temporal_unavailable", f"Temporal did not answer: {exc.message}")
    except Exception as exc:  # noqa: BLE001 - unreachable, timed out: a reason, not a failed request
        return Waiting("temporal_unavailable", f"Temporal did not answer: {type(exc).__name__}")
    info = described.workflow_execution_info
    if info.close_time and (info.close_time.seconds or info.close_time.nanos):
        return None  # closed: the row follows (the sweeper writes what the workflow could not)
    queue = described.execution_config.task_queue.name
    now = datetime.now(UTC)
    for pending in described.pending_activities:
        if pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
            return None  # a handler is running
        step = pending.activity_type.name
        activity_queue = pending.activity_options.task_queue.name or queue
        next_attempt = _when(pending.next_attempt_schedule_time) or _when(pending.scheduled_time)
        if pending.attempt > 1 and next_attempt is not None and next_attempt > now:
            failure = pending.last_failure.message or "failed"
            return Waiting(
                "retry_backoff",
                f"step {step} failed (attempt {pending.attempt - 1}: {failure[:300]}); "
                f"attempt {pending.attempt} at {next_attempt.isoformat()}",
                task_queue=activity_queue,
                until=next_attempt,
                attempt=pending.attempt,
            )
        return await _queued(client, activity_queue, "activity", f"step {step}", _when(pending.scheduled_time))
    task = described.pending_workflow_task
    if task.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_SCHEDULED:
        if task.attempt > 1:
            return Waiting(
                "workflow_task_failing",
                f"the workflow task failed {task.attempt - 1} times (a worker bug or missing code); "
                "see the worker's logs and the run in the Temporal Web UI",
                task_queue=queue,
                since=_when(task.original_scheduled_time),
                attempt=task.attempt,
            )
        return await _queued(client, queue, "workflow", "the run", _when(task.scheduled_time))
    return None


async def _queued(client: Client, queue: str, kind: str, what: str, since: datetime | None) -> Waiting:
    try:
        pollers = await task_queue_pollers(client, queue, kind)
    except Exception as exc:  # noqa: BLE001
        return Waiting("temporal_unavailable", f"Temporal did not answer: {type(exc).__name__}", task_queue=queue)
    if not pollers:
        return Waiting(
            "no_worker",
            f"{what} waits in task queue {queue}, which no worker is polling: start `autoplat worker` "
            "(or one serving this queue)",
            task_queue=queue,
            since=since,
        )
    return Waiting(
        "no_free_slot",
        f"{what} waits in task queue {queue} for a free slot: the {len(pollers)} worker(s) polling it are busy",
        task_queue=queue,
        since=since,
    )
