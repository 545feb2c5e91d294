"""Jobs: create from a module job type, schedule on Temporal, run now, list runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Header, Query, Response, status
from temporalio.service import RPCError

from api.deps import PageDep, Requires, SessionDep, SettingsDep, StateDep
from api.routes.executions import SERVED_JSON_DEPTH, execution_read
from api.schemas.common import ERROR_RESPONSES, Page
from api.schemas.executions import ExecutionDetail, ExecutionRead
from api.schemas.jobs import (
    BackfillRead,
    BackfillRequest,
    BackfillSlot,
    DstPolicy,
    ExecuteRequest,
    JobCreate,
    JobRead,
    JobStateRead,
    JobUpdate,
    LastExecution,
    PauseRequest,
    SlotRead,
    SlotsRead,
)
from api.state import AppState
from registry.errors import InvalidInput, UpstreamTimeout
from registry.manifest import json_problem
from registry.models import Job, Module
from registry.services import backfill, executions, jobs, slots
from registry.services.common import Actor
from workflows.schedules import schedule_id

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

_UNREAD: Any = object()


async def job_read(
    job: Job, state: AppState, *, session: SessionDep, detail: bool = False, last: Any = _UNREAD
) -> JobRead:
    """A job as answered. ``detail`` adds Temporal's view of its schedule (one call to Temporal);
    ``last``: its latest run when the caller read it already (lists read a page's in one query)."""
    module = await session.get(Module, job.module_id)
    codec = state.secret_codec()
    config = jobs.masked_config(job, module, codec.decrypt(job.secrets)) if module else dict(job.config)
    # A config that can't be served (stored around the API) reads {} and is named, never failing a list.
    problem = json_problem(config, max_depth=SERVED_JSON_DEPTH)
    if problem is not None:
        config = {}
    read = JobRead(
        id=job.id,
        module=job.module_name,
        job_type=job.job_type,
        name=job.name,
        description=job.description,
        schedule=job.schedule,
        timezone=job.timezone,
        enabled=job.enabled,
        timeout_seconds=job.timeout_seconds,
        max_attempts=job.retries + 1,
        retries=job.retries,
        retry_backoff=job.retry_backoff or {},
        overlap=job.overlap,
        catchup_window_seconds=job.catchup_window_seconds,
        config=config,
        event_triggers=job.event_triggers or [],
        notifications=job.notifications or {},
        schedule_id=schedule_id(job.id) if job.schedule else None,
        revision=job.revision,
        origin=job.origin or "api",
        paused_reason=job.paused_reason,
        created_at=job.created_at,
        updated_at=job.updated_at,
        data_problem=f"config: {problem[0] or '/'}: {problem[1]}" if problem else None,
        dst=DstPolicy(**slots.job_dst(job)),  # type: ignore[arg-type]
        jitter_seconds=job.jitter_seconds or 0,
        schedule_paused=bool(job.schedule_paused),
        pause=(
            {"note": job.schedule_pause_note, "by": job.schedule_paused_by, "at": job.schedule_paused_at}
            if job.schedule_paused
            else None
        ),
    )
    read.next_runs = jobs.upcoming(job) if job.enabled and not job.schedule_paused else []
    if last is _UNREAD:
        last = await jobs.last_execution(session=session, job_id=job.id)
    if last is not None:
        read.last_execution = LastExecution(
            id=last.id,
            status=last.status,
            trigger=last.trigger,
            created_at=last.created_at,
            finished_at=last.finished_at,
        )
    if detail and job.schedule:
        try:
            read.schedule_state = await (await state.schedules()).describe(job.id)
        except Exception as exc:  # noqa: BLE001 - the job is still readable while Temporal is down
            read.schedule_state = {"error": f"Temporal unavailable: {type(exc).__name__}"}
    return read


class _LazyScheduler:
    """Connects to Temporal only when a schedule actually has to change."""

    def __init__(self, state: AppState) -> None:
        self._state = state

    async def apply(self, job: Job, module: Module | None, steps: int = 1) -> str:
        return await (await self._state.schedules()).apply(job, module, steps)

    async def delete(self, job_id: str) -> bool:
        return await (await self._state.schedules()).delete(job_id)


@router.post("", response_model=JobRead, status_code=status.HTTP_201_CREATED)
async def create_job(
    body: JobCreate, session: SessionDep, state: StateDep, actor: Actor = Requires("jobs:write")
) -> JobRead:
    fields = body.model_dump(exclude_unset=True, exclude={"max_attempts", "retries"})
    kwargs = {k: v for k, v in fields.items() if k != "schedule"}
    if "schedule" in fields:
        kwargs["schedule"] = fields["schedule"]
    kwargs["retries"] = body.retries_after_first()
    job = await jobs.create_job(
        session=session,
        scheduler=_LazyScheduler(state),
        crypto=state.secret_codec(),
        actor=actor,
        min_interval=state.settings.min_schedule_interval_seconds,
        **kwargs,
    )
    return await job_read(job, state, session=session, detail=True)


@router.get(
    "",
    response_model=Page[JobRead],
    # A Temporal call per job would make long lists slow: schedule_state is on GET /jobs/{id} only.
    response_model_exclude={"items": {"__all__": {"schedule_state"}}},
)
async def list_jobs(
    session: SessionDep,
    state: StateDep,
    paging: PageDep,
    module: Annotated[str | None, Query(max_length=50)] = None,
    job_type: Annotated[str | None, Query(max_length=100)] = None,
    enabled: bool | None = None,
    search: Annotated[str | None, Query(max_length=200)] = None,
    _: Actor = Requires("jobs:read"),
) -> Page[JobRead]:
    page, limit = paging
    result = await jobs.list_jobs(
        session=session, page=page, limit=limit, module=module, job_type=job_type, enabled=enabled, search=search
    )
    last = await jobs.last_executions(session=session, job_ids=[j.id for j in result.items])
    items = [await job_read(j, state, session=session, last=last.get(j.id)) for j in result.items]
    return Page(items=items, total=result.total, page=page, limit=limit)


@router.get("/{job_id}", response_model=JobRead)
async def get_job(job_id: str, session: SessionDep, state: StateDep, _: Actor = Requires("jobs:read")) -> JobRead:
    return await job_read(await jobs.get_job(session=session, job_id=job_id), state, session=session, detail=True)


@router.patch("/{job_id}", response_model=JobRead)
async def update_job(
    job_id: str, body: JobUpdate, session: SessionDep, state: StateDep, actor: Actor = Requires("jobs:write")
) -> JobRead:
    changes = body.model_dump(exclude_unset=True, exclude={"max_attempts", "retries"})
    if body.retries_after_first() is not None:
        changes["retries"] = body.retries_after_first()
    if "retry_backoff" in changes and changes["retry_backoff"] is not None:
        changes["retry_backoff"] = {k: v for k, v in changes["retry_backoff"].items() if v is not None}
    job = await jobs.update_job(
        session=session,
        scheduler=_LazyScheduler(state),
        crypto=state.secret_codec(),
        actor=actor,
        job_id=job_id,
        changes=changes,
        min_interval=state.settings.min_schedule_interval_seconds,
    )
    return await job_read(job, state, session=session, detail=True)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_job(job_id: str, session: SessionDep, state: StateDep, actor: Actor = Requires("jobs:write")) -> None:
    await jobs.delete_job(session=session, scheduler=_LazyScheduler(state), actor=actor, job_id=job_id)


@router.post("/{job_id}/enable", response_model=JobRead)
async def enable_job(
    job_id: str, session: SessionDep, state: StateDep, actor: Actor = Requires("jobs:write")
) -> JobRead:
    job = await jobs.set_enabled(
        session=session,
        scheduler=_LazyScheduler(state),
        actor=actor,
        job_id=job_id,
        enabled=True,
        crypto=state.secret_codec(),
    )
    return await job_read(job, state, session=session, detail=True)


@router.post("/{job_id}/disable", response_model=JobRead)
async def disable_job(
    job_id: str, session: SessionDep, state: StateDep, actor: Actor = Requires("jobs:write")
) -> JobRead:
    job = await jobs.set_enabled(
        session=session, scheduler=_LazyScheduler(state), actor=actor, job_id=job_id, enabled=False
    )
    return await job_read(job, state, session=session, detail=True)


@router.post("/{job_id}/pause", response_model=JobRead)
async def pause_job_schedule(
    job_id: str,
    session: SessionDep,
    state: StateDep,
    body: PauseRequest | None = None,
    actor: Actor = Requires("jobs:write"),
) -> JobRead:
    """Pause the job's schedule without deleting it (Temporal keeps it, paused, with the note and
    who paused it): its slots read ``skipped`` (paused) until resumed. 409 for a job with no schedule."""
    job = await jobs.set_schedule_paused(
        session=session,
        scheduler=_LazyScheduler(state),
        actor=actor,
        job_id=job_id,
        paused=True,
        note=body.note if body else "",
    )
    return await job_read(job, state, session=session, detail=True)


@router.post("/{job_id}/resume", response_model=JobRead)
async def resume_job_schedule(
    job_id: str,
    session: SessionDep,
    state: StateDep,
    body: PauseRequest | None = None,
    actor: Actor = Requires("jobs:write"),
) -> JobRead:
    """Resume a paused schedule (the slots it did not fire while paused are not run: backfill them)."""
    job = await jobs.set_schedule_paused(
        session=session,
        scheduler=_LazyScheduler(state),
        actor=actor,
        job_id=job_id,
        paused=False,
        note=body.note if body else "",
    )
    return await job_read(job, state, session=session, detail=True)


@router.get("/{job_id}/slots", response_model=SlotsRead)
async def job_slots(
    job_id: str,
    session: SessionDep,
    from_: Annotated[datetime | None, Query(alias="from", description="Default: 24 hours ago")] = None,
    to: Annotated[datetime | None, Query(description="Default: an hour from now")] = None,
    _: Actor = Requires("jobs:read"),
) -> SlotsRead:
    """The slot ledger: each nominal fire time of the job's schedule in [from, to) and what became of
    it: ``ran`` (its execution), ``skipped`` (why), ``missed`` (nothing ran it) or ``pending``. At
    most 5,000 slots are answered, the earliest first."""
    job = await jobs.get_job(session=session, job_id=job_id)
    now = datetime.now(UTC)
    start = _aware(from_, "from") if from_ else now - timedelta(days=1)
    end = _aware(to, "to") if to else now + timedelta(hours=1)
    if end <= start:
        raise InvalidInput("to must be after from", details=[{"loc": ["query", "to"], "msg": "must be after from"}])
    module = await session.get(Module, job.module_id)
    await slots.settle(session=session, job=job, module=module)
    views = await slots.ledger(session=session, job=job, start=start, end=end)
    return SlotsRead(
        job_id=job.id,
        timezone=job.timezone,
        dst=DstPolicy(**slots.job_dst(job)),  # type: ignore[arg-type]
        settled_until=job.slots_settled_until,
        items=[SlotRead(**vars(v)) for v in views],
    )


@router.post(
    "/{job_id}/backfill",
    response_model=BackfillRead,
    responses={202: {"model": BackfillRead, "description": "Started; GET /jobs/{id}/backfills/{backfill_id}"}},
)
async def backfill_job(
    job_id: str,
    body: BackfillRequest,
    response: Response,
    session: SessionDep,
    state: StateDep,
    actor: Actor = Requires("jobs:write"),
) -> BackfillRead:
    """Run the job's past slots in [from, to) that have no run, each as its slot's run
    (``trigger = "backfill"``, the nominal time on the execution), rate-limited; ``dry_run`` answers
    them without running. 422 for a range reversed, in the future, or of more than
    ``AUTOPLAT_BACKFILL_MAX_SLOTS`` slots (with the count)."""
    job = await jobs.get_job(session=session, job_id=job_id)
    planned = await backfill.plan(
        session=session,
        job=job,
        start=_aware(body.from_, "from"),
        end=_aware(body.to, "to"),
        max_slots=state.settings.backfill_max_slots,
    )
    zone = ZoneInfo(job.timezone or "UTC")
    listed = [BackfillSlot(at=s.at, wall_time=s.at.astimezone(zone).isoformat(), dst=s.dst) for s in planned.slots]
    if body.dry_run:
        return BackfillRead(dry_run=True, count=len(planned.slots), already_run=planned.already_run, slots=listed)
    row = await backfill.start(
        session=session,
        job=job,
        actor=actor,
        planned=planned,
        start_at=body.from_,
        end_at=body.to,
        overlap=body.overlap or job.overlap,
    )
    client = await state.temporal()
    await session.commit()  # the driver reads the row
    from workflows.maintenance import MAINTENANCE_WORKFLOW

    await client.start_workflow(
        MAINTENANCE_WORKFLOW,
        f"{backfill.TASK_PREFIX}{row.id}",
        id=row.workflow_id,
        task_queue=state.settings.task_queue,
    )
    response.status_code = status.HTTP_202_ACCEPTED
    return _backfill_read(row, already_run=planned.already_run, zone=zone)


@router.get("/{job_id}/backfills/{backfill_id}", response_model=BackfillRead)
async def get_backfill(
    job_id: str, backfill_id: str, session: SessionDep, _: Actor = Requires("jobs:read")
) -> BackfillRead:
    job = await jobs.get_job(session=session, job_id=job_id)
    row = await backfill.get(session=session, job_id=job_id, backfill_id=backfill_id)
    return _backfill_read(row, zone=ZoneInfo(job.timezone or "UTC"))


@router.post("/{job_id}/backfills/{backfill_id}/cancel", response_model=BackfillRead)
async def cancel_backfill(
    job_id: str, backfill_id: str, session: SessionDep, state: StateDep, actor: Actor = Requires("jobs:write")
) -> BackfillRead:
    """Cancel a backfill as a whole: no further slot starts, and its runs still going are cancelled."""
    job = await jobs.get_job(session=session, job_id=job_id)
    row, running = await backfill.cancel(session=session, job_id=job_id, backfill_id=backfill_id, actor=actor)
    await session.commit()
    if running or row.finished_at is not None:
        client = await state.temporal()
        for workflow_id in [row.workflow_id, *running]:
            try:
                await client.get_workflow_handle(workflow_id).cancel()
            except RPCError:
                pass  # ended meanwhile
    return _backfill_read(row, zone=ZoneInfo(job.timezone or "UTC"))


def _backfill_read(row: Any, *, zone: ZoneInfo, already_run: int = 0) -> BackfillRead:
    fields = backfill.as_dict(row, preview=1000)
    stamps = fields.pop("slots")
    return BackfillRead(
        dry_run=False,
        already_run=already_run,
        slots=[
            BackfillSlot(at=at, wall_time=at.astimezone(zone).isoformat())
            for at in (datetime.fromisoformat(s) for s in stamps)
        ],
        **{("from_" if k == "from" else k): v for k, v in fields.items()},
    )


def _aware(value: datetime, name: str) -> datetime:
    """Query times without an offset are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@router.post(
    "/{job_id}/execute",
    response_model=ExecutionDetail | ExecutionRead,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"model": ExecutionDetail, "description": "With wait=true: the finished execution, with its logs"},
        202: {"model": ExecutionRead, "description": "Started; Location names the execution, Link its logs"},
    },
)
async def execute_job(
    job_id: str,
    response: Response,
    state: StateDep,
    body: ExecuteRequest | None = None,
    wait: Annotated[bool, Query(description="Wait for the result like a function call")] = False,
    wait_timeout: Annotated[float | None, Query(gt=0, le=3600, description="Seconds (default from settings)")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
    actor: Actor = Requires("jobs:execute"),
) -> ExecutionDetail | ExecutionRead:
    """Run the job now. With ``wait=true`` the answer is the finished run with its logs (like a
    function call); without, 202 at once. Either way ``Location`` names the execution and ``Link``
    (rel ``logs``) its logs, also live: ``/executions/{id}/logs/stream``."""
    runner = await state.runner()
    execution, created = await runner.start_job(
        job_id=job_id,
        actor=actor,
        trigger="manual",
        config_override=body.config if body else None,
        idempotency_key=idempotency_key,
    )
    response.headers["Location"] = f"/api/v1/executions/{execution.id}"
    response.headers["Link"] = f'</api/v1/executions/{execution.id}/logs>; rel="logs"'
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    if wait:
        timeout = wait_timeout or state.settings.execute_wait_timeout_seconds
        execution = await runner.wait(execution, timeout)
        if execution.status in ("PENDING", "RUNNING"):
            raise UpstreamTimeout(
                f"execution {execution.id} is still {execution.status} after {timeout:g}s; poll its Location",
                details={"execution_id": execution.id, "location": f"/api/v1/executions/{execution.id}"},
            )
        response.status_code = status.HTTP_200_OK
        return ExecutionDetail(
            **execution_read(execution, state.settings).model_dump(), logs=executions.parse_logs(execution.logs)
        )
    return execution_read(execution, state.settings)


@router.get("/{job_id}/executions", response_model=Page[ExecutionRead])
async def job_executions(
    job_id: str,
    session: SessionDep,
    settings: SettingsDep,
    paging: PageDep,
    status_: Annotated[str | None, Query(alias="status", max_length=120)] = None,
    _: Actor = Requires("executions:read"),
) -> Page[ExecutionRead]:
    await jobs.get_job(session=session, job_id=job_id)
    page, limit = paging
    result = await executions.list_executions(session=session, page=page, limit=limit, job_id=job_id, status=status_)
    return Page(items=[execution_read(r, settings) for r in result.items], total=result.total, page=page, limit=limit)


@router.get("/{job_id}/state", response_model=JobStateRead)
async def get_job_state(job_id: str, session: SessionDep, _: Actor = Requires("jobs:write")) -> JobStateRead:
    """The job's state document (``ctx.state``, e.g. a sync cursor), read-only. Module data may be
    sensitive: operators and admins only, like a module's storage."""
    job, row = await jobs.get_state(session=session, job_id=job_id)
    if row is None:
        return JobStateRead(job_id=job.id, value={}, version=0, updated_at=None)
    return JobStateRead(job_id=job.id, value=dict(row.value or {}), version=row.version, updated_at=row.updated_at)
