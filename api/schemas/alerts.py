"""Schemas of alert rules and incidents (``/api/v1/alerts``). The structure is typed here; what
depends on the registry (a series and its fields, a job, a timezone, template paths) is checked by
registry/services/alerts.py, which names the field it refuses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import JsonObject, Printable, Schema, Text

Severity = Literal["info", "warning", "critical"]
Source = Literal["series", "event", "job"]
Origin = Literal["api", "module"]


class AlertRuleBase(Schema):
    description: Text | None = Field(default=None, max_length=4000)
    enabled: bool = True
    labels: dict[str, Printable] = Field(default_factory=dict, description="Labels every incident of the rule carries")
    interval_seconds: int | None = Field(
        default=None, ge=1, le=86400, description="Series and job rules: evaluated every so often (default 60)"
    )
    cooldown_seconds: int = Field(
        default=0, ge=0, le=30 * 86400, description="Least time between two incidents of one label set"
    )
    active: list[JsonObject] = Field(
        default_factory=list,
        description='Active windows: [{"days": ["mon", ...], "start": "22:00", "end": "06:00", '
        '"tz": "Europe/Berlin"}]; none = always',
    )
    routes: list[JsonObject] = Field(
        default_factory=list,
        description='[{"severities": ["critical"], "channels": ["ops-webhook"], '
        '"on": ["opened", "escalated", "resolved"]}]',
    )
    escalation: JsonObject | None = Field(
        default=None, description='{"after_minutes": 15, "severity": "critical", "channels": ["pager"]}'
    )
    resolve_after_minutes: float | None = Field(
        default=None, gt=0, description="Resolve an incident after this long without a new alert (event rules)"
    )


class AlertRuleCreate(AlertRuleBase):
    name: Printable = Field(min_length=1, max_length=200)
    severity: Severity = "warning"
    message: Text = Field(min_length=1, max_length=4000, description="A template with {{path}} placeholders")
    source: Source
    condition: JsonObject = Field(description="The fields of a series, event or job condition (docs/alerting.md)")


class AlertRuleUpdate(Schema):
    """Any of the fields of a rule; the result is checked whole."""

    name: Printable | None = Field(default=None, min_length=1, max_length=200)
    description: Text | None = Field(default=None, max_length=4000)
    enabled: bool | None = None
    severity: Severity | None = None
    labels: dict[str, Printable] | None = None
    message: Text | None = Field(default=None, min_length=1, max_length=4000)
    source: Source | None = None
    condition: JsonObject | None = None
    interval_seconds: int | None = Field(default=None, ge=1, le=86400)
    cooldown_seconds: int | None = Field(default=None, ge=0, le=30 * 86400)
    active: list[JsonObject] | None = None
    routes: list[JsonObject] | None = None
    escalation: JsonObject | None = None
    resolve_after_minutes: float | None = Field(default=None, gt=0)


class AlertRuleRead(BaseModel):
    id: str
    name: str
    description: str | None
    enabled: bool
    severity: str
    labels: dict[str, str]
    message: str
    source: str
    condition: dict[str, Any]
    interval_seconds: int
    cooldown_seconds: int
    active: list[dict[str, Any]]
    routes: list[dict[str, Any]]
    escalation: dict[str, Any] | None
    resolve_after_minutes: float | None
    origin: Origin = Field(description="api: made by an operator; module: shipped by module_name")
    module_name: str | None = Field(description="The module that ships the rule (origin module)")
    module_rule: str | None = Field(description="The rule's name in its module's manifest")
    modified: bool = Field(description="A module's rule an operator changed: module upgrades leave it alone")
    detached: bool = Field(description="Modified, and no longer in its module's manifest: kept, nothing to reset to")
    paused_reason: str | None = Field(description="Why the rule is not evaluated now (its module is disabled)")
    last_evaluated_at: datetime | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    open_incidents: int = 0


class AlertRuleList(BaseModel):
    items: list[AlertRuleRead]


class PreviewRead(BaseModel):
    fired: int = Field(description="Incidents the rule would have opened in the last 24 h")
    evaluations: int = Field(description="Evaluations (series), events or runs looked at")
    groups: int = Field(description="Label sets seen")
    first: list[dict[str, Any]] = Field(description="The first 20 firings: at, labels, value")
    note: str | None = None


class TimelineEntry(BaseModel):
    seq: int
    kind: str
    at: datetime
    actor: str | None = None
    note: str | None = None
    severity: str | None = None
    message: str | None = None
    value: float | None = None


class NotificationRead(BaseModel):
    transition: str
    channel: str
    status: str = Field(description="sending (an attempt is out), sent or failed")
    attempts: int
    error: str | None
    outcome: dict[str, Any] | None
    created_at: datetime
    sent_at: datetime | None
    key: str = Field(description="The send's idempotency key: incident:transition:channel")
    delivery_id: str = Field(description="Sent as X-Autoplat-Delivery (webhook, Slack) / in the Message-ID (email)")


class IncidentRead(BaseModel):
    id: str
    rule_id: str | None
    rule_name: str
    module_name: str | None
    dedup_key: str | None
    labels: dict[str, str]
    severity: str
    status: str
    title: str
    message: str
    value: float | None
    fire_count: int
    escalated: bool
    opened_at: datetime
    last_fired_at: datetime
    acknowledged_at: datetime | None
    closed_at: datetime | None
    condition_since: datetime | None
    workflow_id: str
    allowed_actions: list[str]


class IncidentDetail(IncidentRead):
    timeline: list[TimelineEntry]
    notifications: list[NotificationRead]


class IncidentAction(Schema):
    note: Text | None = Field(default=None, max_length=2000)


class IncidentCounts(BaseModel):
    open: int
    by_status: dict[str, int]
    by_severity: dict[str, int]
