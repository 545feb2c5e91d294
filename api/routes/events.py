"""Events: accept (stored first, then published live and dispatched), browse, stream over SSE."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException

from api.deps import PageDep, Requires, SessionDep, StateDep
from api.schemas.common import ERROR_RESPONSES, Page
from api.schemas.events import (
    EventCreate,
    EventDeliveryRead,
    EventDetail,
    EventExecution,
    EventRead,
    EventsDeleted,
    EventStats,
    SubscriptionRead,
)
from api.state import AppState
from registry.db import unit_of_work
from registry.errors import ServiceUnavailable
from registry.manifest import event_pattern_matches
from registry.services import events
from registry.services.common import Actor
from registry.services.dispatch import channel, publish_live
from registry.services.ingest import EventIngest

router = APIRouter(prefix="/events", tags=["events"], responses=ERROR_RESPONSES)

#: A listener pattern as the server parses it (``registry.manifest.event_pattern_problem``), published
#: in the OpenAPI document: dotted segments, each ``*``, ``**`` or ``[a-z0-9][a-z0-9_-]*``.
_SEGMENT = r"(\*\*|\*|[a-z0-9][a-z0-9_-]*)"
PATTERN = rf"^{_SEGMENT}(\.{_SEGMENT})*$"
#: SSE keep-alive comment interval.
KEEPALIVE_SECONDS = 15


@router.post("", response_model=EventRead, status_code=status.HTTP_201_CREATED, responses={413: {}})
async def create_event(
    body: EventCreate,
    request: Request,
    response: Response,
    state: StateDep,
    _: Annotated[Actor, Requires("events:write")],
) -> EventRead:
    """Store an event; it then goes live on the stream and starts the jobs listening to it."""
    if body.id is None:
        # A fresh event: stored in a transaction shared with concurrent requests (group commit),
        # published and dispatched after that commit, answered once it is stored.
        event, size = events.fresh(
            name=body.name,
            payload=body.payload,
            source=body.source,
            occurred_at=body.occurred_at,
            max_payload_bytes=state.settings.event_payload_max_bytes,
        )
        await event_ingest(request.app, state).store(event, size)
        return EventRead(**events.as_dict(event))
    # Its own unit of work: publishing and dispatching must follow the commit, never precede it.
    async with unit_of_work(state.sessions) as session:
        event, created = await events.accept(
            session=session,
            name=body.name,
            payload=body.payload,
            source=body.source,
            event_id=body.id,
            occurred_at=body.occurred_at,
            max_payload_bytes=state.settings.event_payload_max_bytes,
        )
        data = events.as_dict(event)
    if created:
        await publish_live(state.redis, state.settings.redis_prefix, data)
        dispatcher = getattr(request.app.state, "event_dispatcher", None)
        if dispatcher is not None:
            dispatcher.notify()
    else:
        response.status_code = status.HTTP_200_OK
    return EventRead(**data)


def event_ingest(app: Any, state: AppState) -> EventIngest:
    """The process's group commit of new events (made by the app's lifespan; here when it did not run)."""
    ingest = getattr(app.state, "event_ingest", None)
    if ingest is None:
        from api.app import event_ingest_for

        ingest = app.state.event_ingest = event_ingest_for(app, state)
    return ingest


@router.get("", response_model=Page[EventRead])
async def list_events(
    session: SessionDep,
    paging: PageDep,
    _: Annotated[Actor, Requires("events:read")],
    name: str | None = None,
    pattern: Annotated[
        str | None, Query(description="Wildcard pattern: * one segment, ** many", pattern=PATTERN, max_length=200)
    ] = None,
    source: str | None = None,
    module: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[EventRead]:
    page, limit = paging
    rows, total = await events.list_events(
        session=session,
        page=page,
        limit=limit,
        name=name,
        pattern=pattern,
        source=source,
        module=module,
        since=since,
        until=until,
    )
    return Page(items=[EventRead(**events.as_dict(e)) for e in rows], total=total, page=page, limit=limit)


@router.delete("", response_model=EventsDeleted)
async def delete_events(
    session: SessionDep,
    _: Annotated[Actor, Requires("events:write")],
    older_than_days: Annotated[int, Query(ge=0, le=36500)],
) -> EventsDeleted:
    """Delete events received more than N days ago (events still pending dispatch are kept)."""
    return EventsDeleted(deleted=await events.delete_older_than(session=session, days=older_than_days))


@router.get("/recent", response_model=list[EventRead])
async def recent_events(
    session: SessionDep,
    _: Annotated[Actor, Requires("events:read")],
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> list[EventRead]:
    """The latest events, newest first."""
    rows, _total = await events.list_events(session=session, page=1, limit=limit)
    return [EventRead(**events.as_dict(e)) for e in rows]


@router.get("/subscriptions", response_model=list[SubscriptionRead])
async def list_subscriptions(
    session: SessionDep, _: Annotated[Actor, Requires("events:read")]
) -> list[SubscriptionRead]:
    """Which jobs listen to which patterns (enabled modules, enabled jobs)."""
    return [SubscriptionRead(**s) for s in await events.subscriptions(session=session)]


@router.get("/stats", response_model=EventStats)
async def event_stats(session: SessionDep, _: Annotated[Actor, Requires("events:read")]) -> EventStats:
    return EventStats(**await events.stats(session=session))


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 400: {"description": "Invalid Last-Event-ID"}},
)
async def stream_events(
    request: Request,
    state: StateDep,
    _: Annotated[Actor, Requires("events:read")],
    pattern: Annotated[
        str | None, Query(description="Only events whose name matches", pattern=PATTERN, max_length=200)
    ] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """Live events as server-sent events; ``Last-Event-ID`` (an event ``seq``) first replays what was
    missed, in order. A ``Last-Event-ID`` that is not a non-negative integer is a 400."""
    if pattern:
        events.validate_pattern(pattern)
    # Checked before any Redis connection is taken: a refused stream holds none.
    after = _last_event_id(last_event_id)
    pubsub = state.redis.pubsub()
    try:
        # Subscribe before replaying: pub/sub drops what nobody listens to.
        await pubsub.subscribe(channel(state.settings.redis_prefix))
    except Exception as exc:
        await pubsub.aclose()
        raise ServiceUnavailable(f"the live event stream is unavailable: {type(exc).__name__}") from exc

    def message(data: dict[str, Any]) -> dict[str, str]:
        return {"id": str(data["seq"]), "event": data["name"], "data": json.dumps(data, default=str)}

    async def generate() -> AsyncIterator[dict[str, str]]:
        replayed: set[int] = set()
        try:
            if after is not None:
                cursor = after
                while True:
                    async with state.sessions() as session:
                        rows = [events.as_dict(e) for e in await events.events_after(session=session, seq=cursor)]
                    if not rows:
                        break
                    for data in rows:
                        cursor = data["seq"]
                        replayed.add(cursor)
                        if not pattern or event_pattern_matches(pattern, data["name"]):
                            yield message(data)
            while True:
                raw = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if raw is None:
                    if await request.is_disconnected():
                        return
                    continue
                try:
                    data = json.loads(raw["data"])
                except (TypeError, ValueError):
                    continue
                if data.get("seq") in replayed:
                    continue
                if not pattern or event_pattern_matches(pattern, data.get("name", "")):
                    yield message(data)
        finally:
            await pubsub.aclose()

    return EventSourceResponse(generate(), ping=KEEPALIVE_SECONDS)


_SEQ = re.compile(r"[0-9]{1,18}")


def _last_event_id(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    if not _SEQ.fullmatch(value.strip()):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "Last-Event-ID must be the seq of an event (a non-negative integer)"
        )
    return int(value.strip())


@router.get("/{event_id}", response_model=EventDetail)
async def get_event(event_id: str, session: SessionDep, _: Annotated[Actor, Requires("events:read")]) -> EventDetail:
    """An event with its dispatch status and the executions it started."""
    event = await events.get_event(session=session, event_id=event_id)
    deliveries = await events.deliveries_of(session=session, event_id=event.id)
    executions = await events.executions_of(session=session, event_id=event.id)
    return EventDetail(
        **events.as_dict(event),
        dispatch_attempts=event.dispatch_attempts,
        next_attempt_at=event.next_attempt_at,
        dispatched_at=event.dispatched_at,
        dispatch_error=event.dispatch_error,
        deliveries=[
            EventDeliveryRead(
                job_id=d.job_id, workflow_id=d.workflow_id, execution_id=d.execution_id, created_at=d.created_at
            )
            for d in deliveries
        ],
        executions=[
            EventExecution(
                id=x.id,
                job_id=x.job_id,
                module=x.module_name,
                job_type=x.job_type,
                status=x.status,
                trigger=x.trigger,
                workflow_id=x.workflow_id,
                created_at=x.created_at,
            )
            for x in executions
        ],
    )
