"""``ctx.alerts``: in the harness (MemoryAlerts), and on the platform from a confined handler
process: raise opens an incident by dedup key, raising again refreshes it, resolve closes it; a bad
call fails the step without a retry."""

from __future__ import annotations

from typing import Any

import pytest

from autoplat.alerts import AlertError
from autoplat.testing import MemoryServices, run_step
from tests.alerts.helpers import receiver
from tests.conftest import eventually
from tests.jobs.helpers import put_module, write_module

CODE = """
async def check(ctx):
    level = ctx.config.get("level", 0)
    if level > 100:
        return await ctx.alerts.raise_(
            "backlog", "Queue backlog", message=f"{level} waiting", severity="critical",
            labels={"queue": "orders"}, channels=["ops"],
        )
    return await ctx.alerts.resolve("backlog", note=f"down to {level}")

def check_sync(ctx):
    return ctx.alerts.raise_("backlog", "Queue backlog", message="sync", severity="loud")
"""
CONFIG = {"type": "object", "properties": {"level": {"type": "integer"}}}


def test_harness_keeps_incidents_by_dedup_key(tmp_path):
    namespace: dict[str, Any] = {}
    exec(CODE, namespace)  # noqa: S102 - the handlers under test
    memory = MemoryServices()
    for level in (150, 180):
        result = run_step(namespace["check"], config={"level": level}, memory=memory)
        assert result.ok, result.error
    assert [i["count"] for i in memory.alerts.open()] == [2]
    assert memory.alerts.incidents["backlog"]["message"] == "180 waiting"
    run_step(namespace["check"], config={"level": 3}, memory=memory)
    assert memory.alerts.open() == [] and memory.alerts.incidents["backlog"]["status"] == "resolved"
    failed = run_step(namespace["check_sync"], memory=memory, raise_errors=False)
    assert isinstance(failed.error, AlertError) and "severity" in str(failed.error)


@pytest.mark.usefixtures("worker")
async def test_a_handler_raises_refreshes_and_resolves_an_incident(
    temporal_settings, client, sessions, operator_headers, viewer_headers, tmp_path
):
    async with receiver() as hook:
        temporal_settings.notify_channels = {"ops": {"type": "webhook", "url": hook.url}}
        folder = write_module(tmp_path, name="queues", code=CODE, jobs=[
            {"name": "check", "description": "checks the queue", "handler": "check", "config": CONFIG},
            {"name": "check-sync", "description": "a bad call", "handler": "check_sync"},
        ])  # fmt: skip
        await put_module(sessions, temporal_settings.state_dir, folder)

        async def run(job_type: str, level: int = 0) -> dict[str, Any]:
            body = {"module": "queues", "job_type": job_type, "name": f"{job_type}-{level}", "schedule": None,
                    "config": {"level": level} if job_type == "check" else {}}  # fmt: skip
            r = await client.post("/api/v1/jobs", json=body, headers=operator_headers)
            assert r.status_code == 201, r.text
            r = await client.post(
                f"/api/v1/jobs/{r.json()['id']}/execute", params={"wait": "true", "wait_timeout": 60},
                headers=operator_headers,
            )  # fmt: skip
            assert r.status_code in (200, 201), r.text
            return r.json()

        first = await run("check", 150)
        assert first["status"] == "COMPLETED", first
        assert first["result"]["workflow_id"].startswith("incident-m-queues-")

        async def opened() -> list[dict[str, Any]]:
            return list((await client.get("/api/v1/alerts/incidents", headers=viewer_headers)).json()["items"])

        # The handler signalled the incident's workflow; its first activity stores the row.
        [incident] = await eventually(opened, what="the incident row")
        assert incident["module_name"] == "queues" and incident["dedup_key"] == "backlog"
        assert incident["labels"] == {"queue": "orders", "module": "queues"}
        assert incident["severity"] == "critical" and incident["message"] == "150 waiting"
        assert (await run("check", 180))["status"] == "COMPLETED"

        async def detail() -> dict[str, Any]:
            r = await client.get(f"/api/v1/alerts/incidents/{incident['id']}", headers=viewer_headers)
            return r.json()

        refreshed = await eventually(lambda: _when(detail, lambda d: d["fire_count"] == 2), what="a refresh")
        assert refreshed["message"] == "180 waiting"
        assert (await run("check", 3))["status"] == "COMPLETED"
        closed = await eventually(lambda: _when(detail, lambda d: d["status"] == "resolved"), what="resolved")
        assert "resolved by module queues: down to 3" in closed["timeline"][-1]["note"]
        sends = await eventually(
            lambda: _when(detail, lambda d: len([n for n in d["notifications"] if n["status"] == "sent"]) == 2),
            what="opened and resolved sent",
        )
        assert sorted(n["transition"] for n in sends["notifications"]) == ["opened", "resolved"]
        assert sorted(r["body"]["data"]["transition"] for r in hook.requests) == ["opened", "resolved"]

        bad = await run("check-sync")
        assert bad["status"] == "FAILED" and "severity" in bad["error"]["message"], bad
        assert bad["steps"][0]["attempts"] == 1


async def _when(probe: Any, ok: Any) -> Any:
    value = await probe()
    return value if ok(value) else None
