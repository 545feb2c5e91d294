"""Schemas of the module registry API (``/api/v1/modules``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from api.schemas.common import JsonObject, Schema


class ModuleRegister(Schema):
    """JSON body of ``POST /modules`` and ``POST /modules/{name}/upgrade`` (the other form is multipart)."""

    path: str = Field(
        min_length=1,
        max_length=4096,
        description="Absolute folder on the API server holding the module code (read with the API's rights).",
    )
    manifest: dict[str, Any] | None = Field(
        default=None, description="The manifest; when omitted, manifest.json is read from `path`."
    )


class ManifestIssueRead(Schema):
    path: str = Field(description="JSON pointer of the value at fault; empty for the whole document")
    code: str
    message: str


class ValidationResult(Schema):
    valid: bool
    errors: list[ManifestIssueRead]
    warnings: list[ManifestIssueRead]


class ModuleSummary(Schema):
    """A module in a list: what a table shows, without its manifest or configuration."""

    id: str
    name: str
    version: str
    display_name: str
    description: str
    author: str | None
    status: str
    status_reason: str | None
    bundle_sha256: str | None
    revision: int
    created_at: datetime
    updated_at: datetime
    installed_at: datetime | None
    enabled_at: datetime | None
    allowed_actions: list[str] = Field(description="Lifecycle actions allowed from the current status")
    job_types: int = Field(description="Number of job types in the manifest")


class ModuleRead(ModuleSummary):
    """One module with its whole manifest and configuration (``GET /modules/{name}``, lifecycle answers)."""

    manifest: dict[str, Any] = Field(description="The full manifest of the current version")
    config: dict[str, Any] = Field(description="Module configuration with defaults; secrets read ********")


class ModuleVersionRead(Schema):
    id: str
    version: str
    current: bool
    bundle_sha256: str | None
    bundle_size: int | None
    source: str | None
    code_path: str | None
    created_at: datetime
    manifest: dict[str, Any]


class RetryPolicyRead(Schema):
    max_attempts: int
    initial_interval_seconds: float
    backoff_coefficient: float
    maximum_interval_seconds: float | None
    non_retryable_errors: list[str]


class ForEachRead(Schema):
    concurrency: int = Field(description="Items run at once")
    max_items: int = Field(description="Longest list the step accepts")
    continue_on_item_error: bool = Field(
        description="A failed item is reported to the next step instead of failing the run"
    )


class StepRead(Schema):
    name: str | None
    handler: str | None
    timeout_seconds: int | None
    retry_policy: RetryPolicyRead | None
    for_each: ForEachRead | None = Field(
        default=None, description="A fan-out step: one activity per item of the previous step's list"
    )


class JobTypeRead(Schema):
    name: str
    display_name: str
    description: str
    workflow_type: str = Field(description="Temporal workflow type: <module>.<job>")
    handler: str | None
    steps: list[StepRead]
    schedule: str | None = Field(description="Default cron expression, or null")
    timezone: str | None
    config_schema: dict[str, Any]
    defaults: dict[str, Any] = Field(description="Config defaults from the schema (secrets masked)")
    secret_fields: list[str]
    timeout_seconds: int
    max_attempts: int = Field(description="Attempts of each step, the first included (the manifest's maxAttempts)")
    retries: int = Field(
        description="Deprecated: use max_attempts (retries = max_attempts - 1)", json_schema_extra={"deprecated": True}
    )
    retry_policy: RetryPolicyRead
    overlap: str
    catchup_window_seconds: int
    task_queue: str | None
    notifications: dict[str, Any]
    listeners: list[dict[str, Any]] = Field(description="Manifest listeners that start this job type")
    create_job: bool | dict[str, Any] = Field(
        default=False, description="The manifest's createJob: a job of this type is made when the module is enabled"
    )


class ModuleConfigRead(Schema):
    config: dict[str, Any] = Field(description="Configuration with defaults applied; set secrets read ********")
    config_schema: dict[str, Any] = Field(description="The manifest's module-level config schema")
    secret_fields: list[str]


class ModuleConfigUpdate(Schema):
    config: JsonObject = Field(
        description="The whole configuration (PUT replaces it). A secret omitted or sent as ******** keeps "
        "its stored value; a secret sent as null is removed."
    )
