"""The alert rules a module ships (its manifest's ``alerts``), kept in step with its lifecycle.

* **enable**, and the upgrade of an enabled or disabled module, call :func:`sync`: each definition
  becomes a rule (``origin`` ``module``, ``module_name``, ``module_rule``) when the module has none
  for it; an unmodified rule takes the current definition; a rule whose definition left the
  manifest is deleted when unmodified, and kept but ``detached`` when an operator changed it. As for
  the jobs of ``createJob``, a rule an operator deleted comes back at the next enable or upgrade:
  disable it to silence it (a change like any other, which marks it modified).
* **disable** pauses the module's rules (``paused_reason``: not evaluated, so no no-data incident
  from a module that stopped writing); enable resumes them.
* **uninstall** (and delete) removes them; their open incidents are resolved with the reason, by
  the lifecycle hook (a Temporal signal to each incident workflow).
* :func:`reset` puts one rule back to its module's definition.

Definitions are checked by the same checker as the API's rules (registry/services/alerts.py), in
the module's own scope: its series, its job types. Every change is audited with the transition's
actor. Nothing commits here: the lifecycle's unit of work does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from activities.alerts_types import CLOSED
from registry.errors import Conflict
from registry.models import AlertRule, AlertState, Incident, Module, ModuleStatus
from registry.services import alerts, audit
from registry.services.common import Actor

ORIGIN = "module"


def definitions(manifest: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The rule definitions of a (validated) manifest, in order."""
    items = (manifest or {}).get("alerts")
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict) and isinstance(item.get("name"), str)]


def rule_name(module: str, name: str) -> str:
    """The stored name of a module's rule: rule names are unique on the platform, not per module."""
    return f"{module}: {name}"


def fields_of(module: Module, definition: Mapping[str, Any], *, default_interval: int) -> dict[str, Any]:
    """A definition's rule fields, checked in the module's own scope."""
    data = {**definition, "name": rule_name(module.name, str(definition["name"]))}
    return alerts.check(
        data, alerts.Scope.of_module(module.name, module.manifest or {}), default_interval=default_interval
    )


async def rules_of(*, session: AsyncSession, module: str) -> list[AlertRule]:
    query = select(AlertRule).where(AlertRule.module_name == module, AlertRule.origin == ORIGIN)
    return list(await session.scalars(query.order_by(AlertRule.name)))


async def _free_name(session: AsyncSession, name: str, rule_id: str | None = None) -> str:
    """``name``, or ``name (2)``, ``(3)``... when an operator's rule holds it already."""
    candidate, n = name, 2
    while True:
        query = select(AlertRule.id).where(AlertRule.name == candidate)
        if rule_id is not None:
            query = query.where(AlertRule.id != rule_id)
        if await session.scalar(query.limit(1)) is None:
            return candidate
        candidate, n = f"{name} ({n})", n + 1


def _audit(session: AsyncSession, actor: Actor, rule: AlertRule, verb: str, **details: Any) -> None:
    audit.record(
        session=session,
        actor=actor,
        action=f"alert_rule.{verb}",
        target_type="alert_rule",
        target_id=rule.id,
        details={"name": rule.name, "origin": ORIGIN, "module": rule.module_name, "rule": rule.module_rule, **details},
    )


def _pause_reason(module: Module) -> str | None:
    return None if module.status == ModuleStatus.ENABLED.value else f"module {module.name} is {module.status}"


async def sync(*, session: AsyncSession, module: Module, actor: Actor, default_interval: int) -> list[str]:
    """Bring the module's rules to its manifest (see the module docstring); paused unless it is enabled.

    Returns:
        The workflow ids of the open incidents of the rules deleted (to be resolved by the caller).
    """
    have = {rule.module_rule: rule for rule in await rules_of(session=session, module=module.name)}
    paused = _pause_reason(module)
    for definition in definitions(module.manifest):
        fields = fields_of(module, definition, default_interval=default_interval)
        rule = have.pop(definition["name"], None)
        if rule is None:
            fields["name"] = await _free_name(session, fields["name"])
            rule = AlertRule(
                **fields,
                origin=ORIGIN,
                module_name=module.name,
                module_rule=definition["name"],
                created_by=actor.email,
            )
            session.add(rule)
            await session.flush()
            _audit(session, actor, rule, "create", version=module.version)
        elif rule.detached:
            rule.detached = False  # back in the manifest; the operator's changes stay (it is modified)
            _audit(session, actor, rule, "attach", version=module.version)
        elif not rule.modified:
            fields["name"] = await _free_name(session, fields["name"], rule.id)
            if fields != alerts.as_fields(rule):
                await alerts.replace_fields(session=session, rule=rule, fields=fields)
                _audit(session, actor, rule, "update", version=module.version)
    closing: list[str] = []
    for rule in have.values():  # left the manifest
        if rule.modified:
            if not rule.detached:
                rule.detached = True
                _audit(session, actor, rule, "detach", version=module.version)
        else:
            closing += await _delete(session, actor, rule, f"module {module.name} {module.version} no longer ships it")
    await _set_paused(session, module.name, paused)
    return closing


async def _set_paused(session: AsyncSession, module: str, reason: str | None) -> None:
    for rule in await rules_of(session=session, module=module):
        if reason is not None and rule.paused_reason is None:
            # What evaluation remembered is stale once the rule resumes: it starts over.
            await session.execute(delete(AlertState).where(AlertState.rule_id == rule.id))
        rule.paused_reason = reason
    await session.flush()


async def pause(*, session: AsyncSession, module: Module) -> None:
    """Disable: the module's rules are no longer evaluated (open incidents stay, to be handled)."""
    await _set_paused(session, module.name, _pause_reason(module))


async def _open_incidents(session: AsyncSession, rule_ids: list[str]) -> list[str]:
    if not rule_ids:
        return []
    rows = await session.scalars(
        select(Incident.workflow_id).where(Incident.rule_id.in_(rule_ids), Incident.status.not_in(CLOSED))
    )
    return list(rows)


async def _delete(session: AsyncSession, actor: Actor, rule: AlertRule, reason: str) -> list[str]:
    open_ids = await _open_incidents(session, [rule.id])
    _audit(session, actor, rule, "delete", reason=reason, open_incidents=len(open_ids))
    await session.delete(rule)
    await session.flush()
    return open_ids


async def remove(*, session: AsyncSession, module: str, actor: Actor, reason: str) -> list[str]:
    """Uninstall / delete: every rule of the module goes, modified or not.

    Returns:
        The workflow ids of their open incidents (to be resolved by the caller with ``reason``).
    """
    closing: list[str] = []
    for rule in await rules_of(session=session, module=module):
        closing += await _delete(session, actor, rule, reason)
    return closing


async def reset(*, session: AsyncSession, rule_id: str, default_interval: int) -> AlertRule:
    """Put a module's rule back to its module's current definition (``modified`` cleared).

    Raises:
        NotFound: no such rule.
        Conflict: an operator's rule, or one its module no longer ships (detached).
    """
    rule = await alerts.get_rule(session=session, rule_id=rule_id)
    if rule.origin != ORIGIN or rule.module_name is None:
        raise Conflict(f"alert rule {rule.name!r} was not shipped by a module: there is no default to reset to")
    module = await session.scalar(select(Module).where(Module.name == rule.module_name))
    definition = next(
        (d for d in definitions(module.manifest if module else None) if d["name"] == rule.module_rule), None
    )
    if module is None or definition is None:
        raise Conflict(
            f"module {rule.module_name} no longer ships rule {rule.module_rule!r}: there is no default to reset to",
            details={"module": rule.module_name, "rule": rule.module_rule},
        )
    fields = fields_of(module, definition, default_interval=default_interval)
    fields["name"] = await _free_name(session, fields["name"], rule.id)
    await alerts.replace_fields(session=session, rule=rule, fields=fields)
    rule.modified = False
    rule.detached = False
    await session.flush()
    return rule
