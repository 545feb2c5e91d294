"""One incident as one Temporal workflow (DESIGN.md decision 16).

Workflow id ``incident-<rule id>-<label set key>`` (or ``incident-m-<module>-<dedup key>`` for
``ctx.alerts``): the evaluator and the dispatcher *signal-with-start* it with ``fire``, so alerts of
one (rule, label set) join the open incident and a new one starts only after the last was closed.

* ``fire`` / ``clear`` are signals (the condition holds again / no longer holds);
* ``acknowledge`` / ``resolve`` / ``dismiss`` are updates: the caller gets the new state, or the
  refusal naming the current one (the ``ACTIONS`` table);
* escalation ("after N minutes unacknowledged") and "resolve after N minutes without an alert"
  are durable timers;
* every write to the incident row is an activity taken under one lock, numbered (a retried
  activity writes once); every notification is an activity with an idempotency key per
  (incident, transition, channel), so a transition is notified once per channel whatever the
  retries or crashed workers.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.alerts_types import (
        ACKNOWLEDGED,
        ACTIONS,
        ALERTS_OPEN,
        ALERTS_SEND,
        ALERTS_TRANSITION,
        CLOSED,
        FIRING,
        INCIDENT_WORKFLOW,
        SEND_ATTEMPTS,
        Action,
        Clear,
        Fire,
        IncidentInput,
        OpenInput,
        SendInput,
        TransitionInput,
        allowed_actions,
    )

DB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30), maximum_attempts=SEND_ATTEMPTS
)
#: Event ids remembered to drop a fire delivered twice.
SEEN = 200


@workflow.defn(name=INCIDENT_WORKFLOW)
class IncidentWorkflow:
    def __init__(self) -> None:
        self.inbox: list[tuple[str, Any]] = []
        self.outbox: list[str] = []
        self.seen: list[str] = []
        self.lock = asyncio.Lock()
        self.incident_id: str | None = None
        self.status = FIRING
        self.severity = ""
        self.seq = 0
        self.escalated = False
        self.opened_at: datetime | None = None
        self.last_fired: datetime | None = None

    # --- signals and updates -------------------------------------------------------------------------
    @workflow.signal
    def fire(self, fire: Fire) -> None:
        if fire.key:
            if fire.key in self.seen:
                return
            self.seen = [*self.seen[-(SEEN - 1) :], fire.key]
        self.inbox.append(("fire", fire))

    @workflow.signal
    def clear(self, clear: Clear) -> None:
        self.inbox.append(("clear", clear))

    @workflow.query
    def state(self) -> dict[str, Any]:
        return {"incident_id": self.incident_id, "status": self.status, "severity": self.severity}

    def _check(self, action: str, request: Action) -> None:
        if self.incident_id is not None and request.incident_id != self.incident_id:
            raise ApplicationError("this incident is closed", type="IncidentClosed")
        if self.status not in ACTIONS[action][0]:
            allowed = ", ".join(allowed_actions(self.status)) or "none"
            raise ApplicationError(
                f"cannot {action} the incident: it is {self.status}; allowed actions: {allowed}",
                self.status,
                type="InvalidTransition",
            )

    async def _act(self, action: str, request: Action) -> dict[str, Any]:
        await workflow.wait_condition(lambda: self.incident_id is not None)
        async with self.lock:
            self._check(action, request)  # again: the state may have moved while we waited
            target = ACTIONS[action][1]
            await self._transition(target, actor=request.actor, note=request.note)
            self.status = target
            self.outbox.append(target)
        return self.state()

    @workflow.update
    async def acknowledge(self, request: Action) -> dict[str, Any]:
        return await self._act("acknowledge", request)

    @acknowledge.validator
    def _acknowledge_ok(self, request: Action) -> None:
        self._check("acknowledge", request)

    @workflow.update
    async def resolve(self, request: Action) -> dict[str, Any]:
        return await self._act("resolve", request)

    @resolve.validator
    def _resolve_ok(self, request: Action) -> None:
        self._check("resolve", request)

    @workflow.update
    async def dismiss(self, request: Action) -> dict[str, Any]:
        return await self._act("dismiss", request)

    @dismiss.validator
    def _dismiss_ok(self, request: Action) -> None:
        self._check("dismiss", request)

    # --- the run ---------------------------------------------------------------------------------------
    async def _transition(self, kind: str, *, actor: str = "system", note: str | None = None, **kw: Any) -> None:
        assert self.incident_id is not None
        self.seq += 1
        await workflow.execute_activity(
            ALERTS_TRANSITION,
            TransitionInput(
                incident_id=self.incident_id,
                kind=kind,
                seq=self.seq,
                at=workflow.now().isoformat(),
                actor=actor,
                note=note,
                **kw,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
        )

    async def _notify(self, inp: IncidentInput, transition: str) -> None:
        channels: list[str] = []
        for route in inp.routes:
            if self.severity in route.get("severities", []) and transition in route.get("on", []):
                channels += [c for c in route.get("channels", []) if c not in channels]
        if transition == "escalated" and inp.escalation:
            channels += [c for c in inp.escalation.get("channels", []) if c not in channels]
        if not channels:
            return
        assert self.incident_id is not None
        incident_id = self.incident_id
        # Each send records its own outcome (also a failure after its last attempt): none raises here.
        await asyncio.gather(
            *(
                workflow.execute_activity(
                    ALERTS_SEND,
                    SendInput(
                        incident_id=incident_id,
                        transition=transition,
                        channel=channel,
                        key=f"{incident_id}:{transition}:{channel}",
                    ),
                    start_to_close_timeout=timedelta(seconds=60),
                    heartbeat_timeout=timedelta(seconds=5),
                    retry_policy=SEND_RETRY,
                )
                for channel in channels
            ),
            return_exceptions=True,
        )

    def _deadline(self, inp: IncidentInput) -> datetime | None:
        due: list[datetime] = []
        if inp.escalation and not self.escalated and self.status == FIRING and self.opened_at:
            due.append(self.opened_at + timedelta(minutes=float(inp.escalation["after_minutes"])))
        if inp.resolve_after_minutes and self.last_fired and self.status not in CLOSED:
            due.append(self.last_fired + timedelta(minutes=float(inp.resolve_after_minutes)))
        return min(due) if due else None

    def _carry(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id,
            "status": self.status,
            "severity": self.severity,
            "seq": self.seq,
            "escalated": self.escalated,
            "opened_at": self.opened_at.isoformat() if self.opened_at else None,
            "last_fired": self.last_fired.isoformat() if self.last_fired else None,
            "seen": self.seen,
            "inbox": [(kind, asdict(item)) for kind, item in self.inbox],
        }

    def _restore(self, carried: dict[str, Any]) -> None:
        self.incident_id = carried["incident_id"]
        self.status = carried["status"]
        self.severity = carried["severity"]
        self.seq = carried["seq"]
        self.escalated = carried["escalated"]
        self.opened_at = datetime.fromisoformat(carried["opened_at"]) if carried.get("opened_at") else None
        self.last_fired = datetime.fromisoformat(carried["last_fired"]) if carried.get("last_fired") else None
        self.seen = list(carried.get("seen") or [])
        self.inbox = [
            (kind, Fire(**item) if kind == "fire" else Clear(**item)) for kind, item in carried.get("inbox") or []
        ] + self.inbox

    @workflow.run
    async def run(self, inp: IncidentInput) -> dict[str, Any]:
        if inp.carried:
            self._restore(inp.carried)
        else:
            self.severity = inp.severity
            self.inbox = [("fire", fire) for fire in inp.pending] + self.inbox
            await workflow.wait_condition(lambda: any(kind == "fire" for kind, _ in self.inbox))
            index = next(i for i, (kind, _) in enumerate(self.inbox) if kind == "fire")
            first: Fire = self.inbox.pop(index)[1]
            del self.inbox[:index]  # a clear before the first fire means nothing
            info = workflow.info()
            incident_id = str(workflow.uuid4())
            async with self.lock:
                self.incident_id = await workflow.execute_activity(
                    ALERTS_OPEN,
                    OpenInput(
                        incident_id=incident_id,
                        workflow_id=info.workflow_id,
                        run_id=info.run_id,
                        incident=inp,
                        fire=first,
                    ),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=DB_RETRY,
                    result_type=str,
                )
                self.opened_at = self.last_fired = workflow.now()
                self.outbox.append("opened")
        while True:
            deadline = self._deadline(inp)
            if not self.inbox and not self.outbox and self.status not in CLOSED:
                timeout = (deadline - workflow.now()).total_seconds() if deadline else None
                try:
                    await workflow.wait_condition(
                        lambda: bool(self.inbox or self.outbox) or self.status in CLOSED,
                        timeout=max(timeout, 0.001) if timeout is not None else None,
                    )
                except TimeoutError:
                    pass
            async with self.lock:
                await self._step(inp, deadline)
            while self.outbox:
                await self._notify(inp, self.outbox.pop(0))
            if self.status in CLOSED:
                break
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                inp.carried = self._carry()
                workflow.continue_as_new(inp)
        await workflow.wait_condition(workflow.all_handlers_finished)
        fires = [item for kind, item in self.inbox if kind == "fire"]
        if fires:
            # Alerts that came in while this incident was closing: the next incident, same workflow id.
            workflow.continue_as_new(replace(inp, carried=None, pending=fires))
        return self.state()

    async def _step(self, inp: IncidentInput, deadline: datetime | None) -> None:
        """One thing that happened, under the lock: a signal, or a timer that came due."""
        if self.status in CLOSED:
            return  # late fires open the next incident once this one has ended (see run)
        if self.inbox:
            kind, item = self.inbox.pop(0)
            if kind == "fire":
                self.last_fired = workflow.now()
                await self._transition("fired", fire=item)
            elif inp.auto_resolve or item.final:
                note = item.reason if item.final else f"condition cleared: {item.reason}"
                await self._transition("resolved", note=note, severity=None, fire=None)
                self.status = "resolved"
                self.outbox.append("resolved")
            return
        if deadline is None or workflow.now() < deadline:
            return
        if inp.escalation and not self.escalated and self.status == FIRING and self.opened_at:
            if workflow.now() >= self.opened_at + timedelta(minutes=float(inp.escalation["after_minutes"])):
                self.escalated = True
                minutes = float(inp.escalation["after_minutes"])
                self.severity = inp.escalation.get("severity") or self.severity
                await self._transition("escalated", note=f"unacknowledged for {minutes:g} min", severity=self.severity)
                self.outbox.append("escalated")
                return
        if inp.resolve_after_minutes and self.last_fired and self.status in (FIRING, ACKNOWLEDGED):
            if workflow.now() >= self.last_fired + timedelta(minutes=float(inp.resolve_after_minutes)):
                await self._transition("resolved", note=f"no alert for {inp.resolve_after_minutes:g} min")
                self.status = "resolved"
                self.outbox.append("resolved")
