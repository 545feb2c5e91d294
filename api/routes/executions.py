"""The execution mirror: list, detail, logs, stats, cancel, retry."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, status

from api.deps import PageDep, Requires, SessionDep, SettingsDep, StateDep
from api.schemas.common import ERROR_RESPONSES, Page
from api.schemas.executions import ExecutionDetail, ExecutionRead, LogsRead
from registry.models import Execution
from registry.services import executions
from registry.services.common import Actor
from registry.settings import Settings

router = APIRouter(prefix="/executions", tags=["executions"], responses=ERROR_RESPONSES)

TriggerQ = Literal["schedule", "manual", "event", "api", "http"]
SortQ = Literal[
    "created_at",
    "-created_at",
    "started_at",
    "-started_at",
    "finished_at",
    "-finished_at",
    "duration_ms",
    "-duration_ms",
    "status",
    "-status",
]


def temporal_url(settings: Settings, row: Execution) -> str:
    base = settings.temporal_ui_url.rstrip("/")
    url = f"{base}/namespaces/{quote(settings.temporal_namespace)}/workflows/{quote(row.workflow_id, safe='')}"
    return f"{url}/{row.run_id}/history" if row.run_id else url


def execution_read(row: Execution, settings: Settings) -> ExecutionRead:
    return ExecutionRead(**_fields(row, settings))


def _fields(row: Execution, settings: Settings) -> dict[str, Any]:
    return {
        "id": row.id,
        "job_id": row.job_id,
        "module": row.module_name,
        "module_version": row.module_version,
        "job_type": row.job_type,
        "workflow_id": row.workflow_id,
        "run_id": row.run_id,
        "status": row.status,
        "status_reason": row.status_reason,
        "trigger": row.trigger,
        "event_id": row.event_id,
        "idempotency_key": row.idempotency_key,
        "attempt": row.attempt,
        "steps": row.steps or [],
        "config": row.config,
        "result": row.result,
        "error": row.error,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "duration_ms": row.duration_ms,
        "temporal_url": temporal_url(settings, row),
    }


def execution_detail(row: Execution, settings: Settings) -> ExecutionDetail:
    return ExecutionDetail(**_fields(row, settings), logs=executions.parse_logs(row.logs))


@router.get("", response_model=Page[ExecutionRead])
async def list_executions(
    session: SessionDep,
    settings: SettingsDep,
    paging: PageDep,
    job_id: str | None = None,
    module: Annotated[str | None, Query(max_length=50)] = None,
    job_type: Annotated[str | None, Query(max_length=100)] = None,
    status_: Annotated[
        str | None, Query(alias="status", max_length=120, description="One or more, comma-separated")
    ] = None,
    trigger: TriggerQ | None = None,
    event_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    sort: SortQ = "-created_at",
    _: Actor = Requires("executions:read"),
) -> Page[ExecutionRead]:
    page, limit = paging
    result = await executions.list_executions(
        session=session,
        page=page,
        limit=limit,
        sort=sort,
        job_id=job_id,
        module=module,
        job_type=job_type,
        status=status_,
        trigger=trigger,
        event_id=event_id,
        since=since,
        until=until,
    )
    return Page(items=[execution_read(r, settings) for r in result.items], total=result.total, page=page, limit=limit)


@router.get("/stats")
async def execution_stats(
    session: SessionDep,
    job_id: str | None = None,
    module: Annotated[str | None, Query(max_length=50)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    _: Actor = Requires("executions:read"),
) -> dict[str, object]:
    return await executions.stats(session=session, job_id=job_id, module=module, since=since, until=until)


@router.get("/{execution_id}", response_model=ExecutionDetail)
async def get_execution(
    execution_id: str, session: SessionDep, settings: SettingsDep, _: Actor = Requires("executions:read")
) -> ExecutionDetail:
    return execution_detail(await executions.get_execution(session=session, execution_id=execution_id), settings)


@router.get("/{execution_id}/logs", response_model=LogsRead)
async def get_logs(
    execution_id: str,
    session: SessionDep,
    level: Annotated[str | None, Query(pattern="^(DEBUG|INFO|WARNING|ERROR)$")] = None,
    _: Actor = Requires("executions:read"),
) -> LogsRead:
    row = await executions.get_execution(session=session, execution_id=execution_id)
    entries = executions.parse_logs(row.logs)
    if level:
        order = ["DEBUG", "INFO", "WARNING", "ERROR"]
        entries = [
            e
            for e in entries
            if e.get("level", "INFO") in order and order.index(e.get("level", "INFO")) >= order.index(level)
        ]
    truncated = any(e.get("message", "").startswith("[log truncated") for e in entries)
    return LogsRead(execution_id=row.id, status=row.status, entries=entries, truncated=truncated)


@router.post("/{execution_id}/cancel", response_model=ExecutionRead, status_code=status.HTTP_202_ACCEPTED)
async def cancel_execution(
    execution_id: str, session: SessionDep, state: StateDep, actor: Actor = Requires("executions:execute")
) -> ExecutionRead:
    runner = await state.runner()
    row = await runner.cancel(session=session, execution_id=execution_id, actor=actor)
    return execution_read(row, state.settings)


@router.post("/{execution_id}/retry", response_model=ExecutionRead, status_code=status.HTTP_201_CREATED)
async def retry_execution(
    execution_id: str, state: StateDep, actor: Actor = Requires("executions:execute")
) -> ExecutionRead:
    runner = await state.runner()
    row = await runner.retry(execution_id=execution_id, actor=actor)
    return execution_read(row, state.settings)
