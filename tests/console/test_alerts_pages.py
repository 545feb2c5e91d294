"""The console's alerting pages in real Chromium: a firing critical incident shows as a banner on
every page; an operator acknowledges and resolves it with a note from its page (timeline and
sends shown); the rules list toggles a rule; the rule form previews ("would have fired N times")
and shows the API's refusal naming the field. A rule shipped by a module shows "from module X" and
"modified", and is reset to the module's default from its page. Accessible (axe) and text-only
(markup in an event payload is shown, never run)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from tests.alerts.helpers import NAME, rules_manifest
from tests.conftest import eventually
from tests.console.conftest import XSS, api_call, axe_violations, bearer, no_script_ran, shoot, sign_in
from tests.modules.conftest import write_module

RULE = {
    "name": "demo alarms",
    "severity": "critical",
    "source": "event",
    "message": "{{event.payload.device}} alarm: {{event.payload.text}}",
    "condition": {"pattern": "demo.alarm", "conditions": [{"path": "level", "op": "gte", "value": 5}],
                  "group_by": ["device"]},
}  # fmt: skip


async def test_incident_and_rule_pages(stack: str, page: Any, users: Any) -> None:
    operator = await users("operator")
    headers = await bearer(stack, operator.email)
    rule = await api_call(stack, headers, "POST", "/api/v1/alerts/rules", json=RULE)
    event = {"name": "demo.alarm", "payload": {"device": "pump-1", "level": 7, "text": XSS}}
    await api_call(stack, headers, "POST", "/api/v1/events", json=event)

    async def firing() -> list[dict[str, Any]]:
        found = await api_call(stack, headers, "GET", "/api/v1/alerts/incidents?status=firing")
        return list(found["items"])

    [incident] = await eventually(firing, timeout=30, what="the incident to open")
    found: dict[str, Any] = {}

    # The banner, from any page; it leads to the incident.
    await sign_in(page, stack, operator.email, path="/jobs")
    banner = page.get_by_role("alert").filter(has_text="critical incident is firing")
    await expect(banner).to_be_visible()
    await banner.get_by_role("link", name=incident["title"]).click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("demo alarms (device=pump-1)")
    await expect(page.get_by_text(f"pump-1 alarm: {XSS}")).to_be_visible()
    found["incident"] = await axe_violations(page)
    await shoot(page, "incident")

    # Acknowledge with a note, then resolve: the timeline names the actor and the note.
    await page.get_by_label("Note (optional)").fill("looking at the pump")
    await page.get_by_role("button", name="Acknowledge").click()
    timeline = page.get_by_role("region", name="Timeline")
    await expect(timeline).to_contain_text("acknowledged")
    await expect(timeline).to_contain_text("looking at the pump")
    await expect(timeline).to_contain_text(f"by {operator.email}")
    await expect(page.get_by_role("button", name="Acknowledge")).to_have_count(0)
    await page.get_by_role("button", name="Resolve").click()
    await expect(timeline).to_contain_text("resolved")
    await expect(page.get_by_role("button", name="Dismiss")).to_have_count(0)
    await expect(banner).to_have_count(0)

    # The incidents list with a filter, then the rules list: disable the rule in place.
    await page.goto(stack + "/alerts?status=resolved")
    await expect(page.get_by_role("link", name=incident["title"])).to_be_visible()
    found["incidents"] = await axe_violations(page)
    await page.get_by_role("link", name="Alert rules").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Alert rules")
    switch = page.get_by_label("demo alarms enabled")
    await expect(switch).to_be_checked()
    await switch.click()  # applied once the API answers (the list is refetched)
    await expect(switch).not_to_be_checked()
    stored = await api_call(stack, headers, "GET", f"/api/v1/alerts/rules/{rule['id']}")
    assert stored["enabled"] is False
    found["rules"] = await axe_violations(page)

    # Edit: the preview counts the stored event; a bad pattern is refused, naming the field.
    await page.get_by_role("link", name="demo alarms").click()
    await expect(page.get_by_label("Name")).to_have_value("demo alarms")
    await page.get_by_role("button", name="Preview").click()
    await expect(page.get_by_test_id("preview")).to_contain_text("Would have fired 1 time in the last 24 h")
    condition = page.get_by_label("Condition (JSON)")
    await condition.fill(json.dumps({**RULE["condition"], "pattern": "demo..alarm"}))
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("alert")).to_contain_text("condition.pattern")
    found["rule-form"] = await axe_violations(page)
    await shoot(page, "alert-rule")

    serious = {name: v for name, v in found.items() if v}
    assert serious == {}, json.dumps(serious, indent=1)
    await no_script_ran(page)


async def test_module_rule_badges_and_reset(stack: str, page: Any, users: Any, tmp_path: Path) -> None:
    admin = await users("admin")
    headers = await bearer(stack, admin.email)
    folder = write_module(tmp_path / "src", rules_manifest())
    await api_call(stack, headers, "POST", "/api/v1/modules", json={"path": str(folder)})
    await api_call(stack, headers, "POST", f"/api/v1/modules/{NAME}/install")
    await api_call(stack, headers, "POST", f"/api/v1/modules/{NAME}/enable")
    rules = await api_call(stack, headers, "GET", f"/api/v1/alerts/rules?module={NAME}")
    power = next(r for r in rules["items"] if r["module_rule"] == "power high")
    condition = {**power["condition"], "threshold": 4500}
    await api_call(stack, headers, "PATCH", f"/api/v1/alerts/rules/{power['id']}", json={"condition": condition})

    # The list: each of the module's rules says where it comes from; the edited one is modified.
    await sign_in(page, stack, admin.email, path="/alerts/rules")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"{NAME}: power high"))
    await expect(row.get_by_test_id("rule-origin")).to_have_text(f"from module {NAME}")
    await expect(row.get_by_test_id("rule-modified")).to_have_text("modified")
    offline = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"{NAME}: offline"))
    await expect(offline.get_by_test_id("rule-origin")).to_be_visible()
    await expect(offline.get_by_test_id("rule-modified")).to_have_count(0)
    found = {"rules": await axe_violations(page)}
    await shoot(page, "alert-rules-module")

    # Its page: reset to the module's default, confirmed; the form shows the shipped threshold.
    await row.get_by_role("link", name=f"{NAME}: power high").click()
    await expect(page.get_by_test_id("rule-modified")).to_be_visible()
    await page.get_by_role("button", name="Reset to module default").click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_role("button", name="Reset to module default").click()
    await expect(page.get_by_test_id("rule-modified")).to_have_count(0)
    await expect(page.get_by_label("Condition (JSON)")).to_have_value(re.compile(r'"threshold": 3000\b'))
    found["rule-form"] = await axe_violations(page)
    stored = await api_call(stack, headers, "GET", f"/api/v1/alerts/rules/{power['id']}")
    assert stored["modified"] is False and stored["condition"]["threshold"] == 3000
    serious = {name: v for name, v in found.items() if v}
    assert serious == {}, json.dumps(serious, indent=1)
