"""Events: stored first (the outbox), then fanned out and dispatched.

An event is committed to the ``events`` table before anything else happens to it; the dispatcher
(registry/services/dispatch.py) starts the jobs listening to it from that row, and the API
publishes it on Redis for live subscribers. Nothing here talks to Temporal or Redis.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from registry.errors import InvalidInput, NotFound, PayloadTooLarge
from registry.manifest import event_pattern_problem
from registry.models import Event, EventDelivery, Execution, Job, Module, ModuleStatus, new_id

#: Largest accepted payload, measured as compact UTF-8 JSON. Documented in docs/events.md.
MAX_EVENT_PAYLOAD_BYTES = 256 * 1024


def record(
    *,
    session: AsyncSession,
    name: str,
    payload: dict[str, Any] | None = None,
    source: str | None = None,
    module_name: str | None = None,
    execution_id: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Event:
    """Add an event to the outbox in the caller's transaction; it is dispatched after commit."""
    now = datetime.now(UTC)
    event = Event(
        id=event_id or new_id(),
        name=name,
        payload=payload or {},
        source=source,
        module_name=module_name,
        execution_id=execution_id,
        occurred_at=occurred_at or now,
        received_at=now,
        dispatch_status="PENDING",
        dispatch_attempts=0,
        next_attempt_at=now,
    )
    session.add(event)
    return event


_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")


def validate_name(name: str) -> None:
    """Event names are dotted lowercase (``data.synced``)."""
    if not isinstance(name, str) or len(name) > 200 or not _NAME.match(name):
        raise InvalidInput(
            f"invalid event name {name!r}: use dotted lowercase segments like 'data.synced'",
            details=[{"loc": ["body", "name"], "msg": "invalid event name"}],
        )


def validate_pattern(pattern: str, *, loc: str = "pattern") -> None:
    """A listener pattern: dotted segments, ``*`` one segment, ``**`` any number."""
    problem = event_pattern_problem(pattern) if isinstance(pattern, str) else "not a string"
    if problem:
        raise InvalidInput(
            f"invalid event pattern {pattern!r}: {problem}",
            details=[{"loc": ["query", loc], "msg": problem}],
        )


def check_payload(payload: Any, *, max_bytes: int = MAX_EVENT_PAYLOAD_BYTES) -> None:
    """The payload is a JSON object of at most ``max_bytes`` (compact UTF-8 JSON)."""
    if not isinstance(payload, dict):
        raise InvalidInput(
            "the event payload must be a JSON object",
            details=[{"loc": ["body", "payload"], "msg": "must be an object"}],
        )
    size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        raise PayloadTooLarge(
            f"the event payload is {size} bytes; the limit is {max_bytes}",
            details={"size": size, "limit": max_bytes},
        )


async def accept(
    *,
    session: AsyncSession,
    name: str,
    payload: Any,
    source: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    max_payload_bytes: int = MAX_EVENT_PAYLOAD_BYTES,
) -> tuple[Event, bool]:
    """Store an event from the API. Returns (event, created).

    A known ``event_id`` answers the stored event and never adds a second row, also when two
    requests with that id race: the loser's insert fails on the unique id inside a savepoint and
    it reads the winner's row.
    """
    validate_name(name)
    check_payload(payload, max_bytes=max_payload_bytes)
    if event_id is not None:
        existing = await session.scalar(select(Event).where(Event.id == event_id))
        if existing is not None:
            return existing, False
    try:
        async with session.begin_nested():
            event = record(
                session=session,
                name=name,
                payload=payload,
                source=source,
                event_id=event_id,
                occurred_at=occurred_at,
            )
            await session.flush()
    except IntegrityError:
        if event_id is None:
            raise
        existing = await session.scalar(select(Event).where(Event.id == event_id))
        if existing is None:
            raise
        return existing, False
    return event, True


def as_dict(event: Event) -> dict[str, Any]:
    """The event as JSON (the live stream's and the API's shape)."""
    return {
        "id": event.id,
        "seq": event.seq,
        "name": event.name,
        "payload": event.payload,
        "source": event.source,
        "module": event.module_name,
        "execution_id": event.execution_id,
        "occurred_at": event.occurred_at.isoformat(),
        "received_at": event.received_at.isoformat(),
        "dispatch_status": event.dispatch_status,
    }


def pattern_regex(pattern: str) -> str:
    """A POSIX/Python regex matching ``'.' || name`` exactly when ``pattern`` matches ``name``.

    Prefixing the name with a dot lets ``**`` (zero or more segments) be ``(\\.[^.]+)*``.
    """
    pieces = []
    for segment in pattern.split("."):
        if segment == "**":
            pieces.append(r"(\.[^.]+)*")
        elif segment == "*":
            pieces.append(r"\.[^.]+")
        else:
            pieces.append(r"\." + re.escape(segment))
    return "^" + "".join(pieces) + "$"


def _filters(
    *,
    name: str | None,
    pattern: str | None,
    source: str | None,
    module: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if name:
        where.append(Event.name == name)
    if pattern:
        validate_pattern(pattern)
        where.append((literal(".") + Event.name).regexp_match(pattern_regex(pattern)))
    if source:
        where.append(Event.source == source)
    if module:
        where.append(Event.module_name == module)
    if since:
        where.append(Event.received_at >= since)
    if until:
        where.append(Event.received_at < until)
    return where


async def list_events(
    *,
    session: AsyncSession,
    page: int = 1,
    limit: int = 50,
    name: str | None = None,
    pattern: str | None = None,
    source: str | None = None,
    module: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[Event], int]:
    """Newest first, with the total of matching events."""
    where = _filters(name=name, pattern=pattern, source=source, module=module, since=since, until=until)
    total = await session.scalar(select(func.count()).select_from(Event).where(*where)) or 0
    rows = await session.scalars(
        select(Event).where(*where).order_by(Event.seq.desc()).offset((page - 1) * limit).limit(limit)
    )
    return list(rows), total


async def events_after(*, session: AsyncSession, seq: int, limit: int = 1000) -> list[Event]:
    """Events stored after ``seq``, in order (``Last-Event-ID`` replay)."""
    rows = await session.scalars(select(Event).where(Event.seq > seq).order_by(Event.seq).limit(limit))
    return list(rows)


async def get_event(*, session: AsyncSession, event_id: str) -> Event:
    event = await session.scalar(select(Event).where(Event.id == event_id))
    if event is None:
        raise NotFound(f"event {event_id} not found")
    return event


async def deliveries_of(*, session: AsyncSession, event_id: str) -> list[EventDelivery]:
    rows = await session.scalars(
        select(EventDelivery).where(EventDelivery.event_id == event_id).order_by(EventDelivery.id)
    )
    return list(rows)


async def executions_of(*, session: AsyncSession, event_id: str) -> list[Execution]:
    """Executions the event started (their ``event_id`` is set by the run's mirror)."""
    rows = await session.scalars(select(Execution).where(Execution.event_id == event_id).order_by(Execution.created_at))
    return list(rows)


async def subscriptions(*, session: AsyncSession) -> list[dict[str, Any]]:
    """Which jobs listen to which patterns: listeners of enabled modules and jobs' own triggers."""
    modules = list(
        await session.scalars(select(Module).where(Module.status == ModuleStatus.ENABLED.value).order_by(Module.name))
    )
    names = [m.name for m in modules]
    jobs = list(
        await session.scalars(select(Job).where(Job.module_name.in_(names), Job.enabled.is_(True)).order_by(Job.name))
    )
    out: list[dict[str, Any]] = []
    for module in modules:
        for listener in ((module.manifest or {}).get("events") or {}).get("listeners") or []:
            job_type = listener.get("job")
            out.append(
                {
                    "kind": "listener",
                    "module": module.name,
                    "pattern": listener.get("pattern"),
                    "job_type": job_type,
                    "filter": listener.get("filter") or {},
                    "mapping": listener.get("mapping") or {},
                    "description": listener.get("description"),
                    "jobs": [
                        {"id": j.id, "name": j.name}
                        for j in jobs
                        if j.module_name == module.name and j.job_type == job_type
                    ],
                }
            )
    for job in jobs:
        for pattern in job.event_triggers or []:
            if isinstance(pattern, str):
                out.append(
                    {
                        "kind": "job",
                        "module": job.module_name,
                        "pattern": pattern,
                        "job_type": job.job_type,
                        "filter": {},
                        "mapping": {},
                        "description": None,
                        "jobs": [{"id": job.id, "name": job.name}],
                    }
                )
    return out


async def stats(*, session: AsyncSession, top: int = 10, now: datetime | None = None) -> dict[str, Any]:
    """Totals, last 24 h / 7 d, top names and sources (7 d) and per-hour counts for the last 24 h."""
    now = now or datetime.now(UTC)
    day, week = now - timedelta(hours=24), now - timedelta(days=7)

    async def count(*where: ColumnElement[bool]) -> int:
        return await session.scalar(select(func.count()).select_from(Event).where(*where)) or 0

    async def top_by(column: Any) -> list[dict[str, Any]]:
        n = func.count().label("n")
        rows = await session.execute(
            select(column, n)
            .where(Event.received_at >= week, column.is_not(None))
            .group_by(column)
            .order_by(n.desc(), column)
            .limit(top)
        )
        return [{"value": value, "count": int(c)} for value, c in rows]

    recent = await session.scalars(select(Event.received_at).where(Event.received_at >= day))
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    buckets = {start + timedelta(hours=h): 0 for h in range(24)}
    for at in recent:
        hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if hour in buckets:
            buckets[hour] += 1
    return {
        "total": await count(),
        "last_24h": await count(Event.received_at >= day),
        "last_7d": await count(Event.received_at >= week),
        "pending": await count(Event.dispatch_status == "PENDING"),
        "top_names": await top_by(Event.name),
        "top_sources": await top_by(Event.source),
        "per_hour": [{"hour": h.isoformat(), "count": c} for h, c in buckets.items()],
    }


async def delete_older_than(*, session: AsyncSession, days: int, now: datetime | None = None) -> int:
    """Delete events received more than ``days`` ago (and their delivery records). Returns the count.

    Events still waiting for dispatch are kept whatever their age: an accepted event is never lost.
    """
    if days < 0:
        raise InvalidInput("older_than_days must be >= 0")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    old = (Event.received_at < cutoff, Event.dispatch_status != "PENDING")
    old_ids = select(Event.id).where(*old).scalar_subquery()
    await session.execute(delete(EventDelivery).where(EventDelivery.event_id.in_(old_ids)))
    result = await session.execute(delete(Event).where(*old))
    return int(getattr(result, "rowcount", 0) or 0)
