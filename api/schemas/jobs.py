from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from api.schemas.common import JsonObject, Printable, Schema, Text

Overlap = Literal["skip", "buffer_one", "allow_all", "cancel_other"]


class RetryBackoff(Schema):
    initial_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    backoff_coefficient: float = Field(default=2.0, ge=1, le=100)
    maximum_interval_seconds: float | None = Field(default=None, gt=0, le=86400)


class JobCreate(Schema):
    module: str = Field(min_length=1, max_length=50)
    job_type: str = Field(min_length=1, max_length=100)
    name: Printable = Field(min_length=1, max_length=200)
    description: Text = Field(default="", max_length=2000)
    schedule: str | None = Field(
        default=None,
        max_length=120,
        description="Cron, 5 fields or 6 with seconds first; omitted = the job type's default; null = none",
    )
    timezone: str | None = Field(default=None, max_length=64, description="IANA timezone (default UTC)")
    enabled: bool = True
    timeout_seconds: int | None = Field(default=None, ge=1, le=86400)
    retries: int | None = Field(default=None, ge=0, le=100, description="Retries after the first attempt")
    retry_backoff: RetryBackoff | None = None
    overlap: Overlap | None = None
    catchup_window_seconds: int | None = Field(default=None, ge=10, le=7 * 86400)
    config: JsonObject = Field(default_factory=dict)
    event_triggers: list[str] = Field(default_factory=list, description="Event patterns that start this job")
    notifications: dict[str, list[str]] | None = Field(
        default=None, description="Channels per outcome: on_failure / on_success / on_timeout"
    )


class JobUpdate(Schema):
    name: Printable | None = Field(default=None, min_length=1, max_length=200)
    description: Text | None = Field(default=None, max_length=2000)
    schedule: str | None = Field(default=None, max_length=120)
    timezone: str | None = Field(default=None, max_length=64)
    enabled: bool | None = None
    timeout_seconds: int | None = Field(default=None, ge=1, le=86400)
    retries: int | None = Field(default=None, ge=0, le=100)
    retry_backoff: RetryBackoff | None = None
    overlap: Overlap | None = None
    catchup_window_seconds: int | None = Field(default=None, ge=10, le=7 * 86400)
    config: JsonObject | None = None
    event_triggers: list[str] | None = None
    notifications: dict[str, list[str]] | None = None


class ExecuteRequest(Schema):
    config: JsonObject | None = Field(default=None, description="Config override for this run only")


class ExecutionSummary(Schema):
    id: str
    status: str
    trigger: str
    created_at: datetime
    finished_at: datetime | None = None


class JobRead(Schema):
    id: str
    module: str
    job_type: str
    name: str
    description: str
    schedule: str | None
    timezone: str
    enabled: bool
    timeout_seconds: int
    retries: int
    retry_backoff: dict[str, Any]
    overlap: str
    catchup_window_seconds: int
    config: dict[str, Any]
    event_triggers: list[Any]
    notifications: dict[str, Any]
    schedule_id: str | None
    revision: int
    created_at: datetime
    updated_at: datetime
    next_runs: list[datetime] = []
    last_execution: ExecutionSummary | None = None
    schedule_state: dict[str, Any] | None = None
    data_problem: str | None = Field(default=None, description="Set when the stored config cannot be served")
