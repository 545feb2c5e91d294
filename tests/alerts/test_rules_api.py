"""Alert rules over the API: CRUD (audited, alerts:write), every refusal a 422 naming the field with
nothing stored, the preview from stored series points and events, and active windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from activities.services.series import SeriesService
from registry.models import AlertRule, AuditLog
from registry.services import alerts
from registry.services.events import record
from tests.alerts.helpers import add_meters_module

RULE: dict[str, Any] = {
    "name": "meter over 3 kW",
    "severity": "critical",
    "source": "series",
    "message": "{{labels.meter}} at {{labels.site}} draws {{value}} W (limit {{threshold}})",
    "condition": {
        "module": "meters",
        "series": "meter",
        "field": "power_w",
        "agg": "avg",
        "window_minutes": 5,
        "op": "gt",
        "threshold": 3000,
        "resolve_threshold": 2800,
        "for_evaluations": 2,
    },
    "active": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "22:00", "end": "06:00", "tz": "Europe/Berlin"}],
    "routes": [{"severities": ["critical"], "channels": ["ops"]}],
    "escalation": {"after_minutes": 15, "severity": "critical", "channels": ["pager"]},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """RULE with one field (dotted path, list indexes as numbers) replaced."""
    import copy

    rule = copy.deepcopy(RULE)
    *parents, last = path.split(".")
    node: Any = rule
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return rule


BAD = [
    ("condition.series", "nope", ["body", "condition", "series"], "declares no series"),
    ("condition.field", "volts", ["body", "condition", "field"], "has no field"),
    ("condition.module", "ghost", ["body", "condition", "module"], "unknown module"),
    ("condition.agg", "increase", ["body", "condition", "agg"], "increase needs a counter"),
    ("condition.resolve_threshold", 3500, ["body", "condition", "resolve_threshold"], "at or below"),
    ("active.0.start", "25:00", ["body", "active", 0, "start"], "HH:MM"),
    ("active.0.tz", "Mars/Olympus", ["body", "active", 0, "tz"], "IANA timezone"),
    ("active.0.days", ["mon", "someday"], ["body", "active", 0, "days"], "mon"),
    ("message", "{{labels.building}} is hot", ["body", "message"], "missing path"),
    ("message", "{{nothing.here}} is hot", ["body", "message"], "names no known value"),
    ("routes.0.on", ["opened", "exploded"], ["body", "routes", 0, "on"], "opened"),
    ("escalation.severity", "info", ["body", "escalation", "severity"], "raises the severity"),
]


async def test_rules_crud_refusals_and_preview(client, sessions, settings, operator_headers, viewer_headers):
    await add_meters_module(sessions)

    # Every refusal names the field; nothing is stored.
    for path, value, loc, text in BAD:
        r = await client.post("/api/v1/alerts/rules", json=_with(path, value), headers=operator_headers)
        assert r.status_code == 422, (path, r.text)
        error = r.json()["error"]
        assert error["details"][0]["loc"] == loc, (path, error)
        assert text in error["message"], (path, error["message"])
    event_rule = {
        "name": "bad pattern",
        "source": "event",
        "message": "x",
        "condition": {"pattern": "meter..alarm"},
    }
    r = await client.post("/api/v1/alerts/rules", json=event_rule, headers=operator_headers)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == ["body", "condition", "pattern"]
    r = await client.post("/api/v1/alerts/rules", json={**RULE, "severity": "loud"}, headers=operator_headers)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"][-1] == "severity"
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(AlertRule)) == 0

    # Viewers read, operators write (audited).
    r = await client.post("/api/v1/alerts/rules", json=RULE, headers=viewer_headers)
    assert r.status_code == 403
    r = await client.post("/api/v1/alerts/rules", json=RULE, headers=operator_headers)
    assert r.status_code == 201, r.text
    rule = r.json()
    assert rule["interval_seconds"] == settings.alerts_default_interval_seconds
    assert rule["routes"] == [
        {"severities": ["critical"], "channels": ["ops"], "on": ["opened", "escalated", "resolved"]}
    ]
    r = await client.post("/api/v1/alerts/rules", json=RULE, headers=operator_headers)
    assert r.status_code == 409 and "exists" in r.json()["error"]["message"]
    r = await client.get("/api/v1/alerts/rules", headers=viewer_headers)
    assert [x["name"] for x in r.json()["items"]] == ["meter over 3 kW"]
    r = await client.patch(
        f"/api/v1/alerts/rules/{rule['id']}", json={"enabled": False, "cooldown_seconds": 600}, headers=operator_headers
    )
    assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["cooldown_seconds"] == 600
    r = await client.patch(
        f"/api/v1/alerts/rules/{rule['id']}",
        json={"active": [{"start": "07:00", "end": "7:30"}]},
        headers=operator_headers,
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == ["body", "active", 0, "end"]
    async with sessions() as session:
        actions = list(await session.scalars(select(AuditLog.action).where(AuditLog.target_type == "alert_rule")))
        assert actions == ["alert_rule.create", "alert_rule.update"]

    # The preview: a meter above 3 kW for 20 minutes two hours ago fires once (two evaluations
    # in a row needed, 5-minute average); one that never crossed does not. Events: a pattern match.
    service = SeriesService(SimpleNamespace(settings=settings, sessions=sessions))
    db = service.module_series("meters")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    points = []
    for minute in range(0, 180):
        at = now - timedelta(minutes=180 - minute)
        hot = 60 <= minute < 80
        points.append((at, {"site": "berlin", "meter": "m1"}, {"power_w": 3600.0 if hot else 1200.0}))
        points.append((at, {"site": "berlin", "meter": "m2"}, {"power_w": 900.0}))
    await db.write_many("meter", points)
    always = {k: v for k, v in RULE.items() if k != "active"}
    r = await client.post("/api/v1/alerts/rules/preview", json={**always, "name": "p"}, headers=viewer_headers)
    assert r.status_code == 200, r.text
    preview = r.json()
    assert preview["fired"] == 1 and preview["groups"] == 2, preview
    assert preview["first"][0]["labels"] == {"site": "berlin", "meter": "m1"}
    async with sessions() as session, session.begin():
        for i in range(3):
            record(session=session, name="meter.alarm", payload={"meter": f"m{i % 2}", "level": 5 + i})
        record(session=session, name="meter.alarm", payload={"meter": "m9", "level": 1})
    event_rule = {
        "name": "alarms",
        "source": "event",
        "message": "{{event.payload.meter}} alarm level {{event.payload.level}}",
        "condition": {"pattern": "meter.*", "conditions": [{"path": "level", "op": "gte", "value": 5}],
                      "group_by": ["meter"]},
    }  # fmt: skip
    r = await client.post("/api/v1/alerts/rules/preview", json=event_rule, headers=viewer_headers)
    assert r.status_code == 200 and r.json()["fired"] == 3 and r.json()["groups"] == 2, r.text
    r = await client.post(
        "/api/v1/alerts/rules/preview", json={**event_rule, "cooldown_seconds": 3600}, headers=viewer_headers
    )
    assert r.json()["fired"] == 2  # one per meter within the cooldown

    r = await client.delete(f"/api/v1/alerts/rules/{rule['id']}", headers=operator_headers)
    assert r.status_code == 204
    assert (await client.get(f"/api/v1/alerts/rules/{rule['id']}", headers=viewer_headers)).status_code == 404


@pytest.mark.parametrize(
    ("at", "inside"),
    [
        ("2026-12-07T21:59:00+01:00", False),  # Monday before the window
        ("2026-12-07T22:00:00+01:00", True),  # Monday 22:00
        ("2026-12-08T05:59:00+01:00", True),  # Tuesday early: Monday's overnight window
        ("2026-12-08T06:00:00+01:00", False),
        ("2026-12-12T23:00:00+01:00", False),  # Saturday night: not a listed day
        ("2026-12-13T02:00:00+01:00", False),  # Sunday early: Saturday's window, not listed
        ("2026-12-05T02:00:00+01:00", True),  # Saturday early: Friday's overnight window
        ("2026-12-07T21:30:00+00:00", True),  # 22:30 in Berlin, given in UTC
    ],
)
def test_overnight_windows_follow_the_weekday_they_start_on(at: str, inside: bool):
    windows = alerts.normalize_windows(RULE["active"])
    assert alerts.in_windows(windows, datetime.fromisoformat(at)) is inside
