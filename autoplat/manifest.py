"""Typed model of a module's ``manifest.json``, for module authors.

The model mirrors the manifest JSON Schema the platform validates against (field names are
snake_case in Python and camelCase in JSON). It checks structure and simple constraints; the
platform's registry runs the complete validation (cron syntax, timezones, references between
listeners, routes and jobs, config defaults, handler files) when a module is registered, and
``autoplat module validate`` shows the same report locally.

Example:
    >>> from pathlib import Path
    >>> from autoplat.manifest import load_manifest
    >>> manifest = load_manifest(Path("example_modules/data-sync"))
    >>> [job.name for job in manifest.jobs]
    ['hourly-sync', 'daily-report', 'health-check', 'notify-on-call']
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "AuthMethod",
    "EmittedEvent",
    "Events",
    "ForEach",
    "HttpMethod",
    "JobType",
    "Listener",
    "Manifest",
    "Notifications",
    "OverlapPolicy",
    "Permissions",
    "PythonSettings",
    "RetryPolicy",
    "Route",
    "RouteAuth",
    "RouteMode",
    "Schedule",
    "Series",
    "SeriesField",
    "SeriesRetention",
    "Service",
    "Step",
    "load_manifest",
]

_KEBAB = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
_SEMVER = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?"
    r"(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)

ModuleName = Annotated[str, StringConstraints(min_length=3, max_length=50, pattern=_KEBAB)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=_KEBAB)]
Handler = Annotated[
    str,
    StringConstraints(
        max_length=300, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
    ),
]
EventName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$"),
]
PayloadPath = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
]
_QUEUE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ChannelName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=_QUEUE)]
TaskQueue = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_QUEUE)]
Role = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[a-z][a-z0-9_.:-]*$")]
RelativePath = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_./-]+$")]
SchemaUri = Annotated[str, StringConstraints(max_length=2048)]
TimeoutSeconds = Annotated[int, Field(ge=1, le=86400)]

OverlapPolicy = Literal["skip", "buffer_one", "allow_all", "cancel_other"]
"""What a schedule does when the previous run is still running."""
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
"""HTTP method of a module route."""
RouteMode = Literal["sync", "async"]
"""``sync`` answers with the job result, ``async`` with the execution id."""
Service = Literal["http", "browser", "notify", "storage", "events", "series"]
"""A platform service reachable through ``JobContext``."""
AuthMethod = Literal["hmac-sha256"]
"""Signature scheme of a route."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
    )

    def to_json_dict(self) -> dict[str, Any]:
        """Return the JSON form (camelCase keys, ``None`` fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class RetryPolicy(_Model):
    """Retry policy of a job or step (a Temporal activity retry policy).

    Attributes:
        max_attempts: Total attempts including the first (1 = no retry).
        initial_interval_seconds: Delay before the first retry.
        backoff_coefficient: Multiplier of the delay after each retry.
        maximum_interval_seconds: Cap on the delay; not below the initial interval.
        non_retryable_errors: Exception type names that fail at once.
    """

    max_attempts: int = Field(default=1, ge=1, le=100)
    initial_interval_seconds: float = Field(default=1, gt=0, le=86400)
    backoff_coefficient: float = Field(default=2, ge=1, le=100)
    maximum_interval_seconds: float | None = Field(default=None, gt=0, le=86400)
    non_retryable_errors: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = None

    @model_validator(mode="after")
    def _maximum_not_below_initial(self) -> RetryPolicy:
        maximum = self.maximum_interval_seconds
        if maximum is not None and maximum < self.initial_interval_seconds:
            raise ValueError("maximumIntervalSeconds must not be below initialIntervalSeconds")
        return self


class DstPolicy(_Model):
    """What a schedule does at a daylight-saving change.

    Attributes:
        nonexistent: A wall time skipped in spring: ``shift`` (run at the first valid minute after
            the gap) or ``skip``.
        ambiguous: A wall time repeated in autumn: ``first``, ``both`` or ``skip``.
    """

    nonexistent: Literal["shift", "skip"] = "shift"
    ambiguous: Literal["first", "both", "skip"] = "first"


class Schedule(_Model):
    """A cron schedule (a Temporal Schedule).

    Attributes:
        cron: 5 fields, 6 fields with seconds first, or an alias such as ``@daily``.
        timezone: IANA timezone the expression is evaluated in.
        dst: The daylight-saving policy (default ``shift`` / ``first``).
        jitter_seconds: Start each run up to this many seconds after its nominal time.
    """

    cron: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "UTC"
    dst: DstPolicy | None = None
    jitter_seconds: int | None = Field(default=None, ge=0, le=3600)


class ForEach(_Model):
    """A step that runs its handler once per item of the previous step's list (docs/sdk.md).

    Attributes:
        concurrency: How many items run at once.
        max_items: A longer list fails the step.
        continue_on_item_error: A failed item does not fail the step; the next step gets
            ``{"ok", "value"}`` / ``{"ok", "error"}`` per item.
    """

    concurrency: int = Field(default=10, ge=1, le=100)
    max_items: int = Field(default=1000, ge=1, le=10000)
    continue_on_item_error: bool = False


class Step(_Model):
    """One step of a multi-step job.

    Attributes:
        name: Unique within the job, kebab-case.
        handler: ``package.module:function``.
        timeout_seconds: Overrides the job timeout for this step.
        retries: Overrides the job retry policy for this step.
        for_each: Fan out over the previous step's list (not on a job's first step).
    """

    name: Name
    handler: Handler
    timeout_seconds: TimeoutSeconds | None = None
    retries: RetryPolicy | None = None
    for_each: ForEach | None = None


class Notifications(_Model):
    """Channels the platform notifies when a run ends.

    Attributes:
        on_failure: Channels notified when a run fails.
        on_success: Channels notified when a run completes.
        on_timeout: Channels notified when a run times out.
    """

    on_failure: list[ChannelName] | None = None
    on_success: list[ChannelName] | None = None
    on_timeout: list[ChannelName] | None = None


def _check_config_schema(schema: dict[str, Any]) -> dict[str, Any]:
    if "type" in schema and schema["type"] != "object":
        raise ValueError('a config schema must have "type": "object"')
    return schema


class Limits(_Model):
    """Resource limits of one run of a job type (each step), capped by the platform's settings.

    Attributes:
        memory_mb: Memory (address space) of the handler's process, in MiB.
        cpu_seconds: CPU time of one attempt, in seconds (default: its timeout).
    """

    memory_mb: int | None = Field(default=None, ge=64, le=65536)
    cpu_seconds: int | None = Field(default=None, ge=1, le=86400)


class CreateJob(_Model):
    """Overrides of the job a job type asks to be created when its module is enabled.

    Attributes:
        name: Name of the job (default: the job type's name).
        schedule: Its schedule (default: the job type's; ``None`` written out: none).
        config: Overrides of the config defaults (no secret fields).
        enabled: Whether the job starts enabled.
    """

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    schedule: Schedule | None = None
    config: dict[str, Any] | None = None
    enabled: bool = True


class JobType(_Model):
    """A job type: a Temporal workflow type ``<module>.<job>``.

    Exactly one of ``handler`` and ``steps`` is set.

    Attributes:
        name: Unique within the module, kebab-case.
        display_name: Human-readable name.
        description: What the job does.
        handler: ``package.module:function`` called with a ``JobContext``.
        steps: Ordered steps, each its own activity.
        schedule: Cron schedule, if any.
        timeout_seconds: Start-to-close timeout of one attempt (of each step).
        retries: Retry policy.
        overlap: Schedule overlap policy.
        catchup_window_seconds: How late a missed scheduled run may still start.
        config: JSON Schema of the job configuration.
        notifications: Channels notified when a run ends.
        task_queue: Dedicated Temporal task queue.
        limits: Memory and CPU limits of each run (see docs/sdk.md, "Where handlers run").
        create_job: Create a job of this type when the module is enabled (``True``, or
            :class:`CreateJob` overrides); see docs/modules.md, "Jobs from the manifest".
    """

    name: Name
    display_name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    description: Annotated[str, StringConstraints(max_length=5000)]
    handler: Handler | None = None
    steps: list[Step] | None = Field(default=None, min_length=1, max_length=50)
    schedule: Schedule | None = None
    timeout_seconds: TimeoutSeconds = 300
    retries: RetryPolicy | None = None
    overlap: OverlapPolicy = "skip"
    catchup_window_seconds: int | None = Field(default=None, ge=10, le=31_536_000)
    config: dict[str, Any] | None = None
    notifications: Notifications | None = None
    task_queue: TaskQueue | None = None
    limits: Limits | None = None
    create_job: bool | CreateJob | None = None

    @model_validator(mode="after")
    def _handler_xor_steps(self) -> JobType:
        if (self.handler is None) == (self.steps is None):
            raise ValueError('a job needs exactly one of "handler" or "steps"')
        return self

    @field_validator("config")
    @classmethod
    def _config_is_object_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _check_config_schema(value)


class EmittedEvent(_Model):
    """An event the module emits.

    Attributes:
        name: Dotted lower-case event name.
        description: What the event means.
        payload_schema: JSON Schema of the payload.
    """

    name: EventName
    description: Annotated[str, StringConstraints(max_length=5000)] | None = None
    payload_schema: dict[str, Any] | None = None


class Listener(_Model):
    """Start a job when a matching event is accepted.

    Attributes:
        pattern: Dotted event name; ``*`` matches one segment, ``**`` any number (even none).
        job: Name of a job of this module.
        filter: Payload path -> expected value; all must be equal.
        mapping: Config key -> payload path, overriding the job config for that run.
        description: Why the job listens.
    """

    pattern: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[a-z0-9_*.-]+$")]
    job: Name
    filter: dict[PayloadPath, Any] | None = None
    mapping: dict[Annotated[str, StringConstraints(min_length=1, max_length=100)], PayloadPath] | None = None
    description: Annotated[str, StringConstraints(max_length=5000)] | None = None


class Events(_Model):
    """Events the module emits and listens to.

    Attributes:
        emits: Event names, or objects with a name, description and payload schema.
        listeners: Jobs started by events.
    """

    emits: list[EventName | EmittedEvent] = Field(default_factory=list)
    listeners: list[Listener] = Field(default_factory=list)


class RouteAuth(_Model):
    """Signature verification of a route's requests.

    Attributes:
        type: Signature scheme.
        secret_config_key: Config key holding the shared secret.
        header: Header carrying the signature.
        timestamp_header: Header carrying the signed timestamp.
        tolerance_seconds: Maximum age of the timestamp.
    """

    type: AuthMethod
    secret_config_key: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    header: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "X-Signature"
    timestamp_header: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "X-Timestamp"
    tolerance_seconds: int = Field(default=300, ge=1, le=86400)


class Route(_Model):
    """An HTTP endpoint under ``/api/v1/m/<module>`` invoking a job.

    Attributes:
        method: HTTP method.
        path: Path starting with ``/``; ``{param}`` segments are passed to the job.
        job: Name of a job of this module.
        permission: Role an authenticated caller needs.
        public: Serve without a platform login.
        mode: ``sync`` or ``async``.
        wait_seconds: How long a sync call waits for the result before answering 504.
        body_schema: JSON Schema of the request body.
        query_schema: JSON Schema of the query parameters.
        auth: Signature verification.
    """

    method: HttpMethod
    path: Annotated[
        str,
        StringConstraints(
            max_length=500,
            pattern=r"^/([A-Za-z0-9._~-]+|\{[A-Za-z_][A-Za-z0-9_]*\})?(/([A-Za-z0-9._~-]+|\{[A-Za-z_][A-Za-z0-9_]*\}))*$",
        ),
    ]
    job: Name
    permission: Role | None = None
    public: bool = False
    mode: RouteMode = "sync"
    wait_seconds: float | None = Field(default=None, gt=0, le=3600)
    body_schema: dict[str, Any] | None = None
    query_schema: dict[str, Any] | None = None
    auth: RouteAuth | None = None


SeriesName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9_]{0,62}$")]


class SeriesField(_Model):
    """A numeric field of a series.

    Attributes:
        type: ``gauge`` (a level read at a time) or ``counter`` (a cumulative total whose increase
            over a period queries sum; a drop is read as a reset).
        unit: Display unit, e.g. ``kWh``.
        description: What it measures.
    """

    type: Literal["gauge", "counter"]
    unit: Annotated[str, StringConstraints(max_length=32)] | None = None
    description: Annotated[str, StringConstraints(max_length=5000)] | None = None


class SeriesRetention(_Model):
    """How long a series is kept, in days.

    Attributes:
        raw_days: Raw points (older timestamps are refused on write).
        rollup_days: Hourly rollups (at least ``raw_days``).
    """

    raw_days: int = Field(default=400, ge=1, le=36500)
    rollup_days: int = Field(default=1826, ge=1, le=36500)


class Series(_Model):
    """A time series the module writes with ``ctx.series`` (docs/series.md).

    Attributes:
        name: snake_case, unique in the module.
        description: What it records.
        fields: Field name -> :class:`SeriesField`.
        labels: Dimensions every point names (e.g. ``meter``).
        retention: How long points and rollups are kept.
    """

    name: SeriesName
    description: Annotated[str, StringConstraints(max_length=5000)] | None = None
    fields: dict[SeriesName, SeriesField] = Field(min_length=1, max_length=50)
    labels: list[SeriesName] = Field(default_factory=list, max_length=10)
    retention: SeriesRetention | None = None


class Permissions(_Model):
    """What the module's code may reach.

    Attributes:
        hosts: Host names the http and browser services may reach (``*.`` prefix for subdomains).
        services: Platform services the code uses.
    """

    hosts: list[
        Annotated[
            str,
            StringConstraints(
                max_length=253,
                pattern=r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
            ),
        ]
    ] = Field(default_factory=list)
    services: list[Service] = Field(default_factory=list)


class PythonSettings(_Model):
    """How the platform loads the module's code.

    Attributes:
        code_root: Folder added to ``sys.path``, relative to the module folder.
    """

    code_root: RelativePath = "."

    @field_validator("code_root")
    @classmethod
    def _relative_inside(cls, value: str) -> str:
        if value.startswith("/") or ".." in PurePosixPath(value).parts:
            raise ValueError("codeRoot must be a relative path without '..'")
        return value


class Manifest(_Model):
    """A module manifest (``manifest.json``).

    Attributes:
        schema_uri: Optional ``$schema`` URI for editors.
        name: Module name, kebab-case, 3-50 characters.
        version: SemVer 2.0.0 version.
        display_name: Human-readable name.
        description: What the module does.
        author: Who maintains it.
        license: SPDX license expression.
        python: Code loading settings.
        jobs: Job types.
        events: Emitted events and listeners.
        routes: HTTP routes.
        series: Time series (docs/series.md).
        config: JSON Schema of the module-level configuration.
        permissions: Hosts and services the code may use.
        dependencies: Module name -> npm-style semver range.
        metadata: Free-form data.
        ui: Console pages (docs/manifest.md#ui), kept as JSON; the platform validates them.
        alerts: Default alert rules (docs/manifest.md#alerts), kept as JSON; the platform validates them.
    """

    schema_uri: SchemaUri | None = Field(default=None, alias="$schema")
    name: ModuleName
    version: Annotated[str, StringConstraints(max_length=256, pattern=_SEMVER)]
    display_name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    description: Annotated[str, StringConstraints(max_length=5000)]
    author: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    license: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    python: PythonSettings | None = None
    jobs: list[JobType] = Field(max_length=200)
    events: Events | None = None
    routes: list[Route] | None = None
    series: list[Series] | None = Field(default=None, max_length=50)
    config: dict[str, Any] | None = None
    permissions: Permissions | None = None
    dependencies: dict[ModuleName, Annotated[str, StringConstraints(max_length=256)]] | None = None
    metadata: dict[str, Any] | None = None
    ui: dict[str, Any] | None = None
    alerts: list[dict[str, Any]] | None = Field(default=None, max_length=50)

    @field_validator("config")
    @classmethod
    def _config_is_object_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _check_config_schema(value)

    def job(self, name: str) -> JobType:
        """Return the job type called ``name``.

        Raises:
            KeyError: If there is no such job.
        """
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)


def load_manifest(path: Path) -> Manifest:
    """Read and parse a module's manifest.

    Args:
        path: The module folder (containing ``manifest.json``), or the manifest file itself.

    Returns:
        The parsed manifest.

    Raises:
        FileNotFoundError: If there is no manifest.
        json.JSONDecodeError: If the file is not JSON.
        pydantic.ValidationError: If the manifest does not fit the model.
    """
    file = path / "manifest.json" if path.is_dir() else path
    return Manifest.model_validate(json.loads(file.read_text(encoding="utf-8")))
