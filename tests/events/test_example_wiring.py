"""The example module's listeners, end to end through the API's background dispatcher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import eventually
from tests.jobs.helpers import put_module

EXAMPLE = Path(__file__).resolve().parents[2] / "example_modules" / "data_sync"


# ``worker`` first: it points the settings at the test's task queue before the app (and its
# dispatcher) is built.
async def test_health_alert_event_triggers_the_notify_job(worker, client, sessions, settings, operator_headers):
    await put_module(sessions, settings.state_dir, EXAMPLE)
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "data-sync", "job_type": "notify", "name": "page-on-call", "schedule": None},
        headers=operator_headers,
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    r = await client.post(
        "/api/v1/events", json={"name": "health.alert", "payload": {"status": "unhealthy"}}, headers=operator_headers
    )
    assert r.status_code == 201, r.text
    event_id = r.json()["id"]

    async def triggered() -> list[dict[str, Any]]:
        page = await client.get(
            "/api/v1/executions",
            params={"job_id": job_id, "trigger": "event", "status": "COMPLETED", "include": "result"},
            headers=operator_headers,
        )
        return page.json()["items"]

    runs = await eventually(triggered, timeout=30, what="the notify job triggered by health.alert")
    assert len(runs) == 1
    assert runs[0]["event_id"] == event_id
    assert runs[0]["result"]["subject"] == "data-sync alert: unhealthy"
