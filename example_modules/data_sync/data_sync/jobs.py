"""Handlers of the data-sync job types.

Placeholders for now: each returns a small summary of what it would do. They import only the
standard library; the real implementations use the SDK's JobContext (http, notify, emit, storage).
"""

from __future__ import annotations

from typing import Any


def _config(ctx: Any) -> dict[str, Any]:
    config = getattr(ctx, "config", None)
    return dict(config) if isinstance(config, dict) else {}


def hourly_sync(ctx: Any) -> dict[str, Any]:
    """Fetch records from ``source_url`` in batches of ``batch_size``."""
    config = _config(ctx)
    return {"job": "hourly-sync", "source_url": config.get("source_url"), "batch_size": config.get("batch_size")}


def daily_report(ctx: Any) -> dict[str, Any]:
    """Summarise the day's syncs for ``recipients`` over ``channel``."""
    config = _config(ctx)
    return {"job": "daily-report", "recipients": config.get("recipients", []), "channel": config.get("channel")}


def health_check(ctx: Any) -> dict[str, Any]:
    """Probe ``status_url`` within ``timeout_seconds``."""
    config = _config(ctx)
    return {"job": "health-check", "status_url": config.get("status_url"), "timeout": config.get("timeout_seconds")}


def notify(ctx: Any) -> dict[str, Any]:
    """Alert the on-call address."""
    config = _config(ctx)
    return {"job": "notify", "subject": config.get("subject"), "to": config.get("notify_email")}
