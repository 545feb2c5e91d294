"""Contracts between the incident workflow, its activities and whoever signals it (the alert
evaluator, the event dispatcher, ``ctx.alerts``). Plain dataclasses: no DB or network imports, so
workflow code can import them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INCIDENT_WORKFLOW = "autoplat.incident"
ALERTS_OPEN = "autoplat.alerts.open"
ALERTS_TRANSITION = "autoplat.alerts.transition"
ALERTS_SEND = "autoplat.alerts.send"
ALERTS_EVALUATE = "autoplat.alerts.evaluate"

#: Incident states; ``resolved`` and ``dismissed`` are final (the workflow ends).
FIRING, ACKNOWLEDGED, RESOLVED, DISMISSED = "firing", "acknowledged", "resolved", "dismissed"
CLOSED = (RESOLVED, DISMISSED)
#: Action -> (states it is allowed from, state it leads to). The API's 409 and the workflow's
#: update validators read this one table.
ACTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "acknowledge": ((FIRING,), ACKNOWLEDGED),
    "resolve": ((FIRING, ACKNOWLEDGED), RESOLVED),
    "dismiss": ((FIRING, ACKNOWLEDGED), DISMISSED),
}
#: Sends of one notification: attempts before it is recorded as failed (nothing retries forever).
SEND_ATTEMPTS = 5


def allowed_actions(status: str) -> list[str]:
    return [name for name, (sources, _) in ACTIONS.items() if status in sources]


def delivery_id(key: str) -> str:
    """The id a send carries to its receiver (``X-Autoplat-Delivery``, the email's ``Message-ID``):
    derived from the send's idempotency key, so a repeated send carries the same one."""
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:32]


def incident_workflow_id(rule_id: str | None, group_key: str, module: str | None = None) -> str:
    """One workflow id per (rule, label set), or per (module, dedup key) for ``ctx.alerts``."""
    return f"incident-{rule_id}-{group_key}" if rule_id else f"incident-m-{module}-{group_key}"


@dataclass
class Fire:
    """The condition holds (again): opens the incident, or refreshes an open one."""

    title: str
    message: str
    at: str
    value: float | None = None
    #: When the condition started to hold (evaluation lag = opened - since).
    since: str | None = None
    #: Deduplicates a repeated delivery (an event id, a ``ctx.alerts`` call id).
    key: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class Clear:
    """The condition no longer holds: resolves an incident whose rule resolves automatically.
    ``final``: the rule itself is gone (its module was uninstalled...): resolves any incident,
    with ``reason`` as the note."""

    at: str
    reason: str
    value: float | None = None
    final: bool = False


@dataclass
class Action:
    """Acknowledge / resolve / dismiss by a person (an update of the incident workflow)."""

    incident_id: str
    actor: str
    note: str | None = None


@dataclass
class IncidentInput:
    rule_id: str | None
    rule_name: str
    group_key: str
    labels: dict[str, str]
    severity: str
    routes: list[dict[str, Any]] = field(default_factory=list)
    escalation: dict[str, Any] | None = None
    resolve_after_minutes: float | None = None
    #: Series and job rules resolve when their condition clears; event rules do not.
    auto_resolve: bool = True
    module_name: str | None = None
    dedup_key: str | None = None
    #: The state carried over a continue-as-new.
    carried: dict[str, Any] | None = None
    #: Alerts that arrived while the previous incident of this id was closing: they open this one.
    pending: list[Fire] = field(default_factory=list)


@dataclass
class OpenInput:
    incident_id: str
    workflow_id: str
    run_id: str
    incident: IncidentInput
    fire: Fire


@dataclass
class TransitionInput:
    incident_id: str
    #: ``fired`` (a refresh), ``acknowledged``, ``escalated``, ``resolved``, ``dismissed``.
    kind: str
    #: The transition's number within the incident: a retried activity writes it once.
    seq: int
    at: str
    actor: str
    note: str | None = None
    severity: str | None = None
    fire: Fire | None = None


@dataclass
class SendInput:
    incident_id: str
    transition: str
    channel: str
    #: The idempotency key: one send per (incident, transition, channel), whatever the retries.
    key: str
