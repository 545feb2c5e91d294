"""Alerting: rules (``alerts:write`` for operators and admins, audited) and incidents, which
everyone reads and operators acknowledge, resolve or dismiss. See docs/alerting.md."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from pydantic import StringConstraints
from sqlalchemy import func, select

from activities.alerts_types import delivery_id
from api.deps import PageDep, Requires, SessionDep, SettingsDep, StateDep
from api.schemas.alerts import (
    AlertRuleCreate,
    AlertRuleList,
    AlertRuleRead,
    AlertRuleUpdate,
    IncidentAction,
    IncidentCounts,
    IncidentDetail,
    IncidentRead,
    NotificationRead,
    PreviewRead,
    Severity,
    Source,
    TimelineEntry,
)
from api.schemas.common import ERROR_RESPONSES, Page
from registry.models import AlertRule, Incident
from registry.services import alerts, alerts_eval, audit, module_alerts
from registry.services import alerts_incidents as incidents
from registry.services.common import Actor

STATUSES = "firing, acknowledged, resolved, dismissed"
IncidentStatus = Literal["firing", "acknowledged", "resolved", "dismissed"]
#: ``label=name:value`` (the value may hold colons).
LABEL_FILTER = r"^[a-z][a-z0-9_]{0,62}:[^\x00-\x1f]{0,200}$"
router = APIRouter(prefix="/alerts", tags=["alerts"], responses=ERROR_RESPONSES)


def rule_read(rule: AlertRule, open_incidents: int = 0) -> AlertRuleRead:
    return AlertRuleRead(
        id=rule.id,
        name=rule.name,
        description=rule.description,
        enabled=rule.enabled,
        severity=rule.severity,
        labels=dict(rule.labels or {}),
        message=rule.message,
        source=rule.source,
        condition=dict(rule.condition or {}),
        interval_seconds=rule.interval_seconds,
        cooldown_seconds=rule.cooldown_seconds,
        active=list(rule.active or []),
        routes=list(rule.routes or []),
        escalation=rule.escalation,
        resolve_after_minutes=rule.resolve_after_minutes,
        origin="module" if rule.origin == "module" else "api",
        module_name=rule.module_name,
        module_rule=rule.module_rule,
        modified=rule.modified,
        detached=rule.detached,
        paused_reason=rule.paused_reason,
        last_evaluated_at=rule.last_evaluated_at,
        created_by=rule.created_by,
        created_at=rule.created_at,
        updated_at=rule.updated_at,
        open_incidents=open_incidents,
    )


def incident_read(incident: Incident) -> IncidentRead:
    return IncidentRead(
        id=incident.id,
        rule_id=incident.rule_id,
        rule_name=incident.rule_name,
        module_name=incident.module_name,
        dedup_key=incident.dedup_key,
        labels=dict(incident.labels or {}),
        severity=incident.severity,
        status=incident.status,
        title=incident.title,
        message=incident.message,
        value=incident.value,
        fire_count=incident.fire_count,
        escalated=incident.escalated,
        opened_at=incident.opened_at,
        last_fired_at=incident.last_fired_at,
        acknowledged_at=incident.acknowledged_at,
        closed_at=incident.closed_at,
        condition_since=incident.condition_since,
        workflow_id=incident.workflow_id,
        allowed_actions=incidents.allowed_actions(incident.status),
    )


# --- rules ----------------------------------------------------------------------------------------
@router.get("/rules", response_model=AlertRuleList)
async def list_rules(
    session: SessionDep,
    source: Source | None = None,
    enabled: bool | None = None,
    module: Annotated[str | None, Query(max_length=50, description="Only the rules this module ships")] = None,
    _: Actor = Requires("alerts:read"),
) -> AlertRuleList:
    rules = await alerts.list_rules(session=session, source=source, enabled=enabled, module=module)
    open_counts = dict(
        (
            await session.execute(
                select(Incident.rule_id, func.count())
                .where(Incident.status.in_(("firing", "acknowledged")))
                .group_by(Incident.rule_id)
            )
        ).all()
    )
    return AlertRuleList(items=[rule_read(r, open_counts.get(r.id, 0)) for r in rules])


@router.post("/rules", response_model=AlertRuleRead, status_code=status.HTTP_201_CREATED)
async def create_rule(
    body: AlertRuleCreate, session: SessionDep, settings: SettingsDep, actor: Actor = Requires("alerts:write")
) -> AlertRuleRead:
    rule = await alerts.create_rule(
        session=session,
        data=body.model_dump(),
        actor=actor,
        default_interval=settings.alerts_default_interval_seconds,
    )
    audit.record(
        session=session,
        actor=actor,
        action="alert_rule.create",
        target_type="alert_rule",
        target_id=rule.id,
        details={"name": rule.name, "source": rule.source, "severity": rule.severity},
    )
    return rule_read(rule)


@router.post("/rules/preview", response_model=PreviewRead)
async def preview_rule(
    body: AlertRuleCreate, session: SessionDep, settings: SettingsDep, _: Actor = Requires("alerts:read")
) -> PreviewRead:
    """How often the rule would have fired in the last 24 h (nothing is stored)."""
    fields = await alerts.validate(
        session, body.model_dump(), default_interval=settings.alerts_default_interval_seconds
    )
    result = await alerts_eval.preview(session, fields)
    return PreviewRead(
        fired=result.fired, evaluations=result.evaluations, groups=result.groups, first=result.first, note=result.note
    )


@router.get("/rules/{rule_id}", response_model=AlertRuleRead)
async def get_rule(rule_id: str, session: SessionDep, _: Actor = Requires("alerts:read")) -> AlertRuleRead:
    return await _with_count(session, await alerts.get_rule(session=session, rule_id=rule_id))


async def _with_count(session: SessionDep, rule: AlertRule) -> AlertRuleRead:
    count = await session.scalar(
        select(func.count())
        .select_from(Incident)
        .where(Incident.rule_id == rule.id, Incident.status.in_(("firing", "acknowledged")))
    )
    return rule_read(rule, count or 0)


@router.patch("/rules/{rule_id}", response_model=AlertRuleRead)
async def update_rule(
    rule_id: str,
    body: AlertRuleUpdate,
    session: SessionDep,
    settings: SettingsDep,
    actor: Actor = Requires("alerts:write"),
) -> AlertRuleRead:
    """A partial update; a rule shipped by a module is marked modified (its module's upgrades leave it alone)."""
    changes = body.model_dump(exclude_unset=True)
    rule = await alerts.update_rule(
        session=session, rule_id=rule_id, data=changes, default_interval=settings.alerts_default_interval_seconds
    )
    audit.record(
        session=session,
        actor=actor,
        action="alert_rule.update",
        target_type="alert_rule",
        target_id=rule.id,
        details={"fields": sorted(changes)},
    )
    return rule_read(rule)


@router.post(
    "/rules/{rule_id}/reset",
    response_model=AlertRuleRead,
    responses={409: {"description": "An operator's rule, or one its module no longer ships (detached)"}},
)
async def reset_rule(
    rule_id: str, session: SessionDep, settings: SettingsDep, actor: Actor = Requires("alerts:write")
) -> AlertRuleRead:
    """Put a rule shipped by a module back to the module's definition (modified cleared)."""
    rule = await module_alerts.reset(
        session=session, rule_id=rule_id, default_interval=settings.alerts_default_interval_seconds
    )
    audit.record(
        session=session,
        actor=actor,
        action="alert_rule.reset",
        target_type="alert_rule",
        target_id=rule.id,
        details={"name": rule.name, "module": rule.module_name, "rule": rule.module_rule},
    )
    return await _with_count(session, rule)


@router.delete("/rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_rule(rule_id: str, session: SessionDep, actor: Actor = Requires("alerts:write")) -> None:
    rule = await alerts.delete_rule(session=session, rule_id=rule_id)
    audit.record(
        session=session,
        actor=actor,
        action="alert_rule.delete",
        target_type="alert_rule",
        target_id=rule.id,
        details={"name": rule.name},
    )


# --- incidents --------------------------------------------------------------------------------------
@router.get("/incidents", response_model=Page[IncidentRead])
async def list_incidents(
    session: SessionDep,
    paging: PageDep,
    status_: Annotated[list[IncidentStatus] | None, Query(alias="status", description=STATUSES)] = None,
    severity: Annotated[list[Severity] | None, Query()] = None,
    rule_id: str | None = None,
    label: Annotated[
        list[Annotated[str, StringConstraints(pattern=LABEL_FILTER)]] | None,
        Query(description="name:value, repeatable, all must match"),
    ] = None,
    since: Annotated[datetime | None, Query(alias="from", description="Opened at or after")] = None,
    until: Annotated[datetime | None, Query(alias="to", description="Opened before")] = None,
    _: Actor = Requires("alerts:read"),
) -> Page[IncidentRead]:
    page, limit = paging
    rows, total = await incidents.list_incidents(
        session=session,
        status=list(status_ or []),
        severity=list(severity or []),
        rule_id=rule_id,
        labels=label,
        since=since,
        until=until,
        page=page,
        limit=limit,
    )
    return Page(items=[incident_read(r) for r in rows], total=total, page=page, limit=limit)


@router.get("/incidents/counts", response_model=IncidentCounts)
async def incident_counts(session: SessionDep, _: Actor = Requires("alerts:read")) -> IncidentCounts:
    """Open incidents by status and severity (the console's dashboard and banner)."""
    return IncidentCounts(**await incidents.counts(session=session))


@router.get("/incidents/{incident_id}", response_model=IncidentDetail)
async def get_incident(incident_id: str, session: SessionDep, _: Actor = Requires("alerts:read")) -> IncidentDetail:
    return await _detail(session, await incidents.get_incident(session=session, incident_id=incident_id))


async def _detail(session: SessionDep, incident: Incident) -> IncidentDetail:
    sends = await incidents.notifications_of(session=session, incident_id=incident.id)
    return IncidentDetail(
        **incident_read(incident).model_dump(),
        timeline=[TimelineEntry(**entry) for entry in incident.timeline or []],
        notifications=[
            NotificationRead(
                transition=n.transition,
                channel=n.channel,
                status=n.status,
                attempts=n.attempts,
                error=n.error,
                outcome=n.outcome,
                created_at=n.created_at,
                sent_at=n.sent_at,
                key=n.key,
                delivery_id=delivery_id(n.key),
            )
            for n in sends
        ],
    )


async def _act(
    action: str, incident_id: str, body: IncidentAction | None, session: SessionDep, state: StateDep, actor: Actor
) -> IncidentDetail:
    note = body.note if body is not None else None
    incident = await incidents.act(
        session=session,
        client=await state.temporal(),
        incident_id=incident_id,
        action=action,
        actor=actor.email or actor.user_id or "unknown",
        note=note,
    )
    audit.record(
        session=session,
        actor=actor,
        action=f"incident.{action}",
        target_type="incident",
        target_id=incident.id,
        details={"note": note} if note else None,
    )
    return await _detail(session, incident)


@router.post("/incidents/{incident_id}/acknowledge", response_model=IncidentDetail)
async def acknowledge(
    incident_id: str,
    session: SessionDep,
    state: StateDep,
    body: IncidentAction | None = None,
    actor: Actor = Requires("alerts:write"),
) -> IncidentDetail:
    return await _act("acknowledge", incident_id, body, session, state, actor)


@router.post("/incidents/{incident_id}/resolve", response_model=IncidentDetail)
async def resolve(
    incident_id: str,
    session: SessionDep,
    state: StateDep,
    body: IncidentAction | None = None,
    actor: Actor = Requires("alerts:write"),
) -> IncidentDetail:
    return await _act("resolve", incident_id, body, session, state, actor)


@router.post("/incidents/{incident_id}/dismiss", response_model=IncidentDetail)
async def dismiss(
    incident_id: str,
    session: SessionDep,
    state: StateDep,
    body: IncidentAction | None = None,
    actor: Actor = Requires("alerts:write"),
) -> IncidentDetail:
    return await _act("dismiss", incident_id, body, session, state, actor)
