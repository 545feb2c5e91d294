"""Schemas of the events API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from api.schemas.common import JsonObject, Printable, Schema


class EventCreate(Schema):
    id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,35}$",
        description="Client-chosen id (max 36 characters): repeating it answers the stored event, never a second one",
    )
    name: str = Field(
        description="Dotted lowercase name, e.g. data.synced. Names under job., module., alert., incident. and "
        "schedule. are the platform's (422).",
        max_length=200,
    )
    payload: JsonObject = Field(
        default_factory=dict, description="A JSON object (size-capped, at most 64 levels deep, no NaN / NUL)"
    )
    source: Printable | None = Field(default=None, max_length=200, description="Who sent it; 'platform' is reserved")
    occurred_at: datetime | None = None


class EventRead(BaseModel):
    id: str
    seq: int
    name: str
    payload: dict[str, Any]
    source: str | None
    module: str | None
    execution_id: str | None
    occurred_at: datetime
    received_at: datetime
    dispatch_status: str
    payload_problem: str | None = Field(
        default=None, description="Set when the stored payload cannot be served (it then reads {})"
    )


class EventExecution(BaseModel):
    id: str
    job_id: str | None
    module: str
    job_type: str
    status: str
    trigger: str
    workflow_id: str
    created_at: datetime


class EventDeliveryRead(BaseModel):
    job_id: str
    workflow_id: str
    execution_id: str | None
    created_at: datetime


class EventDetail(EventRead):
    dispatch_attempts: int
    next_attempt_at: datetime | None
    dispatched_at: datetime | None
    dispatch_error: str | None
    deliveries: list[EventDeliveryRead]
    executions: list[EventExecution]


class SubscriptionJob(BaseModel):
    id: str
    name: str


class SubscriptionRead(BaseModel):
    kind: str = Field(description="listener (module manifest) or job (the job's own event_triggers)")
    module: str
    pattern: str
    job_type: str
    filter: dict[str, Any]
    mapping: dict[str, Any]
    description: str | None
    jobs: list[SubscriptionJob]


class CountBy(BaseModel):
    value: str
    count: int


class HourCount(BaseModel):
    hour: datetime
    count: int


class EventStats(BaseModel):
    total: int
    last_24h: int
    last_7d: int
    pending: int
    top_names: list[CountBy]
    top_sources: list[CountBy]
    per_hour: list[HourCount]


class EventsDeleted(BaseModel):
    deleted: int
