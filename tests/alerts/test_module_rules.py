"""Alert rules shipped in a module's manifest (docs/alerting.md "Rules shipped by modules"):
refused at registration with the path and code of the fault; created when the module is enabled,
editable (marked modified) and reset to the default; upgrades update, add, delete or detach them;
disable pauses them (not evaluated), enable resumes them; uninstall removes them and resolves their
open incidents (on a real Temporal dev server and worker)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select

from activities.services.series import SeriesService
from registry.models import AlertRule, AuditLog, Incident
from registry.services import alerts_eval
from tests.alerts.helpers import FAILING, NAME, OFFLINE, POWER, rules_manifest
from tests.conftest import eventually, running_worker
from tests.modules.conftest import write_module

MODULES = "/api/v1/modules"
RULES = "/api/v1/alerts/rules"


class Calls:
    def __init__(self, client: Any, headers: dict[str, str], root: Path) -> None:
        self.client, self.headers, self.root = client, headers, root

    async def register(self, data: dict[str, Any], expect: int = 201) -> dict[str, Any]:
        folder = write_module(self.root, data)
        r = await self.client.post(MODULES, json={"path": str(folder)}, headers=self.headers)
        assert r.status_code == expect, r.text
        return r.json()

    async def act(self, action: str, expect: int = 200) -> dict[str, Any]:
        r = await self.client.post(f"{MODULES}/{NAME}/{action}", headers=self.headers)
        assert r.status_code == expect, r.text
        return r.json()

    async def upgrade(self, data: dict[str, Any]) -> None:
        folder = write_module(self.root, data)
        r = await self.client.post(f"{MODULES}/{NAME}/upgrade", json={"path": str(folder)}, headers=self.headers)
        assert r.status_code == 200, r.text

    async def enabled(self, data: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        await self.register(data or rules_manifest())
        await self.act("install")
        await self.act("enable")
        return await self.rules()

    async def rules(self) -> dict[str, dict[str, Any]]:
        r = await self.client.get(RULES, params={"module": NAME}, headers=self.headers)
        assert r.status_code == 200, r.text
        return {rule["module_rule"]: rule for rule in r.json()["items"]}


def calls(client: Any, headers: dict[str, str], tmp_path: Path) -> Calls:
    return Calls(client, headers, tmp_path / "src")


async def test_registration_refuses_bad_rules_naming_path_and_code(client, admin_headers, tmp_path):
    other_series = {**POWER, "condition": {**POWER["condition"], "module": "meters"}}
    unknown_series = {**OFFLINE, "condition": {**OFFLINE["condition"], "series": "powr"}}
    other_job = {**FAILING, "name": "other job", "condition": {"job": "data-sync.hourly-sync", "failures": 2}}
    bad_template = {**POWER, "name": "templated", "message": "{{labels.site}} is high"}
    duplicate = {**OFFLINE, "name": "power high"}
    data = rules_manifest(alerts=[other_series, unknown_series, other_job, bad_template, duplicate])
    body = await calls(client, admin_headers, tmp_path).register(data, expect=422)
    assert body["error"]["code"] == "invalid_manifest"
    found = {(e["path"], e["code"]) for e in body["error"]["details"]["errors"]}
    assert found == {
        ("/alerts/0/condition/module", "alert.other_module"),
        ("/alerts/1/condition/series", "alert.unknown_series"),
        ("/alerts/2/condition/job", "alert.other_module"),
        ("/alerts/3/message", "alert.template"),
        ("/alerts/4/name", "alert.duplicate"),
    }
    # The shape is the JSON Schema's: an unknown key is refused before the rule checker runs.
    data = rules_manifest(alerts=[{**POWER, "window": 5}])
    body = await calls(client, admin_headers, tmp_path / "b").register(data, expect=422)
    assert [(e["path"], e["code"]) for e in body["error"]["details"]["errors"]] == [
        ("/alerts/0", "schema.additionalProperties")
    ]


async def test_enable_creates_rules_an_edit_marks_modified_and_reset_restores(
    client, admin_headers, operator_headers, viewer_headers, sessions, tmp_path
):
    api = calls(client, admin_headers, tmp_path)
    await api.register(rules_manifest())
    await api.act("install")
    assert await api.rules() == {}  # not before the module is enabled
    await api.act("enable")
    rules = await api.rules()
    assert set(rules) == {"power high", "offline", "collect failing"}
    power = rules["power high"]
    assert power["name"] == "watt-mod: power high"
    assert (power["origin"], power["module_name"], power["modified"], power["detached"]) == (
        "module",
        NAME,
        False,
        False,
    )
    assert power["condition"]["module"] == NAME  # defaulted to the module itself
    assert power["interval_seconds"] == 60 and power["paused_reason"] is None
    assert rules["collect failing"]["condition"]["job"] == f"{NAME}.collect"
    async with sessions() as s:
        audited = list(await s.scalars(select(AuditLog.details).where(AuditLog.action == "alert_rule.create")))
    assert sorted(d["rule"] for d in audited) == ["collect failing", "offline", "power high"]
    assert all(d["origin"] == "module" and d["module"] == NAME for d in audited)

    # An operator edits it through the normal API: modified.
    changed = {"condition": {**power["condition"], "threshold": 4500}}
    r = await client.patch(f"{RULES}/{power['id']}", json=changed, headers=operator_headers)
    assert r.status_code == 200, r.text
    assert r.json()["modified"] is True and r.json()["condition"]["threshold"] == 4500
    # A viewer may not reset; an operator may, and the module's definition is back.
    r = await client.post(f"{RULES}/{power['id']}/reset", headers=viewer_headers)
    assert r.status_code == 403, r.text
    r = await client.post(f"{RULES}/{power['id']}/reset", headers=operator_headers)
    assert r.status_code == 200, r.text
    assert r.json()["modified"] is False and r.json()["condition"] == power["condition"]
    # Enabling again (after a disable) keeps the rules: no second copy.
    await api.act("disable")
    await api.act("enable")
    assert {k: v["id"] for k, v in (await api.rules()).items()} == {k: v["id"] for k, v in rules.items()}

    # An operator's own rule has no default to reset to.
    mine = {**POWER, "name": "mine", "condition": {**POWER["condition"], "module": NAME}}
    r = await client.post(RULES, json=mine, headers=operator_headers)
    assert r.status_code == 201, r.text
    assert r.json()["origin"] == "api" and r.json()["module_name"] is None
    r = await client.post(f"{RULES}/{r.json()['id']}/reset", headers=operator_headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict", r.text
    r = await client.post(f"{RULES}/no-such-rule/reset", headers=operator_headers)
    assert r.status_code == 404, r.text


async def test_upgrade_updates_adds_deletes_and_detaches(client, admin_headers, operator_headers, tmp_path):
    api = calls(client, admin_headers, tmp_path)
    before = await api.enabled()
    # The operator changes "offline" (modified); "collect failing" and "power high" stay as shipped.
    offline = before["offline"]
    r = await client.patch(f"{RULES}/{offline['id']}", json={"severity": "critical"}, headers=operator_headers)
    assert r.status_code == 200 and r.json()["modified"] is True, r.text

    # 1.1.0: "power high" changes, "offline" and "collect failing" leave, "power low" comes.
    power_v2 = {**POWER, "condition": {**POWER["condition"], "threshold": 5000}}
    low = {**POWER, "name": "power low", "severity": "info", "condition": {**POWER["condition"], "op": "lt",
                                                                             "threshold": 10}}  # fmt: skip
    await api.upgrade(rules_manifest("1.1.0", [power_v2, low]))
    after = await api.rules()
    assert set(after) == {"power high", "power low", "offline"}
    assert after["power high"]["id"] == before["power high"]["id"]  # updated in place
    assert after["power high"]["condition"]["threshold"] == 5000 and after["power high"]["modified"] is False
    assert after["offline"]["id"] == offline["id"]  # kept: the operator changed it
    assert (after["offline"]["detached"], after["offline"]["modified"], after["offline"]["origin"]) == (
        True,
        True,
        "module",
    )
    assert after["offline"]["severity"] == "critical"
    r = await client.get(f"{RULES}/{before['collect failing']['id']}", headers=operator_headers)
    assert r.status_code == 404  # unmodified and gone from the manifest: deleted
    # A detached rule has nothing to reset to.
    r = await client.post(f"{RULES}/{offline['id']}/reset", headers=operator_headers)
    assert r.status_code == 409 and "no longer ships" in r.json()["error"]["message"], r.text

    # 1.2.0 ships "offline" again: the kept rule is the module's again, still with the operator's change.
    await api.upgrade(rules_manifest("1.2.0", [power_v2, OFFLINE]))
    again = await api.rules()
    assert set(again) == {"power high", "offline"}
    assert again["offline"]["id"] == offline["id"]
    assert (again["offline"]["detached"], again["offline"]["modified"]) == (False, True)
    assert again["offline"]["severity"] == "critical"
    r = await client.post(f"{RULES}/{offline['id']}/reset", headers=operator_headers)
    assert r.status_code == 200 and r.json()["severity"] == "warning" and r.json()["modified"] is False, r.text


async def _evaluate(sessions: Any) -> list[alerts_eval.Signal]:
    async with sessions() as s, s.begin():
        return await alerts_eval.evaluate_due(s, now=datetime.now(UTC))


async def test_disable_pauses_the_rules_and_enable_resumes_them(client, admin_headers, settings, sessions, tmp_path):
    api = calls(client, admin_headers, tmp_path)
    rules = await api.enabled(rules_manifest(alerts=[POWER]))
    rule_id = rules["power high"]["id"]
    series = SeriesService(SimpleNamespace(settings=settings, sessions=sessions)).module_series(NAME)
    await series.write_many("power", [(datetime.now(UTC), {"endpoint": "e1"}, {"power_w": 3500.0, "total_kwh": 1.0})])

    await api.act("disable")
    paused = (await api.rules())["power high"]
    assert paused["paused_reason"] == f"module {NAME} is DISABLED" and paused["enabled"] is True
    assert [s for s in await _evaluate(sessions) if s.incident.rule_id == rule_id] == []
    async with sessions() as s:
        assert (await s.get(AlertRule, rule_id)).last_evaluated_at is None  # not even looked at

    await api.act("enable")
    assert (await api.rules())["power high"]["paused_reason"] is None
    fired = [s for s in await _evaluate(sessions) if s.incident.rule_id == rule_id]
    assert [(s.incident.labels, s.fire is not None) for s in fired] == [({"endpoint": "e1"}, True)]


async def test_uninstall_removes_the_rules_and_resolves_their_incidents(
    temporal_settings, temporal_env, client, admin_headers, sessions, tmp_path
):
    settings = temporal_settings
    api = calls(client, admin_headers, tmp_path)
    rules = await api.enabled(rules_manifest(alerts=[POWER, OFFLINE]))
    rule_id = rules["power high"]["id"]
    series = SeriesService(SimpleNamespace(settings=settings, sessions=sessions)).module_series(NAME)
    await series.write_many("power", [(datetime.now(UTC), {"endpoint": "e1"}, {"power_w": 3500.0, "total_kwh": 1.0})])

    async def incident() -> Incident | None:
        async with sessions() as s:
            return await s.scalar(select(Incident).where(Incident.rule_id == rule_id))

    async with running_worker(settings, temporal_env.client):
        async with sessions() as s, s.begin():
            signals = await alerts_eval.evaluate_due(s, now=datetime.now(UTC))
            await alerts_eval.send_signals(temporal_env.client, settings.task_queue, signals)
        opened = await eventually(incident, what="the incident of the module's rule")
        assert opened.status == "firing"

        await api.act("disable")
        await api.act("uninstall")
        assert await api.rules() == {}

        async def resolved() -> Incident | None:
            row = await incident()
            return row if row is not None and row.status == "resolved" else None

        closed = await eventually(resolved, what="the incident resolved by the uninstall")
    assert closed.timeline[-1]["kind"] == "resolved"
    assert closed.timeline[-1]["note"] == f"module {NAME} was uninstalled"
    async with sessions() as s:
        deleted = list(await s.scalars(select(AuditLog.details).where(AuditLog.action == "alert_rule.delete")))
    assert sorted((d["rule"], d["open_incidents"]) for d in deleted) == [("offline", 0), ("power high", 1)]
