"""Events: stored first (the outbox), then fanned out and dispatched."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from registry.models import Event, new_id


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
        next_attempt_at=now,
    )
    session.add(event)
    return event


_NAME = __import__("re").compile(r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$")


def validate_name(name: str) -> None:
    """Event names are dotted lowercase (``data.synced``)."""
    from registry.errors import InvalidInput

    if not isinstance(name, str) or len(name) > 200 or not _NAME.match(name):
        raise InvalidInput(
            f"invalid event name {name!r}: use dotted lowercase segments like 'data.synced'",
            details=[{"loc": ["body", "name"], "msg": "invalid event name"}],
        )
