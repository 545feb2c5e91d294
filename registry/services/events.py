"""Events: stored first (the outbox), then fanned out and dispatched.

An event is committed to the ``events`` table before anything else happens to it; the dispatcher
(registry/services/dispatch.py) starts the jobs listening to it from that row, and the API
publishes it on Redis for live subscribers. Nothing here talks to Temporal or Redis.
"""

from __future__ import annotations

import json
import re
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, Text, cast, delete, func, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlalchemy.orm.attributes import set_committed_value

from registry import tracing
from registry.errors import InvalidInput, NotFound, PayloadTooLarge
from registry.manifest import event_pattern_problem, json_problem
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
    event = _new_event(
        name=name,
        payload=payload,
        source=source,
        module_name=module_name,
        execution_id=execution_id,
        event_id=event_id,
        occurred_at=occurred_at,
    )
    session.add(event)
    return event


def _new_event(
    *,
    name: str,
    payload: dict[str, Any] | None = None,
    source: str | None = None,
    module_name: str | None = None,
    execution_id: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Event:
    now = datetime.now(UTC)
    return Event(
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
        # The request or step it comes from, when tracing is on: its runs join that trace.
        traceparent=tracing.traceparent(),
    )


_EVENTS = typing.cast(Table, Event.__table__)
_ACCEPT_COLUMNS = [c for c in _EVENTS.c if c.key not in ("seq", "dispatched_at", "dispatch_error")]
_INSERT_ACCEPTED = _EVENTS.insert().returning(_EVENTS.c.seq)
_INSERT_MANY = _EVENTS.insert().returning(_EVENTS.c.id, _EVENTS.c.seq)


async def record_once(*, session: AsyncSession, event_id: str | None, **fields: Any) -> tuple[Event, bool]:
    """:func:`record` and flush, unless an event with ``event_id`` is stored already: that one is
    answered instead (also when a concurrent insert of the same id wins the race). Returns
    (event, created). Used for events a retried step emits again (``ctx.emit``)."""
    if event_id is None:
        # A fresh id cannot collide: no savepoint (two round trips) needed.
        event = record(session=session, **fields)
        await session.flush()
        return event, True
    existing = await session.scalar(select(Event).where(Event.id == event_id))
    if existing is not None:
        return existing, False
    try:
        async with session.begin_nested():
            event = record(session=session, event_id=event_id, **fields)
            await session.flush()
    except IntegrityError:
        existing = await session.scalar(select(Event).where(Event.id == event_id))
        if existing is None:
            raise
        return existing, False
    return event, True


_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*\Z")
#: Name prefixes only the platform emits (job lifecycle, module lifecycle, alerts, incidents,
#: schedules): a client or a module sending them could fake what listeners and auditors trust.
RESERVED_PREFIXES = ("job.", "module.", "alert.", "incident.", "schedule.")
#: The ``source`` of the platform's own events.
PLATFORM_SOURCE = "platform"


def validate_name(name: str) -> None:
    """An event name from outside the platform (``POST /events``, a module's ``ctx.emit``).

    Dotted lowercase (``data.synced``), and not under a :data:`RESERVED_PREFIXES` prefix (the
    platform writes its own events with :func:`record`, which doesn't ask).
    """
    if not isinstance(name, str) or len(name) > 200 or not _NAME.match(name):
        shown = name[:200] if isinstance(name, str) else name
        raise InvalidInput(
            f"invalid event name {shown!r}: use dotted lowercase segments like 'data.synced'",
            details=[{"loc": ["body", "name"], "msg": "invalid event name"}],
        )
    reserved = next((p for p in RESERVED_PREFIXES if name.startswith(p) or name == p[:-1]), None)
    if reserved is not None:
        raise InvalidInput(
            f"event name {name!r} is reserved: names under {reserved}* are emitted by the platform only",
            details=[
                {"loc": ["body", "name"], "msg": f"reserved prefix {reserved}", "reserved": list(RESERVED_PREFIXES)}
            ],
        )


def validate_source(source: str | None) -> None:
    """A client-given ``source``: printable text, and never the platform's own."""
    if source is None:
        return
    if _control(source):
        raise InvalidInput(
            "the event source holds control characters",
            details=[{"loc": ["body", "source"], "msg": "control character"}],
        )
    if source.strip().lower() == PLATFORM_SOURCE:
        raise InvalidInput(
            f"source {PLATFORM_SOURCE!r} is reserved for the platform's own events",
            details=[{"loc": ["body", "source"], "msg": "reserved source"}],
        )


def _control(text: str) -> bool:
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def validate_pattern(pattern: str, *, loc: str = "pattern") -> None:
    """A listener pattern: dotted segments, ``*`` one segment, ``**`` any number."""
    problem = event_pattern_problem(pattern) if isinstance(pattern, str) else "not a string"
    if problem:
        raise InvalidInput(
            f"invalid event pattern {pattern!r}: {problem}",
            details=[{"loc": ["query", loc], "msg": problem}],
        )


def check_payload(payload: Any, *, max_bytes: int = MAX_EVENT_PAYLOAD_BYTES) -> int:
    """The payload is a plain JSON object (see ``json_problem``) of at most ``max_bytes`` (compact
    UTF-8 JSON). Returns its size in bytes."""
    if not isinstance(payload, dict):
        raise InvalidInput(
            "the event payload must be a JSON object",
            details=[{"loc": ["body", "payload"], "msg": "must be an object"}],
        )
    problem = json_problem(payload)
    if problem is not None:
        pointer, reason = problem
        raise InvalidInput(
            f"the event payload cannot be stored: {pointer or '/'}: {reason}",
            details=[{"loc": ["body", "payload"], "msg": reason, "pointer": pointer}],
        )
    size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        raise PayloadTooLarge(
            f"the event payload is {size} bytes; the limit is {max_bytes}",
            details={"size": size, "limit": max_bytes},
        )
    return size


def fresh(
    *,
    name: str,
    payload: Any,
    source: str | None = None,
    occurred_at: datetime | None = None,
    max_payload_bytes: int = MAX_EVENT_PAYLOAD_BYTES,
) -> tuple[Event, int]:
    """A new event from outside the platform, checked as :func:`accept` checks it but not stored
    (``registry/services/ingest.py`` stores many in one transaction). Returns (event, payload size)."""
    validate_name(name)
    validate_source(source)
    size = check_payload(payload, max_bytes=max_payload_bytes)
    return _new_event(name=name, payload=payload, source=source, occurred_at=occurred_at), size


def accepted_values(event: Event) -> dict[str, Any]:
    """The columns a new event's INSERT writes (everything but ``seq`` and what dispatch sets)."""
    return {c.key: getattr(event, c.key) for c in _ACCEPT_COLUMNS}


async def insert_fresh(session: AsyncSession, batch: list[Event]) -> None:
    """Store new events (fresh ids) with one multi-row ``INSERT ... RETURNING``, setting each one's ``seq``."""
    if len(batch) == 1:
        batch[0].seq = (await session.execute(_INSERT_ACCEPTED, accepted_values(batch[0]))).scalar_one()
        return
    rows = await session.execute(_INSERT_MANY, [accepted_values(e) for e in batch])
    seqs: dict[str, int] = {row[0]: row[1] for row in rows}
    for event in batch:
        event.seq = seqs[event.id]


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
    validate_source(source)
    check_payload(payload, max_bytes=max_payload_bytes)
    if event_id is None:
        # A fresh id cannot collide: no savepoint (two round trips) needed, and no unit of work:
        # one prebuilt INSERT ... RETURNING seq (the ORM flush was ~15 % of the API's CPU here).
        event = _new_event(name=name, payload=payload, source=source, occurred_at=occurred_at)
        await insert_fresh(session, [event])
        return event, True
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
        "payload_problem": getattr(event, PAYLOAD_PROBLEM, None),
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
    rows = await _load(session, where, order=Event.seq.desc(), offset=(page - 1) * limit, limit=limit)
    return rows, total


async def events_after(*, session: AsyncSession, seq: int, limit: int = 1000) -> list[Event]:
    """Events stored after ``seq``, in order (``Last-Event-ID`` replay)."""
    return await _load(session, [Event.seq > seq], order=Event.seq, offset=0, limit=limit)


async def get_event(*, session: AsyncSession, event_id: str) -> Event:
    rows = await _load(session, [Event.id == event_id], order=Event.seq, offset=0, limit=1)
    if not rows:
        raise NotFound(f"event {event_id} not found")
    return rows[0]


#: Set on an event read by :func:`_load` whose stored payload cannot be served; ``as_dict`` shows it.
PAYLOAD_PROBLEM = "payload_problem"


async def _load(
    session: AsyncSession, where: list[ColumnElement[bool]], *, order: Any, offset: int, limit: int
) -> list[Event]:
    """Events with their payloads parsed one by one: a stored payload that can't be served (written
    around the API, or by an older version: too deep to parse, not finite) empties that event's
    payload and marks it, instead of failing the whole list for everyone."""
    stmt = (
        select(Event, cast(Event.payload, Text))
        .options(defer(Event.payload))
        .where(*where)
        .order_by(order)
        .offset(offset)
        .limit(limit)
    )
    events: list[Event] = []
    for event, text in await session.execute(stmt):
        payload, problem = _parse_payload(text)
        # Loaded as if from the row: nothing is marked changed, so nothing is written back.
        set_committed_value(event, "payload", payload)
        setattr(event, PAYLOAD_PROBLEM, problem)
        events.append(event)
    return events


def _parse_payload(text: str | None) -> tuple[dict[str, Any], str | None]:
    try:
        value = json.loads(text) if text is not None else {}
    except (ValueError, RecursionError):
        return {}, "the stored payload cannot be parsed"
    problem = json_problem(value)
    if problem is not None:
        return {}, f"the stored payload cannot be served: {problem[0] or '/'}: {problem[1]}"
    if not isinstance(value, dict):
        return {}, "the stored payload is not a JSON object"
    return value, None


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
