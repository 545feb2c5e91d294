from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from api.schemas.common import JsonObject, Printable, Schema, Text

Overlap = Literal["skip", "buffer_one", "allow_all", "cancel_other"]

#: ``retries`` is the old name (attempts after the first): accepted and answered, marked deprecated.
_DEPRECATED_RETRIES: dict[str, Any] = {"deprecated": True}
_RETRIES_HELP = "Deprecated: use max_attempts (retries = max_attempts - 1)"


class _Attempts(Schema):
    """``max_attempts`` (the manifest's ``retries.maxAttempts``), or the deprecated ``retries``."""

    max_attempts: int | None = Field(
        default=None, ge=1, le=101, description="Attempts of each step, the first included (1: no retry)"
    )
    retries: int | None = Field(
        default=None, ge=0, le=100, description=_RETRIES_HELP, json_schema_extra=_DEPRECATED_RETRIES
    )

    @model_validator(mode="after")
    def _one_name(self) -> _Attempts:
        if self.max_attempts is not None and self.retries is not None and self.retries != self.max_attempts - 1:
            raise ValueError("max_attempts and retries (deprecated) disagree: send max_attempts only")
        return self

    def retries_after_first(self) -> int | None:
        """What the registry stores: attempts after the first."""
        if self.max_attempts is not None:
            return self.max_attempts - 1
        return self.retries


class DstPolicy(Schema):
    """What a schedule does at a daylight-saving change (docs/schedules.md)."""

    nonexistent: Literal["shift", "skip"] = Field(
        default="shift",
        description="A wall time that does not exist (spring): run at the first valid minute after, or skip",
    )
    ambiguous: Literal["first", "both", "skip"] = Field(
        default="first", description="A wall time that happens twice (autumn): run at the first, at both, or skip"
    )


class PauseRequest(Schema):
    note: Text = Field(
        default="", max_length=2000, description="Why (shown on the schedule, in Temporal and the audit log)"
    )


class RetryBackoff(Schema):
    initial_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    backoff_coefficient: float = Field(default=2.0, ge=1, le=100)
    maximum_interval_seconds: float | None = Field(default=None, gt=0, le=86400)


class JobCreate(_Attempts):
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
    retry_backoff: RetryBackoff | None = None
    overlap: Overlap | None = None
    catchup_window_seconds: int | None = Field(default=None, ge=10, le=7 * 86400)
    config: JsonObject = Field(default_factory=dict)
    event_triggers: list[str] = Field(default_factory=list, description="Event patterns that start this job")
    notifications: dict[str, list[str]] | None = Field(
        default=None, description="Channels per outcome: on_failure / on_success / on_timeout"
    )
    dst: DstPolicy | None = Field(default=None, description="Daylight-saving policy (default shift / first)")
    jitter_seconds: int | None = Field(
        default=None,
        ge=0,
        le=3600,
        description="Start each scheduled run up to this many seconds late (spreads a fleet)",
    )


class JobUpdate(_Attempts):
    name: Printable | None = Field(default=None, min_length=1, max_length=200)
    description: Text | None = Field(default=None, max_length=2000)
    schedule: str | None = Field(default=None, max_length=120)
    timezone: str | None = Field(default=None, max_length=64)
    enabled: bool | None = None
    timeout_seconds: int | None = Field(default=None, ge=1, le=86400)
    retry_backoff: RetryBackoff | None = None
    overlap: Overlap | None = None
    catchup_window_seconds: int | None = Field(default=None, ge=10, le=7 * 86400)
    config: JsonObject | None = Field(
        default=None,
        description="The whole config (replaces the stored one). Secret fields are write-only: omitted or sent as "
        "******** they keep their stored value; a new value replaces it",
    )
    event_triggers: list[str] | None = None
    notifications: dict[str, list[str]] | None = None
    dst: DstPolicy | None = None
    jitter_seconds: int | None = Field(default=None, ge=0, le=3600)


class ExecuteRequest(Schema):
    config: JsonObject | None = Field(default=None, description="Config override for this run only")


class LastExecution(Schema):
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
    max_attempts: int = Field(description="Attempts of each step, the first included")
    retries: int = Field(description=_RETRIES_HELP, json_schema_extra=_DEPRECATED_RETRIES)
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
    origin: str = Field(default="api", description="api, or manifest: created by its job type's createJob")
    paused_reason: str | None = Field(
        default=None, description="Why the platform disabled it (e.g. its config does not fit an upgraded module)"
    )
    next_runs: list[datetime] = Field(default=[], description="The next scheduled runs (none while disabled)")
    last_execution: LastExecution | None = Field(default=None, description="The latest run; null: never run")
    schedule_state: dict[str, Any] | None = Field(
        default=None, description="Temporal's view of the schedule; only on a single job (GET /jobs/{id}), not in lists"
    )
    data_problem: str | None = Field(default=None, description="Set when the stored config cannot be served")
    dst: DstPolicy = Field(default_factory=DstPolicy, description="Daylight-saving policy of the schedule")
    jitter_seconds: int = 0
    schedule_paused: bool = Field(default=False, description="Paused by POST /jobs/{id}/pause (kept, fires nothing)")
    pause: dict[str, Any] | None = Field(default=None, description="note, by, at of the pause")


class SlotRead(Schema):
    """One nominal fire time of the job's schedule and what became of it."""

    at: datetime = Field(description="The nominal time (UTC)")
    wall_time: str | None = Field(default=None, description="The nominal time in the job's timezone")
    outcome: Literal["ran", "skipped", "missed", "pending"]
    reason: str | None = None
    execution_id: str | None = None
    execution_status: str | None = None
    trigger: str | None = Field(default=None, description="schedule or backfill")
    dst: str | None = Field(default=None, description="The daylight-saving policy applied to this slot, if any")


class SlotsRead(Schema):
    job_id: str
    timezone: str
    dst: DstPolicy
    settled_until: datetime | None = Field(description="Slots before this are stored; later ones are computed now")
    items: list[SlotRead]


class BackfillRequest(Schema):
    """Run the slots of [from, to) again (those without a run), with ``trigger = "backfill"``."""

    model_config = ConfigDict(from_attributes=True, extra="forbid", populate_by_name=True)

    from_: datetime = Field(alias="from", description="Start of the range (inclusive); no offset: UTC")
    to: datetime = Field(description="End of the range (exclusive), not in the future")
    dry_run: bool = Field(default=False, description="Answer the slots it would run, run nothing")
    overlap: Overlap | None = Field(
        default=None,
        description="allow_all: slots run side by side (rate-limited); any other: one at a time. Default: the job's",
    )


class BackfillSlot(Schema):
    at: datetime
    wall_time: str
    dst: str | None = None


class BackfillRead(Schema):
    model_config = ConfigDict(from_attributes=True, extra="forbid", populate_by_name=True)

    dry_run: bool
    count: int = Field(description="Slots it runs (those without a run yet)")
    already_run: int = Field(default=0, description="Slots of the range that have a run already (left out)")
    slots: list[BackfillSlot] = Field(default=[], description="The slots (the first 1,000 of a real backfill)")
    id: str | None = None
    job_id: str | None = None
    status: str | None = Field(default=None, description="running, completed or cancelled")
    started: int | None = Field(default=None, description="Slot runs started so far")
    overlap: str | None = None
    from_: datetime | None = Field(default=None, alias="from")
    to: datetime | None = None
    workflow_id: str | None = Field(default=None, description="The backfill's driver workflow")
    requested_by: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None


class JobStateRead(Schema):
    """A job's state document (``ctx.state``): what its handler keeps between runs."""

    job_id: str
    value: dict[str, Any] = Field(description="The document; {} before the first write")
    version: int = Field(description="Bumped on every write; 0: never written")
    updated_at: datetime | None
