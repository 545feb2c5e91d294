"""Activities of alerting: the incident workflow's writes and sends, and the evaluator's run.

``send`` is where "one notification per transition" is kept. Its row (``incident_notifications``,
unique ``key`` = incident:transition:channel) moves ``sending`` -> ``sent`` / ``failed`` and is
committed before and after the send:

* a retry that finds ``sent`` or ``failed`` returns the recorded outcome and sends nothing;
* a retry that finds ``sending`` (a worker died with the request out, its outcome unknown) sends
  again with the same ``X-Autoplat-Delivery`` / ``Message-ID``, so the receiver sees one
  delivery id — over HTTP nothing stronger exists, and a page lost is worse than a page repeated;
* a permanent failure (unknown channel, 4xx, a refused URL) or the last of ``SEND_ATTEMPTS`` is
  recorded as ``failed`` and the activity completes: nothing retries forever, and the incident
  shows the failed send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.alerts_types import (
    ALERTS_EVALUATE,
    ALERTS_OPEN,
    ALERTS_SEND,
    ALERTS_TRANSITION,
    SEND_ATTEMPTS,
    OpenInput,
    SendInput,
    TransitionInput,
)
from activities.services.notify import NotifyError, Sender, resolve_channel
from registry.db import unit_of_work
from registry.models import Incident
from registry.services import alerts_eval
from registry.services import alerts_incidents as incidents
from registry.settings import Settings

SUBJECTS = {
    "opened": "[{severity}] {title}",
    "acknowledged": "[acknowledged] {title}",
    "escalated": "[escalated: {severity}] {title}",
    "resolved": "[resolved] {title}",
    "dismissed": "[dismissed] {title}",
}


def notification(incident: Incident, transition: str) -> tuple[str, str, dict[str, Any]]:
    """Subject, text and data of one transition's notification."""
    subject = SUBJECTS[transition].format(severity=incident.severity.upper(), title=incident.title)
    last = next((e for e in reversed(incident.timeline or []) if e.get("kind") == transition), None)
    lines = [incident.message, ""]
    if last and last.get("note"):
        lines.append(f"{transition} by {last.get('actor')}: {last['note']}")
    lines.append(f"incident {incident.id} · rule {incident.rule_name} · status {incident.status}")
    data = {
        "incident_id": incident.id,
        "transition": transition,
        "status": incident.status,
        "severity": incident.severity,
        "rule_id": incident.rule_id,
        "rule": incident.rule_name,
        "labels": dict(incident.labels or {}),
        "title": incident.title,
        "message": incident.message,
        "value": incident.value,
        "opened_at": incident.opened_at.isoformat(),
    }
    return subject, "\n".join(lines).strip(), data


async def _heartbeat(every: float = 1.0) -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(every)


class AlertActivities:
    """One per worker: the session factory and an HTTP client for webhooks and Slack."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0), trust_env=False)
        self.sender = Sender(settings, self.client)

    def activities(self) -> list[Callable[..., Any]]:
        return [self.open, self.transition, self.send, self.evaluate]

    async def close(self) -> None:
        await self.client.aclose()

    @activity.defn(name=ALERTS_OPEN)
    async def open(self, inp: OpenInput) -> str:
        async with unit_of_work(self.sessions) as session:
            incident = await incidents.open_incident(session=session, inp=inp)
            return incident.id

    @activity.defn(name=ALERTS_TRANSITION)
    async def transition(self, inp: TransitionInput) -> None:
        async with unit_of_work(self.sessions) as session:
            await incidents.transition(session=session, inp=inp)

    @activity.defn(name=ALERTS_SEND)
    async def send(self, inp: SendInput) -> dict[str, Any]:
        async with unit_of_work(self.sessions) as session:
            row = await incidents.claim_send(
                session=session,
                incident_id=inp.incident_id,
                key=inp.key,
                transition=inp.transition,
                channel=inp.channel,
            )
            if row is None:
                activity.logger.info("notification %s already has an outcome; not sending again", inp.key)
                return {"key": inp.key, "status": "done"}
            incident = await incidents.get_incident(session=session, incident_id=inp.incident_id)
            subject, text, data = notification(incident, inp.transition)
        # Committed as "sending" (attempt counted) before anything leaves: see the module docstring.
        # Heartbeats while the request is out, so a worker that dies mid-send is noticed within
        # the heartbeat timeout and the send retried elsewhere.
        beat = asyncio.create_task(_heartbeat())
        try:
            spec = resolve_channel(inp.channel, self.settings)
            outcome = await self.sender.deliver(spec, subject=subject, text=text, data=data, key=inp.key)
        except NotifyError as exc:
            beat.cancel()
            final = exc.permanent or activity.info().attempt >= SEND_ATTEMPTS
            async with unit_of_work(self.sessions) as session:
                await incidents.finish_send(
                    session=session, key=inp.key, status="failed" if final else "sending", error=exc.message
                )
            if final:
                activity.logger.warning("notification %s to %s failed: %s", inp.key, inp.channel, exc.message)
                return {"key": inp.key, "status": "failed", "error": exc.message}
            raise ApplicationError(exc.message, type="NotifyError") from None
        finally:
            beat.cancel()
        outcome = {**outcome, "channel": inp.channel, "at": datetime.now(UTC).isoformat()}
        async with unit_of_work(self.sessions) as session:
            await incidents.finish_send(session=session, key=inp.key, status="sent", outcome=outcome)
        activity.logger.info("notification %s sent to %s", inp.key, inp.channel)
        return {"key": inp.key, "status": "sent"}

    @activity.defn(name=ALERTS_EVALUATE)
    async def evaluate(self) -> dict[str, Any]:
        """Evaluate the due series and job rules; signal their incidents before committing."""
        async with unit_of_work(self.sessions) as session:
            signals = await alerts_eval.evaluate_due(session, slack=self.settings.alerts_tick_seconds / 2)
            await alerts_eval.send_signals(activity.client(), activity.info().task_queue, signals)
        fired = sum(1 for s in signals if s.fire is not None)
        return {"fired": fired, "cleared": len(signals) - fired}


def provider(deps: Any) -> AlertActivities:
    alerts = AlertActivities(deps.settings, deps.sessions)
    deps.closers.append(alerts.close)
    return alerts
