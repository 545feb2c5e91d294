"""Inputs and outputs shared by workflows and activities (plain dataclasses, JSON-converted)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

MIRROR_START = "autoplat.mirror_start"
MIRROR_FINISH = "autoplat.mirror_finish"
RECONCILE = "autoplat.reconcile"
NOTIFY = "autoplat.notify"
MIRROR_ITEMS = "autoplat.mirror_items"

#: Error types that never retry (business failures and broken module code).
NON_RETRYABLE = ["JobError", "HandlerNotFound", "AttemptsExhausted", "Cancelled", "ResultNotSerializable"]
#: Slack for infrastructure retries in the bounds of a whole run (``workflow_timeout``): a step's
#: platform-side failures (registry unreachable, worker lost) are retried, separately from the
#: job's own attempts, for as long as the run's timeout allows (``workflows/job.py``).
INFRA_ATTEMPTS = 3
#: A step's activity may run this long past its timeout (Temporal's start-to-close timeout is the
#: step's timeout plus this): the time to stop the handler at its timeout (a handler process gets
#: ``activities.handlers.STOP_GRACE_SECONDS``, then is killed) and to write the step's end, so the
#: step's own clock ends it and records TIMED_OUT before Temporal's timeout fires.
STEP_GRACE_SECONDS = 10


@dataclass
class JobInput:
    """The single input of every job workflow run."""

    job_id: str | None = None
    trigger: str = "manual"
    execution_id: str | None = None
    event: dict[str, Any] | None = None
    config_override: dict[str, Any] | None = None
    request: dict[str, Any] | None = None
    #: Set for direct invocations without a job row (module routes): module/job type come from
    #: the workflow type.
    job_type_only: bool = False
    #: The run's plan, when whoever started the run already read the job and its module and wrote
    #: the PENDING mirror row (manual runs, retries, module route calls): the workflow then skips
    #: the ``mirror_start`` local activity and the first step starts the run
    #: (``StepInput.starts_run``). Schedules and events send none: their row is created and their
    #: plan resolved when the run starts.
    plan: RunPlan | None = None


@dataclass
class StartInput:
    workflow_id: str
    run_id: str
    workflow_type: str
    job: JobInput
    attempt: int = 1


@dataclass
class StepPlan:
    name: str
    handler: str
    activity: str
    timeout_seconds: int
    max_attempts: int
    #: A fan-out step (the manifest's ``forEach``): ``{"concurrency", "maxItems",
    #: "continueOnItemError"}``; its handler runs once per item of the previous step's list.
    for_each: dict[str, Any] | None = None


@dataclass
class RunPlan:
    execution_id: str
    skip_reason: str | None = None
    module: str = ""
    module_version: str = ""
    bundle_sha256: str | None = None
    job_type: str = ""
    steps: list[StepPlan] = field(default_factory=list)
    retry_initial_seconds: float = 1.0
    retry_backoff: float = 2.0
    retry_max_interval_seconds: float | None = None
    heartbeat_timeout_seconds: int = 10
    notifications: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class StepInput:
    execution_id: str
    job_id: str | None
    module: str
    module_version: str
    bundle_sha256: str | None
    job_type: str
    step: str
    step_index: int
    handler: str
    max_attempts: int
    timeout_seconds: int
    trigger: str
    previous: Any = None
    event: dict[str, Any] | None = None
    request: dict[str, Any] | None = None
    config_override: dict[str, Any] | None = None
    #: The first step of a run started with a plan: it moves the mirror row to RUNNING (or SKIPPED)
    #: in the transaction that prepares the step.
    starts_run: bool = False
    #: The last step: when it succeeds, it writes the COMPLETED mirror row in the transaction that
    #: keeps its logs, and the workflow needs no ``mirror_finish``.
    finishes_run: bool = False
    #: The end of the previous step, when that step could not write it (the registry was down
    #: until its activity's deadline): written by this step before it runs.
    pending_end: StepEnd | None = None
    #: Position of the item in a fan-out step's list (``None`` for any other step); ``item`` is
    #: the item itself (``ctx.item``).
    item_index: int | None = None
    item: Any = None


@dataclass
class StepEnd:
    """A step's end (status, logs) that its activity could not write: the workflow hands it on."""

    step_index: int
    status: str
    attempt: int
    error: str | None = None
    #: The step's log, as JSON lines.
    logs: str = ""
    #: The run failed and the registry could not count the failure either: whoever writes this end
    #: counts it (against the job's attempts) too.
    count_failure: bool = False


#: Key of the envelope a step returns when it starts or finishes the run (see :func:`step_outcome`).
STEP_ENVELOPE = "__autoplat_step__"


def step_outcome(
    value: Any, *, finalized: bool = False, skipped: str | None = None, pending: StepEnd | None = None
) -> dict[str, Any]:
    """What a step that starts or finishes its run returns (or any step whose end could not be
    written): its value, whether the mirror row is already final (the workflow then writes nothing
    more), when the run was skipped, why, and the step's end when its activity could not write it."""
    envelope = {STEP_ENVELOPE: 1, "value": value, "finalized": finalized, "skipped": skipped}
    if pending is not None:
        envelope["pending"] = dataclasses.asdict(pending)
    return envelope


def open_step_outcome(result: Any) -> tuple[Any, bool, str | None]:
    """(value, finalized, skip reason) of a step's result; a plain result (no envelope, as in
    histories recorded before the envelope existed) is a value whose run is not finalized."""
    if isinstance(result, dict) and result.get(STEP_ENVELOPE) == 1:
        return result.get("value"), bool(result.get("finalized")), result.get("skipped")
    return result, False, None


def pending_end(result: Any) -> StepEnd | None:
    """The step end a step's result hands on to the workflow, if any."""
    if isinstance(result, dict) and result.get(STEP_ENVELOPE) == 1 and isinstance(result.get("pending"), dict):
        return StepEnd(**result["pending"])
    return None


#: Key of the failure detail that carries the end of a failed step its activity could not write.
STEP_END_DETAIL = "__autoplat_step_end__"


def end_detail(end: StepEnd) -> dict[str, Any]:
    """The failure detail a failed step adds when it could not write its own end (see
    :func:`failed_step_end`)."""
    return {STEP_END_DETAIL: dataclasses.asdict(end)}


def is_end_detail(detail: Any) -> bool:
    return isinstance(detail, dict) and isinstance(detail.get(STEP_END_DETAIL), dict)


def failed_step_end(exc: BaseException | None) -> StepEnd | None:
    """The unwritten end a failed step's error carries (anywhere in its chain of causes: an
    ``ActivityError``, a ``TimeoutError`` whose last failure it was), if any."""
    while exc is not None:
        for detail in getattr(exc, "details", None) or ():
            if is_end_detail(detail):
                return StepEnd(**detail[STEP_END_DETAIL])
        exc = exc.__cause__
    return None


@dataclass
class FinishInput:
    execution_id: str
    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    attempt: int | None = None
    #: The last step's end, when its activity could not write it: written with the run's end.
    step_end: StepEnd | None = None


#: Key of what one item of a fan-out step returns: ``{ITEM_ENVELOPE: 1, "value", "logs"}``.
ITEM_ENVELOPE = "__autoplat_item__"
#: Key of the failure detail of an item that carries its logs (every run of the item's handler).
ITEM_LOGS_DETAIL = "__autoplat_item_logs__"


def item_logs(exc: BaseException | None) -> str:
    """The logs an item's failure carries (anywhere in its chain of causes), or ``""``."""
    while exc is not None:
        for detail in getattr(exc, "details", None) or ():
            if isinstance(detail, dict) and isinstance(detail.get(ITEM_LOGS_DETAIL), str):
                return str(detail[ITEM_LOGS_DETAIL])
        exc = exc.__cause__
    return ""


@dataclass
class ItemsInput:
    """A fan-out step's progress, written by the workflow (``MIRROR_ITEMS``) a few times per step,
    never once per item: its status, item counts and the logs of the items that ended since the
    last write."""

    execution_id: str
    step_index: int
    step: str
    status: str
    total: int
    completed: int = 0
    failed: int = 0
    logs: str = ""
    error: str | None = None
    #: The first write of the step: it starts the step (RUNNING, ``started_at``).
    starts: bool = False
    #: The previous step's end, when its activity could not write it.
    pending_end: StepEnd | None = None


@dataclass
class NotifyInput:
    channel: str
    subject: str
    body: str
    data: dict[str, Any] = field(default_factory=dict)
    module: str | None = None


def _resolve_annotations() -> None:
    """Turn this module's string annotations (PEP 563) into the types they name, once.

    temporalio's converter calls ``typing.get_type_hints`` on a dataclass for every payload it
    decodes into one; on string annotations that compiles and evaluates each of them again (21
    per run for ``StepInput``): decoding a ``StepInput`` took 377 µs, 118 µs once resolved here,
    and a ``JobInput`` with its plan 556 → 229 µs."""
    for value in list(globals().values()):
        if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == __name__:
            value.__annotations__ = typing.get_type_hints(value)


_resolve_annotations()
