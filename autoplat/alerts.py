"""``ctx.alerts``: open or refresh an incident from a handler, and resolve it.

An incident raised by a module is grouped by its **dedup key**: raising the same key again while
the incident is open refreshes it (one incident, its count and message updated, no second
notification); after it is resolved, the next raise opens a new one. The platform runs each
incident as a Temporal workflow, like those of alert rules (docs/alerting.md).

    async def check(ctx):
        if queue_length > 1000:
            await ctx.alerts.raise_("queue-backlog", "Queue backlog", message=f"{queue_length} waiting",
                                    severity="critical", labels={"queue": "orders"}, channels=["ops"])
        else:
            await ctx.alerts.resolve("queue-backlog")

Awaitable in ``async def`` handlers, blocking in plain ``def`` handlers (like ``ctx.notify``).
``channels`` name the platform's notification channels (``AUTOPLAT_NOTIFY_CHANNELS``) told when
the incident opens, escalates and resolves.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from autoplat.errors import JobError

SEVERITIES = ("info", "warning", "critical")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$")
_LABEL = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class AlertError(JobError):
    """An invalid ``ctx.alerts`` call (bad key, severity, labels or channels): fails the step
    without a retry."""


def check_alert(
    key: Any,
    title: Any,
    *,
    message: Any = "",
    severity: Any = "warning",
    labels: Any = None,
    channels: Any = None,
) -> dict[str, Any]:
    """The arguments of :meth:`raise_`, checked; the platform and the harness share this."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise AlertError("the dedup key is 1-200 characters: letters, digits and _ . : / -")
    if not isinstance(title, str) or not title.strip() or len(title) > 300:
        raise AlertError("the title is 1-300 characters")
    if not isinstance(message, str) or len(message) > 4000:
        raise AlertError("the message is at most 4000 characters")
    if severity not in SEVERITIES:
        raise AlertError(f"severity is one of {', '.join(SEVERITIES)}, not {severity!r}")
    labels = dict(labels or {})
    for name, value in labels.items():
        if not isinstance(name, str) or not _LABEL.match(name) or not isinstance(value, str) or len(value) > 200:
            raise AlertError(f"label {name!r}: lowercase names, string values of at most 200 characters")
    channels = list(channels or [])
    if any(not isinstance(c, str) or not c or len(c) > 100 for c in channels):
        raise AlertError("channels are names of the platform's notification channels")
    return {
        "key": key,
        "title": title.strip(),
        "message": message,
        "severity": severity,
        "labels": labels,
        "channels": channels,
    }


def _answer(value: Any) -> Any:
    """Awaitable in a handler's event loop, direct in a sync handler's thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return value

    async def done() -> Any:
        return value

    return done()


class MemoryAlerts:
    """``ctx.alerts`` of the test harness: incidents kept in :attr:`incidents` by dedup key.

    Each incident is ``{"key", "title", "message", "severity", "labels", "channels", "status"
    ("open" / "resolved"), "count"}``; :attr:`calls` lists every call in order.
    """

    def __init__(self) -> None:
        self.incidents: dict[str, dict[str, Any]] = {}
        self.calls: list[dict[str, Any]] = []

    def __bool__(self) -> bool:
        return True

    def open(self) -> list[dict[str, Any]]:
        """The incidents still open."""
        return [i for i in self.incidents.values() if i["status"] == "open"]

    def raise_(
        self,
        key: str,
        title: str,
        *,
        message: str = "",
        severity: str = "warning",
        labels: dict[str, str] | None = None,
        channels: list[str] | None = None,
    ) -> Any:
        alert = check_alert(key, title, message=message, severity=severity, labels=labels, channels=channels)
        self.calls.append({"call": "raise", **alert})
        found = self.incidents.get(key)
        if found is None or found["status"] != "open":
            found = self.incidents[key] = {**alert, "status": "open", "count": 0}
            outcome = "opened"
        else:
            found.update(message=alert["message"], title=alert["title"])
            outcome = "refreshed"
        found["count"] += 1
        return _answer({"key": key, "outcome": outcome})

    def resolve(self, key: str, *, note: str | None = None) -> Any:
        if not isinstance(key, str) or not _KEY.match(key):
            raise AlertError("the dedup key is 1-200 characters: letters, digits and _ . : / -")
        self.calls.append({"call": "resolve", "key": key, "note": note})
        found = self.incidents.get(key)
        resolved = found is not None and found["status"] == "open"
        if resolved and found is not None:
            found["status"] = "resolved"
        return _answer({"key": key, "outcome": "resolved" if resolved else "not open"})
