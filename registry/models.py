"""SQLAlchemy 2 typed models of the registry.

Every change to these models comes with an Alembic revision in ``registry/migrations``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Role(enum.StrEnum):
    admin = "admin"
    operator = "operator"
    viewer = "viewer"


class ModuleStatus(enum.StrEnum):
    REGISTERED = "REGISTERED"
    INSTALLED = "INSTALLED"
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"
    FAILED = "FAILED"


class ExecutionStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @property
    def is_final(self) -> bool:
        return self not in (ExecutionStatus.PENDING, ExecutionStatus.RUNNING)


class Trigger(enum.StrEnum):
    schedule = "schedule"
    manual = "manual"
    event = "event"
    api = "api"
    http = "http"
    backfill = "backfill"


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    username: Mapped[str | None] = mapped_column(String(64), unique=True)
    full_name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.viewer.value)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RefreshSession(Base):
    """One refresh token. Tokens of one login share a ``family_id``; reuse revokes the family."""

    __tablename__ = "refresh_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    family_id: Mapped[str] = mapped_column(String(36), index=True)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_reason: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(400))


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_id: Mapped[str | None] = mapped_column(String(36), index=True)
    actor_email: Mapped[str | None] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))
    ip: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class Module(Base):
    __tablename__ = "modules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    version: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=ModuleStatus.REGISTERED.value, index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: Immutable folder holding this version's code (importable root).
    code_path: Mapped[str | None] = mapped_column(Text)
    bundle_sha256: Mapped[str | None] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: Secret config values, encrypted (Fernet token of a JSON object).
    secrets: Mapped[str | None] = mapped_column(Text)
    #: Bumped on every change: routes and workers compare it to refresh caches.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    installed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    versions: Mapped[list[ModuleVersion]] = relationship(
        back_populates="module", cascade="all, delete-orphan", passive_deletes=True
    )


class ModuleVersion(Base):
    """Every version a module has been registered with; running executions pin one."""

    __tablename__ = "module_versions"
    __table_args__ = (UniqueConstraint("module_id", "version", name="uq_module_versions_module_version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    module_id: Mapped[str] = mapped_column(ForeignKey("modules.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSONType)
    code_path: Mapped[str | None] = mapped_column(Text)
    bundle_sha256: Mapped[str | None] = mapped_column(String(64))
    #: The code archive (a packed server folder, or the uploaded .zip / .tar.gz as uploaded).
    #: Deferred: loaded only to unpack it (registry/codestore.py).
    bundle: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    bundle_size: Mapped[int | None] = mapped_column(Integer)
    #: Where the code came from: ``path:<server folder>`` or ``upload:<file name>``.
    source: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    module: Mapped[Module] = relationship(back_populates="versions")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("module_name", "name", name="uq_jobs_module_name_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    module_id: Mapped[str] = mapped_column(ForeignKey("modules.id", ondelete="RESTRICT"), index=True)
    module_name: Mapped[str] = mapped_column(String(50), index=True)
    job_type: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    schedule: Mapped[str | None] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    timeout_seconds: Mapped[int] = mapped_column(Integer, default=300)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    retry_backoff: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    overlap: Mapped[str] = mapped_column(String(16), default="skip")
    catchup_window_seconds: Mapped[int] = mapped_column(Integer, default=60)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    secrets: Mapped[str | None] = mapped_column(Text)
    #: Event patterns that trigger this job (besides its module's manifest listeners).
    event_triggers: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    notifications: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: Bumped on every change; schedules carry it so the reconciler spots stale ones.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    #: ``api`` (created by a caller) or ``manifest`` (its job type's ``createJob``, when the module
    #: was enabled: one such job per job type).
    origin: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    #: Why the platform disabled it (e.g. its config does not fit an upgraded module); cleared on enable.
    paused_reason: Mapped[str | None] = mapped_column(Text)
    #: Daylight-saving policy of the schedule (docs/schedules.md): ``shift``/``skip`` a nonexistent
    #: wall time, ``first``/``both``/``skip`` a repeated one.
    dst_nonexistent: Mapped[str] = mapped_column(String(8), default="shift", server_default="shift")
    dst_ambiguous: Mapped[str] = mapped_column(String(8), default="first", server_default="first")
    #: Temporal schedule jitter: each action starts up to this many seconds after its nominal time.
    jitter_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: The schedule is paused (kept in Temporal, fires nothing) by ``POST /jobs/{id}/pause``.
    schedule_paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    schedule_pause_note: Mapped[str | None] = mapped_column(Text)
    schedule_paused_by: Mapped[str | None] = mapped_column(String(320))
    schedule_paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The slot ledger is settled (every nominal time before this has its outcome stored).
    slots_settled_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Execution(Base):
    """Mirror of one Temporal workflow run (a job invocation). One row per run, never duplicated."""

    __tablename__ = "executions"
    __table_args__ = (
        Index("ix_executions_job_created", "job_id", "created_at"),
        Index("ix_executions_status_created", "status", "created_at"),
        Index("ix_executions_module_created", "module_name", "created_at"),
        Index("ix_executions_created", "created_at"),
        UniqueConstraint("job_id", "idempotency_key", name="uq_executions_job_idempotency"),
        #: One run per (schedule, nominal time): schedule, catch-up and backfill runs of a slot.
        UniqueConstraint("job_id", "nominal_at", name="uq_executions_job_nominal"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    module_name: Mapped[str] = mapped_column(String(50))
    module_version: Mapped[str | None] = mapped_column(String(64))
    job_type: Mapped[str] = mapped_column(String(100))
    workflow_id: Mapped[str] = mapped_column(String(255), unique=True)
    run_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ExecutionStatus.PENDING.value)
    status_reason: Mapped[str | None] = mapped_column(Text)
    trigger: Mapped[str] = mapped_column(String(16), index=True)
    event_id: Mapped[str | None] = mapped_column(String(36), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    input: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    result: Mapped[Any | None] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    logs: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    #: The nominal fire time of a scheduled or backfilled run (the slot it ran), else None.
    nominal_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The run's OpenTelemetry trace id when the platform traces (docs/observability.md), else None.
    trace_id: Mapped[str | None] = mapped_column(String(32))


class ScheduleSlot(Base):
    """The slot ledger: one nominal fire time of a scheduled job and its outcome, stored once
    settled (``ran`` / ``skipped`` / ``missed``; docs/schedules.md)."""

    __tablename__ = "schedule_slots"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    nominal_at: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    execution_id: Mapped[str | None] = mapped_column(String(36))
    #: The daylight-saving policy applied to this slot (``shifted from 03:30``), if any.
    dst: Mapped[str | None] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Backfill(Base):
    """A backfill of a job's past slots, run by a maintenance workflow at a bounded rate."""

    __tablename__ = "backfills"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    from_at: Mapped[datetime] = mapped_column(UTCDateTime)
    to_at: Mapped[datetime] = mapped_column(UTCDateTime)
    overlap: Mapped[str] = mapped_column(String(16))
    #: ``running``, ``completed`` or ``cancelled``.
    status: Mapped[str] = mapped_column(String(16), default="running")
    slots: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    started: Mapped[int] = mapped_column(Integer, default=0)
    workflow_id: Mapped[str] = mapped_column(String(255))
    requested_by: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ExecutionCount(Base):
    """Executions per UTC hour of ``created_at`` and (job, module, job type, status), kept by
    database triggers on ``executions`` (migration 0005): stats read hours, not history."""

    __tablename__ = "execution_counts"
    __table_args__ = (
        Index("ix_execution_counts_job_hour", "job_key", "hour"),
        Index("ix_execution_counts_module_hour", "module_name", "hour"),
    )

    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    #: The job's id, or "" for runs without a job (deleted job, ad-hoc module route runs).
    job_key: Mapped[str] = mapped_column(String(36), primary_key=True)
    module_name: Mapped[str] = mapped_column(String(50), primary_key=True)
    job_type: Mapped[str] = mapped_column(String(100), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    duration_n: Mapped[int] = mapped_column(BigInteger)
    duration_sum: Mapped[int] = mapped_column(BigInteger)


class Event(Base):
    """A stored event (the outbox). ``seq`` orders the live stream and ``Last-Event-ID`` replay."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_name_received", "name", "received_at"),
        Index("ix_events_dispatch", "dispatch_status", "next_attempt_at"),
        Index("ix_events_received", "received_at"),
    )

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    source: Mapped[str | None] = mapped_column(String(200), index=True)
    module_name: Mapped[str | None] = mapped_column(String(50))
    execution_id: Mapped[str | None] = mapped_column(String(36))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatch_status: Mapped[str] = mapped_column(String(16), default="PENDING")
    dispatch_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatch_error: Mapped[str | None] = mapped_column(Text)
    #: The W3C trace context the event was recorded in (tracing on): its runs join that trace.
    traceparent: Mapped[str | None] = mapped_column(String(64))


class EventDelivery(Base):
    """One (event, job) trigger. The unique pair is the exactly-once guarantee on our side."""

    __tablename__ = "event_deliveries"
    __table_args__ = (UniqueConstraint("event_id", "job_id", name="uq_event_deliveries_event_job"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), index=True)
    job_id: Mapped[str] = mapped_column(String(36))
    workflow_id: Mapped[str] = mapped_column(String(255))
    execution_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModuleDocument(Base):
    """A document of a module's private key-value store (``ctx.storage``).

    Rows are namespaced by module: the storage service only ever filters by the calling module's
    id, and deleting the module deletes its documents.
    """

    __tablename__ = "module_documents"
    __table_args__ = (
        UniqueConstraint("module_id", "key", name="uq_module_documents_module_key"),
        Index("ix_module_documents_expires", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    module_id: Mapped[str] = mapped_column(ForeignKey("modules.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(512))
    value: Mapped[Any] = mapped_column(JSONType)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class JobState(Base):
    """Per-job state a handler reads and updates between runs (``ctx.state``), e.g. a sync cursor."""

    __tablename__ = "job_states"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_by: Mapped[str | None] = mapped_column(String(36))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Artifact(Base):
    """A file a run produced (a screenshot, a PDF, a download), listed and served by the API."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("execution_id", "name", name="uq_artifacts_execution_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    sha256: Mapped[str] = mapped_column(String(64))
    #: Where the bytes live: ``db`` (``data`` below) or a path relative to AUTOPLAT_ARTIFACTS_DIR.
    storage: Mapped[str] = mapped_column(String(16), default="db")
    path: Mapped[str | None] = mapped_column(String(1024))
    data: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    step: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- time series (ctx.series, docs/series.md) -------------------------------------------------------
_SERIES_ID = Integer
_LABEL_SET_ID = BigInteger().with_variant(Integer, "sqlite")


class Series(Base):
    """A module's declared series, as first written: ids for the points, the order of its fields.

    Fields keep their index (``series_points.field``) for good: a field the manifest adds later is
    appended. Ids are never reused (SQLite ``AUTOINCREMENT``), so a module deleted and registered
    again never sees the points of its predecessor (they go with their partitions).
    """

    __tablename__ = "series"
    __table_args__ = (
        UniqueConstraint("module_id", "name", name="uq_series_module_name"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(_SERIES_ID, primary_key=True, autoincrement=True)
    module_id: Mapped[str] = mapped_column(ForeignKey("modules.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    #: Field names in index order.
    fields: Mapped[list[str]] = mapped_column(JSONType, default=list)
    raw_retention_days: Mapped[int] = mapped_column(Integer)
    rollup_retention_days: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class SeriesLabelSet(Base):
    """One label set of a series (``{"meter": "m1"}``), identified by the digest of its sorted JSON."""

    __tablename__ = "series_label_sets"
    __table_args__ = (
        UniqueConstraint("series_id", "digest", name="uq_series_label_sets_series_digest"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(_LABEL_SET_ID, primary_key=True, autoincrement=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict[str, str]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SeriesPoint(Base):
    """One field value of one point. On PostgreSQL the table is partitioned by month of ``ts``
    (partitions ``series_points_pYYYYMM``, made ahead by the maintenance schedule and on demand;
    retention drops them). No foreign keys: dropping a partition is the only delete."""

    __tablename__ = "series_points"
    __table_args__ = {"postgresql_partition_by": "RANGE (ts)"}

    series_id: Mapped[int] = mapped_column(_SERIES_ID, primary_key=True)
    label_set_id: Mapped[int] = mapped_column(_LABEL_SET_ID, primary_key=True)
    field: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    value: Mapped[float] = mapped_column(Double)


class SeriesRollup(Base):
    """Hourly aggregates of one field of one label set (PostgreSQL; partitioned by year of ``hour``).

    ``increase`` counts the counter's increase between the hour's own points (resets handled); a
    query adds the step from the previous hour's last value."""

    __tablename__ = "series_rollups"
    __table_args__ = {"postgresql_partition_by": "RANGE (hour)"}

    series_id: Mapped[int] = mapped_column(_SERIES_ID, primary_key=True)
    label_set_id: Mapped[int] = mapped_column(_LABEL_SET_ID, primary_key=True)
    field: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    sum: Mapped[float] = mapped_column(Double)
    min: Mapped[float] = mapped_column(Double)
    max: Mapped[float] = mapped_column(Double)
    first: Mapped[float] = mapped_column(Double)
    last: Mapped[float] = mapped_column(Double)
    increase: Mapped[float] = mapped_column(Double)


class SeriesDailyRollup(Base):
    """Daily (UTC) aggregates made from the hourly rollups, for day, week and month buckets: a year
    of one label set is 365 rows instead of 8760. Small: not partitioned; retention deletes old days."""

    __tablename__ = "series_rollups_daily"

    series_id: Mapped[int] = mapped_column(_SERIES_ID, primary_key=True)
    label_set_id: Mapped[int] = mapped_column(_LABEL_SET_ID, primary_key=True)
    field: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    sum: Mapped[float] = mapped_column(Double)
    min: Mapped[float] = mapped_column(Double)
    max: Mapped[float] = mapped_column(Double)
    first: Mapped[float] = mapped_column(Double)
    last: Mapped[float] = mapped_column(Double)
    increase: Mapped[float] = mapped_column(Double)


class SeriesDirtyHour(Base):
    """An hour whose points changed since it was rolled up (queries read it from the points)."""

    __tablename__ = "series_dirty_hours"

    series_id: Mapped[int] = mapped_column(_SERIES_ID, primary_key=True)
    label_set_id: Mapped[int] = mapped_column(_LABEL_SET_ID, primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)


# --- alerting (docs/alerting.md) ------------------------------------------------------------------
class AlertRule(Base):
    """A condition on a series, on events or on job outcomes that opens incidents when it holds."""

    __tablename__ = "alert_rules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    severity: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    message: Mapped[str] = mapped_column(Text)
    #: ``series``, ``event`` or ``job``; ``condition`` holds that source's fields.
    source: Mapped[str] = mapped_column(String(16))
    condition: Mapped[dict[str, Any]] = mapped_column(JSONType)
    interval_seconds: Mapped[int] = mapped_column(Integer, default=60)
    cooldown_seconds: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    routes: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    escalation: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    resolve_after_minutes: Mapped[float | None] = mapped_column(Double)
    #: ``api`` (made by an operator) or ``module`` (shipped in ``module_name``'s manifest as ``module_rule``).
    origin: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    module_name: Mapped[str | None] = mapped_column(String(50), index=True)
    module_rule: Mapped[str | None] = mapped_column(String(200))
    #: A module's rule an operator changed: upgrades leave it alone; "reset" puts the default back.
    modified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: A modified module rule kept after it left the module's manifest.
    detached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Set while the rule's module is disabled: not evaluated (the operator's ``enabled`` is kept).
    paused_reason: Mapped[str | None] = mapped_column(String(200))
    last_evaluated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AlertState(Base):
    """What evaluation remembers of one (rule, label set): consecutive breaches, firing or not."""

    __tablename__ = "alert_states"

    rule_id: Mapped[str] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"), primary_key=True)
    group_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    breaches: Mapped[int] = mapped_column(Integer, default=0)
    firing: Mapped[bool] = mapped_column(Boolean, default=False)
    value: Mapped[float | None] = mapped_column(Double)
    last_opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When the condition first held in the current run of breaches (evaluation lag).
    since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Incident(Base):
    """One incident of a (rule, label set) or of a module's dedup key: a Temporal workflow's mirror.

    Every write comes from the incident workflow's activities, one at a time, so ``timeline``
    (transitions with actor, time and note) is appended without races."""

    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_status_opened", "status", "opened_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    rule_id: Mapped[str | None] = mapped_column(String(36), index=True)
    rule_name: Mapped[str] = mapped_column(String(200))
    module_name: Mapped[str | None] = mapped_column(String(50))
    dedup_key: Mapped[str | None] = mapped_column(String(200))
    group_key: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(500))
    message: Mapped[str] = mapped_column(Text)
    value: Mapped[float | None] = mapped_column(Double)
    workflow_id: Mapped[str] = mapped_column(String(255))
    run_id: Mapped[str] = mapped_column(String(64))
    fire_count: Mapped[int] = mapped_column(Integer, default=1)
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    condition_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_fired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    timeline: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)


class IncidentNotification(Base):
    """One notification of one incident transition to one channel; ``key`` is its idempotency key
    (unique), sent as ``X-Autoplat-Delivery`` / ``Message-ID``."""

    __tablename__ = "incident_notifications"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"), index=True)
    transition: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(100))
    #: ``sending`` (an attempt is out), ``sent`` or ``failed`` (final).
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
