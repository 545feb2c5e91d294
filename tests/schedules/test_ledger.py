"""Pause / resume a schedule, and the slot ledger (ran / skipped / missed / pending) with its events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from registry.db import unit_of_work
from registry.models import AuditLog, Event, Job
from tests.conftest import eventually
from tests.schedules.helpers import create_job, job_runs
from workflows.reconcile import reconcile_schedules, settle_ledgers
from workflows.schedules import schedule_id


async def slots(client: Any, headers: dict[str, str], job_id: str, **params: Any) -> dict[str, Any]:
    r = await client.get(f"/api/v1/jobs/{job_id}/slots", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_pause_resume_keep_the_schedule_and_the_ledger_says_why(
    client, worker, module, operator_headers, admin_headers, temporal_env, sessions
):
    job = await create_job(client, operator_headers, catchup_window_seconds=10)
    handle = temporal_env.client.get_schedule_handle(schedule_id(job["id"]))

    async def ran() -> list[Any]:
        return [r for r in await job_runs(sessions, job["id"]) if r.status == "COMPLETED"]

    await eventually(ran, timeout=30, what="a scheduled run")
    r = await client.post(f"/api/v1/jobs/{job['id']}/pause", json={"note": "db maintenance"}, headers=operator_headers)
    assert r.status_code == 200, r.text
    paused = r.json()
    assert paused["schedule_paused"] is True and paused["enabled"] is True and paused["next_runs"] == []
    assert paused["pause"]["note"] == "db maintenance" and paused["pause"]["by"]
    desc = await handle.describe()
    assert desc.schedule.state.paused and "db maintenance" in (desc.schedule.state.note or "")
    assert paused["pause"]["by"] in (desc.schedule.state.note or "")
    # The reconciler keeps it paused (the registry says so), and a schedule resumed around the
    # platform is paused again.
    await handle.unpause(note="by hand")
    report = await reconcile_schedules(client=temporal_env.client, sessions=sessions, task_queue=worker.task_queue)
    assert schedule_id(job["id"]) in report.updated
    assert (await handle.describe()).schedule.state.paused
    paused_at = datetime.fromisoformat(paused["pause"]["at"])

    async def two_slots_paused() -> bool:
        return datetime.now(UTC) > paused_at + timedelta(seconds=2)

    await eventually(two_slots_paused, timeout=10, what="slots to pass while paused")
    r = await client.post(f"/api/v1/jobs/{job['id']}/resume", headers=operator_headers)
    assert r.status_code == 200 and r.json()["schedule_paused"] is False and r.json()["pause"] is None
    assert not (await handle.describe()).schedule.state.paused

    ledger = await slots(client, operator_headers, job["id"], **{"from": job["created_at"]})
    assert ledger["dst"] == {"nonexistent": "shift", "ambiguous": "first"} and ledger["settled_until"]
    by_outcome: dict[str, list[dict[str, Any]]] = {}
    for item in ledger["items"]:
        by_outcome.setdefault(item["outcome"], []).append(item)
    ran_ids = {run.id for run in await job_runs(sessions, job["id"])}
    assert by_outcome["ran"] and all(i["execution_id"] in ran_ids for i in by_outcome["ran"])
    skipped = [i for i in by_outcome["skipped"] if i["reason"] == "paused: db maintenance"]
    assert len(skipped) >= 2
    assert all(paused_at - timedelta(seconds=1) <= datetime.fromisoformat(i["at"]) for i in skipped)
    # Each nominal time once.
    ats = [i["at"] for i in ledger["items"]]
    assert len(ats) == len(set(ats)) and ats == sorted(ats)
    async with sessions() as session:
        actions = set(await session.scalars(select(AuditLog.action).where(AuditLog.target_id == job["id"])))
        events = list(
            await session.scalars(select(Event).where(Event.name == "schedule.skipped", Event.module_name == "slots"))
        )
    assert {"job.schedule_pause", "job.schedule_resume"} <= actions
    assert any(e.payload["reason"] == "paused: db maintenance" and e.payload["count"] >= 2 for e in events)
    # Disabling the module pauses the schedule (kept, with the reason); enabling it resumes it.
    r = await client.post("/api/v1/modules/slots/disable", headers=admin_headers)
    assert r.status_code == 200, r.text
    desc = await handle.describe()
    assert desc.schedule.state.paused and "module slots is DISABLED" in (desc.schedule.state.note or "")
    r = await client.post("/api/v1/modules/slots/enable", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert not (await handle.describe()).schedule.state.paused
    await client.post(f"/api/v1/jobs/{job['id']}/disable", headers=operator_headers)


async def test_missed_slots_pause_without_schedule_and_bad_ranges(
    client, temporal_settings, module, operator_headers, sessions
):
    # A job whose schedule never fired (no worker, no Temporal schedule) for ten minutes.
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "slots", "job_type": "tick", "name": "minutely", "schedule": "* * * * *", "enabled": False},
        headers=operator_headers,
    )
    assert r.status_code == 201, r.text
    job = r.json()
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    async with unit_of_work(sessions) as session:
        await session.execute(update(Job).where(Job.id == job["id"]).values(enabled=True, created_at=start))
    # The maintenance run settles it (GET /slots would too).
    from registry.metrics import SCHEDULE_SLOTS

    missed_before = SCHEDULE_SLOTS.labels("slots", "missed")._value.get()
    assert await settle_ledgers(sessions=sessions) >= 7
    ledger = await slots(client, operator_headers, job["id"], **{"from": start.isoformat()})
    outcomes = [i["outcome"] for i in ledger["items"]]
    # ... and counts them for Prometheus (autoplat_schedule_slots_total{outcome="missed"}).
    assert SCHEDULE_SLOTS.labels("slots", "missed")._value.get() - missed_before == outcomes.count("missed")
    # Slots past the catch-up window (60 s) and grace (60 s) are missed; the newest are pending.
    assert outcomes.count("missed") >= 7 and outcomes[-1] == "pending" and "ran" not in outcomes
    assert {i["reason"] for i in ledger["items"] if i["outcome"] == "missed"} == {
        "no run within the catch-up window (Temporal or the workers unavailable)"
    }
    # A second read answers the same stored outcomes (each slot recorded once), one event.
    again = await slots(client, operator_headers, job["id"], **{"from": start.isoformat()})
    assert [i for i in again["items"] if i["outcome"] == "missed"] == [
        i for i in ledger["items"] if i["outcome"] == "missed"
    ]
    async with sessions() as session:
        missed = list(await session.scalars(select(Event).where(Event.name == "schedule.missed")))
    assert len(missed) == 1 and missed[0].payload["count"] == outcomes.count("missed")
    assert missed[0].payload["job_id"] == job["id"]

    r = await client.get(
        f"/api/v1/jobs/{job['id']}/slots",
        params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        headers=operator_headers,
    )
    assert r.status_code == 422 and "to" in r.json()["error"]["message"]

    r = await client.post(
        "/api/v1/jobs",
        json={"module": "slots", "job_type": "tick", "name": "unscheduled", "schedule": None},
        headers=operator_headers,
    )
    unscheduled = r.json()
    r = await client.post(f"/api/v1/jobs/{unscheduled['id']}/pause", json={"note": "x"}, headers=operator_headers)
    assert r.status_code == 409 and "no schedule" in r.json()["error"]["message"]
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "slots", "job_type": "tick", "name": "bad-dst", "dst": {"ambiguous": "last"}},
        headers=operator_headers,
    )
    assert r.status_code == 422 and "dst" in r.text and "ambiguous" in r.text
