"""``GET /metrics``: the API's Prometheus metrics (docs/observability.md).

Guarded by its own setting, not by user tokens (a scraper is no user): ``AUTOPLAT_METRICS=off``
answers 404, ``token`` wants ``Authorization: Bearer <AUTOPLAT_METRICS_TOKEN>``, ``open`` answers
anyone (for a port reachable only by the scraper). Left out of the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import func, select

from api.deps import StateDep
from api.errors import error_response
from registry import metrics
from registry.models import Event

router = APIRouter(tags=["metrics"])

#: The outbox gauges cost one query; several scrapers within this many seconds share it.
OUTBOX_CACHE_SECONDS = 5.0
_outbox_read_at = 0.0


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request, state: StateDep) -> Response:
    settings = state.settings
    mode = settings.metrics_mode()
    if mode == "off":
        return error_response(404, "not_found", "metrics are off (AUTOPLAT_METRICS)")
    if mode == "token":
        expected = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if not expected or scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
            return error_response(
                401,
                "unauthorized",
                "metrics need Authorization: Bearer <AUTOPLAT_METRICS_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )
    await _read_outbox(state)
    # In a thread: a collector may do I/O (`autoplat dev` also re-exports the worker's Temporal metrics).
    body, content_type = await asyncio.to_thread(metrics.render, request.headers.get("accept"))
    return Response(body, media_type=content_type)


async def _read_outbox(state: StateDep) -> None:
    global _outbox_read_at
    now = time.monotonic()
    if now - _outbox_read_at < OUTBOX_CACHE_SECONDS:
        return
    try:
        async with state.sessions() as session:
            row = (
                await session.execute(
                    select(func.count(), func.min(Event.received_at)).where(Event.dispatch_status == "PENDING")
                )
            ).one()
    except Exception:  # noqa: BLE001 - the registry down: the gauges keep their last value
        return
    _outbox_read_at = now
    pending, oldest = int(row[0] or 0), row[1]
    metrics.EVENTS_PENDING.set(pending)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
    metrics.EVENTS_OLDEST_PENDING.set(max(age, 0.0))
