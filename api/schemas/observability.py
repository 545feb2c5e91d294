"""Schemas of "why is it waiting" and the workers list (docs/observability.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from api.schemas.common import Schema

WaitingCode = Literal[
    "module_missing",
    "module_disabled",
    "job_disabled",
    "not_started",
    "no_worker",
    "no_free_slot",
    "retry_backoff",
    "workflow_task_failing",
    "temporal_unavailable",
]


class WaitingRead(Schema):
    """Why a run that is not final runs no handler now, from Temporal's own state."""

    code: WaitingCode = Field(description="Stable reason code (docs/observability.md)")
    message: str
    task_queue: str | None = None
    since: datetime | None = Field(default=None, description="Waiting since (when Temporal scheduled the task)")
    until: datetime | None = Field(default=None, description="retry_backoff: when the next attempt starts")
    attempt: int | None = None


class WorkerRead(Schema):
    """A worker polling one of the platform's task queues (from Temporal's task-queue description)."""

    identity: str = Field(description="The worker's identity (pid@host by default)")
    task_queue: str
    task_types: list[Literal["workflow", "activity"]]
    last_seen: datetime | None = Field(description="The worker's latest poll")
    rate_per_second: float = Field(description="Task dispatch rate limit the poller asked for (0: none)")


class WorkersRead(Schema):
    task_queues: list[str]
    workers: list[WorkerRead]
