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
    Clear,
    Fire,
    IncidentInput,
    OpenInput,
    SendInput,
    TransitionInput,
    delivery_id,
    incident_workflow_id,
)
from activities.services.notify import NotifyError, Sender, resolve_channel
from autoplat.alerts import SEVERITIES, check_alert
from registry.db import unit_of_work
from registry.models import Incident
from registry.services import alerts_eval
from registry.services import alerts_incidents as incidents
from registry.services.alerts import group_key
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

    def attach(self, jobs: Any) -> None:
        """Add ``ctx.alerts`` to the members the job activities give each step (after the other
        services: the worker calls ``attach`` of each provider in order)."""
        inner = jobs.services

        async def services(inp: Any, ctx: Any) -> dict[str, Any]:
            members = dict(await inner(inp, ctx)) if inner is not None else {}
            info = activity.info()
            members["alerts"] = WorkerAlerts(
                activity.client(), info.task_queue, ctx.module, ctx.execution_id, ctx.info.step
            )
            return members

        jobs.services = services

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
            outcome = await self.sender.deliver(spec, subject=subject, text=text, data=data, key=delivery_id(inp.key))
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


class WorkerAlerts:
    """``ctx.alerts`` answered by the worker for one step of one module (see autoplat/alerts.py):
    each call signals the module's incident workflow for the dedup key. Calls are numbered within
    the step, so a retried step repeating them refreshes nothing twice."""

    def __init__(self, client: Any, task_queue: str, module: str, execution_id: str, step: str | None) -> None:
        self.client = client
        self.task_queue = task_queue
        self.module = module
        self.prefix = f"{execution_id}/{step or ''}"
        self.calls = 0

    def __bool__(self) -> bool:
        return True

    def _spec(self, key: str, alert: dict[str, Any] | None = None) -> tuple[str, IncidentInput]:
        labels = {**(alert or {}).get("labels", {}), "module": self.module}
        group = group_key({"module": self.module, "key": key})
        channels = (alert or {}).get("channels") or []
        spec = IncidentInput(
            rule_id=None,
            rule_name=f"module {self.module}",
            group_key=group,
            labels=labels,
            severity=(alert or {}).get("severity", "warning"),
            routes=[{"severities": list(SEVERITIES), "channels": channels, "on": ["opened", "escalated", "resolved"]}]
            if channels
            else [],
            module_name=self.module,
            dedup_key=key,
        )
        return incident_workflow_id(None, group, self.module), spec

    async def raise_(self, key: str, title: str, **kwargs: Any) -> dict[str, Any]:
        alert = check_alert(key, title, **kwargs)
        self.calls += 1
        workflow_id, spec = self._spec(key, alert)
        now = datetime.now(UTC).isoformat()
        fire = Fire(title=alert["title"], message=alert["message"] or alert["title"], at=now, since=now,
                    key=f"{self.prefix}/{self.calls}")  # fmt: skip
        await alerts_eval.send_signals(
            self.client, self.task_queue, [alerts_eval.Signal(workflow_id=workflow_id, incident=spec, fire=fire)]
        )
        return {"key": key, "workflow_id": workflow_id}

    async def resolve(self, key: str, *, note: str | None = None) -> dict[str, Any]:
        check_alert(key, "-")
        self.calls += 1
        workflow_id, spec = self._spec(key)
        reason = f"resolved by module {self.module}" + (f": {note}" if note else "")
        clear = Clear(at=datetime.now(UTC).isoformat(), reason=reason)
        await alerts_eval.send_signals(
            self.client, self.task_queue, [alerts_eval.Signal(workflow_id=workflow_id, incident=spec, clear=clear)]
        )
        return {"key": key, "workflow_id": workflow_id}


def provider(deps: Any) -> AlertActivities:
    alerts = AlertActivities(deps.settings, deps.sessions)
    deps.closers.append(alerts.close)
    return alerts
