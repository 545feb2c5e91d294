from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from api.schemas.common import Schema
from api.schemas.observability import WaitingRead


class ExecutionSummary(Schema):
    """An execution in a list: its heavy JSON columns only when asked (``include=``)."""

    id: str
    job_id: str | None
    module: str
    module_version: str | None
    job_type: str
    workflow_id: str
    run_id: str | None
    status: str
    status_reason: str | None
    trigger: str
    event_id: str | None
    idempotency_key: str | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    nominal_at: datetime | None = Field(
        default=None, description="The schedule slot (nominal fire time) a scheduled or backfill run is for"
    )
    temporal_url: str | None = None
    steps: list[Any] | None = Field(default=None, description="Only with include=steps")
    config: dict[str, Any] | None = Field(default=None, description="Only with include=config")
    result: Any = Field(default=None, description="Only with include=result")
    error: dict[str, Any] | None = Field(default=None, description="Only with include=error")
    data_problem: str | None = Field(
        default=None, description="Set when a stored JSON value (steps, config, result, error) cannot be served"
    )


class ExecutionRead(Schema):
    id: str
    job_id: str | None
    module: str
    module_version: str | None
    job_type: str
    workflow_id: str
    run_id: str | None
    status: str
    status_reason: str | None
    trigger: str
    event_id: str | None
    idempotency_key: str | None
    attempt: int
    steps: list[Any]
    config: dict[str, Any] | None
    result: Any = None
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    nominal_at: datetime | None = Field(
        default=None, description="The schedule slot (nominal fire time) a scheduled or backfill run is for"
    )
    temporal_url: str | None = None
    trace_id: str | None = Field(
        default=None, description="The run's OpenTelemetry trace id when the platform traces (AUTOPLAT_TRACING=on)"
    )
    data_problem: str | None = Field(
        default=None, description="Set when a stored JSON value (steps, config, result, error) cannot be served"
    )


class ExecutionDetail(ExecutionRead):
    logs: list[dict[str, Any]] = []
    #: Why a run that is not final runs no handler now (docs/observability.md); null otherwise.
    waiting: WaitingRead | None = None


class LogsRead(Schema):
    execution_id: str
    status: str
    entries: list[dict[str, Any]]
    truncated: bool = False
