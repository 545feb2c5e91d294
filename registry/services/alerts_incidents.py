"""Incident rows: written by the incident workflow's activities only (open, one numbered transition
at a time, one notification per idempotency key), read by the API (list with filters, detail with
timeline and sends). See workflows/incident.py and docs/alerting.md."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from activities.alerts_types import ACTIONS, CLOSED, FIRING, OpenInput, TransitionInput, allowed_actions
from registry.errors import InvalidInput, InvalidTransition, NotFound
from registry.models import AlertState, Incident, IncidentNotification
from registry.services import events

#: Platform event of each transition (``fired`` is a refresh of an open incident).
TRANSITION_EVENTS = {
    "fired": "alert.fired",
    "acknowledged": "incident.acknowledged",
    "escalated": "incident.escalated",
    "resolved": "incident.resolved",
    "dismissed": "incident.dismissed",
}


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def event_payload(incident: Incident, **extra: Any) -> dict[str, Any]:
    return {
        "incident_id": incident.id,
        "rule_id": incident.rule_id,
        "rule": incident.rule_name,
        "module": incident.module_name,
        "labels": dict(incident.labels or {}),
        "severity": incident.severity,
        "status": incident.status,
        "title": incident.title,
        **extra,
    }


async def open_incident(*, session: AsyncSession, inp: OpenInput) -> Incident:
    """The incident row of a workflow run (once: a retried activity finds it)."""
    found = await session.get(Incident, inp.incident_id)
    if found is not None:
        return found
    spec, fire = inp.incident, inp.fire
    at = _at(fire.at)
    incident = Incident(
        id=inp.incident_id,
        rule_id=spec.rule_id,
        rule_name=spec.rule_name,
        module_name=spec.module_name,
        dedup_key=spec.dedup_key,
        group_key=spec.group_key,
        labels=dict(spec.labels),
        severity=spec.severity,
        status=FIRING,
        title=fire.title[:500],
        message=fire.message,
        value=fire.value,
        workflow_id=inp.workflow_id,
        run_id=inp.run_id,
        fire_count=1,
        escalated=False,
        condition_since=_at(fire.since) if fire.since else None,
        opened_at=datetime.now(UTC),
        last_fired_at=at,
        timeline=[
            {
                "seq": 0,
                "kind": "opened",
                "at": datetime.now(UTC).isoformat(),
                "actor": spec.module_name and f"module:{spec.module_name}" or "system",
                "note": None,
                "severity": spec.severity,
                "message": fire.message,
                "value": fire.value,
            }
        ],
    )
    session.add(incident)
    if spec.rule_id:
        state = await session.get(AlertState, (spec.rule_id, spec.group_key))
        if state is not None:
            state.last_opened_at = incident.opened_at
    await session.flush()
    payload = event_payload(incident, message=fire.message, value=fire.value)
    await events.record_once(
        session=session,
        event_id=f"{incident.id}-fired-0",
        name="alert.fired",
        payload=payload,
        source=events.PLATFORM_SOURCE,
        module_name=spec.module_name,
    )
    await events.record_once(
        session=session,
        event_id=f"{incident.id}-opened",
        name="incident.opened",
        payload=payload,
        source=events.PLATFORM_SOURCE,
        module_name=spec.module_name,
    )
    return incident


async def transition(*, session: AsyncSession, inp: TransitionInput) -> Incident:
    """Apply transition number ``inp.seq`` once (a retried activity finds it in the timeline)."""
    incident = await session.get(Incident, inp.incident_id, with_for_update=True)
    if incident is None:
        raise NotFound(f"incident {inp.incident_id!r} not found")
    if any(entry.get("seq") == inp.seq for entry in incident.timeline or []):
        return incident
    at = _at(inp.at)
    entry: dict[str, Any] = {"seq": inp.seq, "kind": inp.kind, "at": inp.at, "actor": inp.actor, "note": inp.note}
    if inp.kind == "fired" and inp.fire is not None:
        incident.fire_count += 1
        incident.last_fired_at = at
        incident.message = inp.fire.message
        incident.value = inp.fire.value
        entry.update(message=inp.fire.message, value=inp.fire.value)
    elif inp.kind == "escalated":
        incident.escalated = True
        incident.severity = inp.severity or incident.severity
        entry["severity"] = incident.severity
    elif inp.kind == "acknowledged":
        incident.status = "acknowledged"
        incident.acknowledged_at = at
    elif inp.kind in CLOSED:
        incident.status = inp.kind
        incident.closed_at = at
        if incident.rule_id:
            state = await session.get(AlertState, (incident.rule_id, incident.group_key))
            if state is not None:
                # Closed (by hand, too): evaluation starts over; the next breach opens a new incident.
                state.firing = False
                state.breaches = 0
    # Fired refreshes are counted, not listed: a long incident keeps a short timeline.
    if inp.kind != "fired" or incident.fire_count <= 20:
        incident.timeline = [*(incident.timeline or []), entry]
    await session.flush()
    name = TRANSITION_EVENTS[inp.kind]
    await events.record_once(
        session=session,
        event_id=f"{incident.id}-{inp.seq}",
        name=name,
        payload=event_payload(incident, actor=inp.actor, note=inp.note),
        source=events.PLATFORM_SOURCE,
        module_name=incident.module_name,
    )
    return incident


# --- notifications ----------------------------------------------------------------------------------
async def claim_send(
    *, session: AsyncSession, incident_id: str, key: str, transition: str, channel: str
) -> IncidentNotification | None:
    """The send row of ``key``, one more attempt counted; None when it has an outcome already."""
    from sqlalchemy.dialects import postgresql, sqlite

    insert: Any = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    await session.execute(
        insert(IncidentNotification)
        .values(
            key=key,
            incident_id=incident_id,
            transition=transition,
            channel=channel,
            status="sending",
            attempts=0,
            created_at=datetime.now(UTC),
        )
        .on_conflict_do_nothing(index_elements=["key"])
    )
    row = await session.scalar(
        select(IncidentNotification)
        .where(IncidentNotification.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert row is not None
    if row.status != "sending":
        return None
    row.attempts += 1
    return row


async def finish_send(
    *, session: AsyncSession, key: str, status: str, outcome: dict[str, Any] | None = None, error: str | None = None
) -> None:
    row = await session.scalar(select(IncidentNotification).where(IncidentNotification.key == key))
    if row is None:
        return
    row.status = status
    row.error = error
    row.outcome = outcome
    if status == "sent":
        row.sent_at = datetime.now(UTC)


# --- reads ----------------------------------------------------------------------------------------
async def get_incident(*, session: AsyncSession, incident_id: str) -> Incident:
    incident = await session.get(Incident, incident_id, populate_existing=True)
    if incident is None:
        raise NotFound(f"incident {incident_id!r} not found", details={"incident_id": incident_id})
    return incident


async def notifications_of(*, session: AsyncSession, incident_id: str) -> list[IncidentNotification]:
    return list(
        await session.scalars(
            select(IncidentNotification)
            .where(IncidentNotification.incident_id == incident_id)
            .order_by(IncidentNotification.id)
        )
    )


def _label_filters(labels: list[str]) -> dict[str, str]:
    out = {}
    for item in labels:
        name, sep, value = item.partition(":")
        if not sep or not name:
            raise InvalidInput(
                f"label filter {item!r}: use name:value",
                details=[{"loc": ["query", "label"], "msg": "name:value"}],
            )
        out[name] = value
    return out


async def list_incidents(
    *,
    session: AsyncSession,
    status: list[str] | None = None,
    severity: list[str] | None = None,
    rule_id: str | None = None,
    labels: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    page: int = 1,
    limit: int = 50,
) -> tuple[list[Incident], int]:
    """Incidents newest first; ``label`` filters (``name:value``, all must match): JSONB containment
    on PostgreSQL, on the rows read on SQLite."""
    where: list[ColumnElement[bool]] = []
    if status:
        where.append(Incident.status.in_(status))
    if severity:
        where.append(Incident.severity.in_(severity))
    if rule_id:
        where.append(Incident.rule_id == rule_id)
    if since:
        where.append(Incident.opened_at >= since)
    if until:
        where.append(Incident.opened_at < until)
    wanted = _label_filters(labels or [])
    if wanted and session.get_bind().dialect.name == "postgresql":
        from sqlalchemy import cast
        from sqlalchemy.dialects.postgresql import JSONB

        where.append(cast(Incident.labels, JSONB).contains(wanted))  # JSONB @>: in the database
        wanted = {}
    query = select(Incident).where(*where).order_by(Incident.opened_at.desc(), Incident.id)
    if not wanted:
        total = await session.scalar(select(func.count()).select_from(Incident).where(*where)) or 0
        rows = list(await session.scalars(query.offset((page - 1) * limit).limit(limit)))
        return rows, int(total)
    matching = [
        row for row in await session.scalars(query) if all((row.labels or {}).get(k) == v for k, v in wanted.items())
    ]
    return matching[(page - 1) * limit : page * limit], len(matching)


async def counts(*, session: AsyncSession) -> dict[str, Any]:
    """Open incidents by status and severity (the console's dashboard and banner)."""
    rows = await session.execute(
        select(Incident.status, Incident.severity, func.count())
        .where(Incident.status.not_in(CLOSED))
        .group_by(Incident.status, Incident.severity)
    )
    out: dict[str, Any] = {"open": 0, "by_status": {}, "by_severity": {}}
    for status, severity, n in rows:
        out["open"] += n
        out["by_status"][status] = out["by_status"].get(status, 0) + n
        out["by_severity"][severity] = out["by_severity"].get(severity, 0) + n
    return out


def check_action(incident: Incident, action: str) -> None:
    """409 naming the incident's state when ``action`` is not allowed from it."""
    if incident.status not in ACTIONS[action][0]:
        raise InvalidTransition(
            entity=f"incident {incident.id}",
            current=incident.status,
            action=action,
            allowed=allowed_actions(incident.status),
        )


async def act(
    *, session: AsyncSession, client: Any, incident_id: str, action: str, actor: str, note: str | None
) -> Incident:
    """Acknowledge / resolve / dismiss through the incident's workflow (an update): the answer comes
    once the transition is stored. 409 naming the state when the action is not allowed from it."""
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.exceptions import ApplicationError
    from temporalio.service import RPCError, RPCStatusCode

    from activities.alerts_types import Action
    from registry.errors import ServiceUnavailable

    incident = await get_incident(session=session, incident_id=incident_id)
    check_action(incident, action)
    handle = client.get_workflow_handle(incident.workflow_id)
    try:
        await handle.execute_update(action, Action(incident_id=incident.id, actor=actor, note=note))
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type in ("InvalidTransition", "IncidentClosed"):
            incident = await get_incident(session=session, incident_id=incident_id)
            check_action(incident, action)  # the row caught up: 409 naming its state
            raise InvalidTransition(
                entity=f"incident {incident.id}", current=incident.status, action=action,
                allowed=allowed_actions(incident.status),
            ) from None  # fmt: skip
        raise
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            incident = await get_incident(session=session, incident_id=incident_id)
            check_action(incident, action)
            raise InvalidTransition(
                entity=f"incident {incident.id}", current="closed", action=action, allowed=[]
            ) from None
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            raise ServiceUnavailable(f"Temporal did not answer: {exc.message}") from None
        raise
    return await get_incident(session=session, incident_id=incident_id)
