"""HTTP route handlers of data-sync (``manifest.routes``), written only against the autoplat SDK.

Each route invokes a job type as a function: ``ctx.request`` holds the path parameters, the
validated query and body; a sync route's return value is the response body, and
``ctx.response`` may set its status and headers.

- ``GET /hello?name=`` greets (default name ``world``) with a UTC timestamp.
- ``POST /echo`` answers the JSON body it received.
- ``GET /status`` reports the module version and how long the handler code has been loaded.
- ``POST /webhooks/source`` (public, HMAC-signed by the source) emits ``source.changed``, which the
  module's listener turns into a run of the configured ``hourly-sync`` job.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from autoplat import JobContext, JobError

#: When this worker process first loaded the module's code.
_LOADED = time.monotonic()


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def hello(ctx: JobContext) -> dict[str, Any]:
    """Greet ``?name=`` (default ``world``)."""
    query = ctx.request.query if ctx.request else {}
    name = query.get("name") or "world"
    return {"message": f"Hello, {name}!", "timestamp": _now()}


def echo(ctx: JobContext) -> dict[str, Any]:
    """Answer the request body as received, nested structures included."""
    body = ctx.request.body if ctx.request else None
    return {"echo": body, "timestamp": _now()}


def status(ctx: JobContext) -> dict[str, Any]:
    """Module version and uptime of the code serving it."""
    ctx.response.headers["Cache-Control"] = "no-store"
    return {
        "status": "ok",
        "module": ctx.module,
        "version": ctx.module_version,
        "uptime_seconds": round(time.monotonic() - _LOADED, 3),
        "timestamp": _now(),
    }


async def source_webhook(ctx: JobContext) -> dict[str, Any]:
    """The source signals new data: emit ``source.changed`` so the configured sync job runs."""
    body = ctx.request.body if ctx.request else None
    if not isinstance(body, dict):
        raise JobError("the webhook body must be a JSON object")
    payload = {"source": body.get("source", "default"), "changed": body.get("changed"), "received_at": _now()}
    event_id = await ctx.emit("source.changed", payload)
    ctx.logger.info("source %s changed: sync requested", payload["source"], extra={"event_id": event_id})
    return {"accepted": True, "event_id": event_id}
