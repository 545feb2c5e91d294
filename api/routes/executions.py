"""The execution mirror: list, detail, logs, stats, cancel, retry."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Collection
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, Query, Request, status
from fastapi.exceptions import RequestValidationError
from sse_starlette import EventSourceResponse

from api.deps import PageDep, Requires, SessionDep, SettingsDep, StateDep
from api.schemas.common import ERROR_RESPONSES, Page
from api.schemas.executions import ExecutionDetail, ExecutionRead, ExecutionSummary, LogsRead
from registry.manifest import json_problem
from registry.models import Execution, ExecutionStatus
from registry.services import audit, executions
from registry.services.artifacts import remove_artifact_files
from registry.services.common import Actor
from registry.services.logstream import LogMerge, log_channel
from registry.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/executions", tags=["executions"], responses=ERROR_RESPONSES)

TriggerQ = Literal["schedule", "manual", "event", "api", "http", "backfill"]
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


#: Deepest JSON served from a stored row: beyond it the response could not be serialised at all.
SERVED_JSON_DEPTH = 200


def _servable(
    row: Execution, names: Collection[str] = ("steps", "config", "result", "error")
) -> tuple[dict[str, Any], str | None]:
    """The row's JSON columns (``names``), each replaced by null when it can't be served (too deep,
    not finite, lone surrogates: written by an older version or around the API), with the reason:
    one bad row must never fail a list for everyone."""
    values = {name: getattr(row, name) for name in names}
    if "steps" in values:
        values["steps"] = values["steps"] or []
    problems = []
    for name, value in values.items():
        problem = json_problem(value, max_depth=SERVED_JSON_DEPTH)
        if problem is not None:
            values[name] = [] if name == "steps" else None
            problems.append(f"{name}: {problem[0] or '/'}: {problem[1]}")
    return values, "; ".join(problems) or None


def _fields(row: Execution, settings: Settings) -> dict[str, Any]:
    values, problem = _servable(row)
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
        **values,
        "data_problem": problem,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "duration_ms": row.duration_ms,
        "nominal_at": row.nominal_at,
        "temporal_url": temporal_url(settings, row),
        "trace_id": row.trace_id,  # issue 19 (docs/observability.md)
    }


def execution_detail(row: Execution, settings: Settings) -> ExecutionDetail:
    return ExecutionDetail(**_fields(row, settings), logs=executions.parse_logs(row.logs))


#: The JSON columns a list leaves out unless asked: with them, a page of 50 can weigh megabytes.
HEAVY_FIELDS = ("steps", "config", "result", "error")


def execution_summary(row: Execution, settings: Settings, include: frozenset[str]) -> ExecutionSummary:
    fields: dict[str, Any] = {
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
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "duration_ms": row.duration_ms,
        "nominal_at": row.nominal_at,
        "temporal_url": temporal_url(settings, row),
    }
    if include:
        values, problem = _servable(row, include)
        fields.update(values)
        fields["data_problem"] = problem
    return ExecutionSummary(**fields)


def parse_include(include: str | None) -> frozenset[str]:
    asked = frozenset(part.strip() for part in (include or "").split(",") if part.strip())
    unknown = sorted(asked - set(HEAVY_FIELDS))
    if unknown:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", "include"),
                    "msg": f"unknown field {name!r}: one or more of {', '.join(HEAVY_FIELDS)}",
                    "type": "value_error",
                }
                for name in unknown
            ]
        )
    return asked


IncludeQ = Annotated[
    str | None,
    Query(
        max_length=100,
        description="Heavy fields to add to each item, comma-separated: steps, config, result, error "
        "(left out by default; the detail has them all)",
    ),
]


@router.get("", response_model=Page[ExecutionSummary], response_model_exclude_unset=True)
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
    include: IncludeQ = None,
    _: Actor = Requires("executions:read"),
) -> Page[ExecutionSummary]:
    page, limit = paging
    fields = parse_include(include)
    result = await executions.list_executions(
        session=session,
        page=page,
        limit=limit,
        sort=sort,
        heavy=fields,
        job_id=job_id,
        module=module,
        job_type=job_type,
        status=status_,
        trigger=trigger,
        event_id=event_id,
        since=since,
        until=until,
    )
    return summaries_page(result, settings, fields)


def summaries_page(result: Any, settings: Settings, include: frozenset[str]) -> Page[ExecutionSummary]:
    return Page(
        items=[execution_summary(r, settings, include) for r in result.items],
        total=result.total,
        page=result.page,
        limit=result.limit,
        total_exact=result.total_exact,
        has_more=result.has_more,
    )


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
    execution_id: str,
    session: SessionDep,
    settings: SettingsDep,
    state: StateDep,
    _: Actor = Requires("executions:read"),
) -> ExecutionDetail:
    row = await executions.get_execution(session=session, execution_id=execution_id)
    detail = execution_detail(row, settings)
    # --- why is it waiting (docs/observability.md): only for a run that runs no handler now ---
    from api.routes.workers import waiting_for

    detail.waiting = await waiting_for(state, session, row)
    return detail


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


#: How often the log stream re-reads the execution to notice it closed.
LOG_STREAM_STATUS_SECONDS = 1.0
LOG_STREAM_KEEPALIVE_SECONDS = 15


@router.get(
    "/{execution_id}/logs/stream",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 503: {}},
)
async def stream_logs(
    execution_id: str, request: Request, state: StateDep, _: Actor = Requires("executions:read")
) -> EventSourceResponse:
    """The execution's log as server-sent events: ``log`` events (one entry each, JSON) — first what
    is stored, then live lines while steps run — and a final ``end`` event (``{"status"}``) once
    the execution is closed.

    Without Redis the stream still serves what is stored: a finished run's whole log, and for a
    running one a ``notice`` event (live lines unavailable), then each step's lines as it stores
    them (when it ends), and the ``end`` event."""
    async with state.sessions() as session:
        await executions.get_execution(session=session, execution_id=execution_id)
    pubsub: Any = state.redis.pubsub()
    try:
        # Subscribe before reading what is stored: pub/sub drops what nobody listens to.
        await pubsub.subscribe(log_channel(state.settings.redis_prefix, execution_id))
    except Exception as exc:  # noqa: BLE001 - any Redis failure: serve the stored log instead
        log.warning("log stream of %s without live lines: redis %s", execution_id, type(exc).__name__)
        await pubsub.aclose()
        pubsub = None

    async def snapshot() -> tuple[str, list[dict[str, Any]]]:
        async with state.sessions() as session:
            row = await session.get(Execution, execution_id, populate_existing=True)
            if row is None:
                return ExecutionStatus.CANCELLED.value, []
            return row.status, executions.parse_logs(row.logs or "")

    def closed(status_: str) -> bool:
        return ExecutionStatus(status_).is_final

    async def generate() -> AsyncIterator[dict[str, str]]:
        nonlocal pubsub
        merge = LogMerge()
        sent = 0

        def event(entry: dict[str, Any]) -> dict[str, str]:
            nonlocal sent
            sent += 1
            return {"id": str(sent), "event": "log", "data": json.dumps(entry, default=str)}

        try:
            status_, stored = await snapshot()
            for entry in merge.stored(stored):
                yield event(entry)
            if pubsub is None and not closed(status_):
                yield {"event": "notice", "data": json.dumps(LIVE_LOST)}
            checked = time.monotonic()
            while not closed(status_):
                if pubsub is None:
                    await asyncio.sleep(LOG_STREAM_STATUS_SECONDS)
                    raw = None
                else:
                    try:
                        raw = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=LOG_STREAM_STATUS_SECONDS
                        )
                    except Exception as exc:  # noqa: BLE001 - Redis went away mid-stream: go on from the stored log
                        log.warning("log stream of %s lost redis: %s", execution_id, type(exc).__name__)
                        await _close_quietly(pubsub)
                        pubsub, raw = None, None
                        yield {"event": "notice", "data": json.dumps(LIVE_LOST)}
                if raw is not None:
                    try:
                        entry = json.loads(raw["data"])
                    except (TypeError, ValueError):
                        continue
                    for item in merge.live(entry):
                        yield event(item)
                if time.monotonic() - checked >= LOG_STREAM_STATUS_SECONDS:
                    if await request.is_disconnected():
                        return
                    status_, stored = await snapshot()
                    checked = time.monotonic()
                    for entry in merge.stored(stored):
                        yield event(entry)
            # Closed: deliver what is still in flight, then whatever only the stored log has.
            while pubsub is not None and (raw := await _in_flight(pubsub)) is not None:
                try:
                    entry = json.loads(raw["data"])
                except (TypeError, ValueError):
                    continue
                for item in merge.live(entry):
                    yield event(item)
            _, stored = await snapshot()
            for entry in merge.stored(stored):
                yield event(entry)
            yield {"event": "end", "data": json.dumps({"status": status_})}
        finally:
            if pubsub is not None:
                await _close_quietly(pubsub)

    return EventSourceResponse(generate(), ping=LOG_STREAM_KEEPALIVE_SECONDS)


LIVE_LOST = {"message": "live log lines are unavailable (Redis is down): stored lines follow as steps end"}


async def _in_flight(pubsub: Any) -> Any:
    """A message still on its way after the run closed; None when there is none (or Redis is gone:
    the stored log has every line anyway)."""
    try:
        return await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
    except Exception:  # noqa: BLE001 - nothing more to read live
        return None


async def _close_quietly(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception:  # noqa: BLE001 - a connection already lost
        log.debug("closing a log stream's subscription failed", exc_info=True)


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


@router.delete(
    "/{execution_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"description": "The run is not final yet: cancel it, or wait until it ends"}},
)
async def delete_execution(
    execution_id: str,
    session: SessionDep,
    state: StateDep,
    background: BackgroundTasks,
    actor: Actor = Requires("executions:delete"),
) -> None:
    """Delete a finished run with its logs and artifacts (admins; audited). Temporal keeps its own
    history of the run for the namespace's retention period."""
    row, files = await executions.delete_execution(session=session, execution_id=execution_id)
    audit.record(
        session=session,
        actor=actor,
        action="execution.delete",
        target_type="execution",
        target_id=execution_id,
        details={"job_id": row.job_id, "module": row.module_name, "job_type": row.job_type, "status": row.status},
    )
    if files and state.settings.artifacts_dir is not None:
        # After the response, so after the commit: a rollback never leaves a row without its file.
        background.add_task(remove_artifact_files, state.settings.artifacts_dir, files)
