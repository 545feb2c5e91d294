"""Backfill: dry run, the real run with provenance and one run per slot, bad ranges, cancel."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from registry.models import AuditLog
from tests.conftest import eventually
from tests.schedules.helpers import create_job, job_runs


async def post_backfill(client: Any, headers: dict[str, str], job_id: str, **body: Any) -> Any:
    for key in ("from", "to"):
        if isinstance(body.get(key), datetime):
            body[key] = body[key].isoformat()
    return await client.post(f"/api/v1/jobs/{job_id}/backfill", json=body, headers=headers)


async def test_backfill_runs_the_slots_without_a_run_once_each(
    client, worker, module, operator_headers, settings, sessions
):
    settings.backfill_interval_seconds = 0.1
    settings.backfill_batch = 5
    job = await create_job(client, operator_headers)

    async def ran_twice() -> bool:
        return len([r for r in await job_runs(sessions, job["id"]) if r.status == "COMPLETED"]) >= 2

    await eventually(ran_twice, timeout=30, what="two scheduled runs")
    r = await client.post(
        f"/api/v1/jobs/{job['id']}/pause", json={"note": "for the backfill"}, headers=operator_headers
    )
    assert r.status_code == 200
    scheduled = {r.nominal_at for r in await job_runs(sessions, job["id"])}
    first = min(n for n in scheduled if n is not None)
    start, end = first - timedelta(seconds=12), first + timedelta(seconds=1)
    assert end < datetime.now(UTC)

    dry = await post_backfill(client, operator_headers, job["id"], **{"from": start, "to": end, "dry_run": True})
    assert dry.status_code == 200, dry.text
    plan = dry.json()
    in_range = {n for n in scheduled if n is not None and start <= n < end}
    assert plan["dry_run"] is True and plan["already_run"] == len(in_range) >= 1
    assert plan["count"] == 13 - len(in_range) == len(plan["slots"])
    assert not {datetime.fromisoformat(s["at"]) for s in plan["slots"]} & in_range

    r = await post_backfill(client, operator_headers, job["id"], **{"from": start, "to": end, "overlap": "allow_all"})
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["status"] == "running" and started["count"] == plan["count"] and started["id"]

    async def completed() -> dict[str, Any] | None:
        got = await client.get(f"/api/v1/jobs/{job['id']}/backfills/{started['id']}", headers=operator_headers)
        body: dict[str, Any] = got.json()
        return body if body["status"] == "completed" else None

    done = await eventually(completed, timeout=40, what="the backfill to complete")
    assert done["started"] == plan["count"] and done["finished_at"]

    async def all_finished() -> list[Any]:
        runs = [r for r in await job_runs(sessions, job["id"]) if r.trigger == "backfill"]
        return runs if len(runs) == plan["count"] and all(r.status == "COMPLETED" for r in runs) else []

    backfilled = await eventually(all_finished, timeout=40, what="the backfilled runs")
    assert {r.nominal_at for r in backfilled} == {datetime.fromisoformat(s["at"]) for s in plan["slots"]}
    assert all(r.workflow_id == f"sched-{job['id']}-{r.nominal_at:%Y-%m-%dT%H:%M:%SZ}" for r in backfilled)
    per_slot = Counter(r.nominal_at for r in await job_runs(sessions, job["id"]) if r.nominal_at is not None)
    assert max(per_slot.values()) == 1
    # The API says which slot each run was for.
    params = {"job_id": job["id"], "trigger": "backfill", "limit": 200}
    listed = await client.get("/api/v1/executions", params=params, headers=operator_headers)
    assert {datetime.fromisoformat(i["nominal_at"]) for i in listed.json()["items"]} == {
        r.nominal_at for r in backfilled
    }
    # The ledger shows every slot of the range ran, the backfilled ones as such.
    ledger = (
        await client.get(
            f"/api/v1/jobs/{job['id']}/slots",
            params={"from": start.isoformat(), "to": end.isoformat()},
            headers=operator_headers,
        )
    ).json()["items"]
    assert len(ledger) == 13 and {i["outcome"] for i in ledger} == {"ran"}
    assert Counter(i["trigger"] for i in ledger) == {"backfill": plan["count"], "schedule": len(in_range)}
    # Nothing is left to run in that range.
    again = await post_backfill(client, operator_headers, job["id"], **{"from": start, "to": end, "dry_run": True})
    assert again.json()["count"] == 0 and again.json()["already_run"] == 13
    executions = await client.get(
        "/api/v1/executions", params={"job_id": job["id"], "trigger": "backfill"}, headers=operator_headers
    )
    assert executions.status_code == 200 and len(executions.json()["items"]) == plan["count"]

    # Bad input: reversed, in the future, too many slots (with the count).
    now = datetime.now(UTC)
    r = await post_backfill(client, operator_headers, job["id"], **{"from": end, "to": start})
    assert r.status_code == 422 and "after" in r.json()["error"]["message"]
    r = await post_backfill(client, operator_headers, job["id"], **{"from": now, "to": now + timedelta(hours=1)})
    assert r.status_code == 422 and "future" in r.json()["error"]["message"]
    settings.backfill_max_slots = 100
    r = await post_backfill(
        client, operator_headers, job["id"], **{"from": now - timedelta(minutes=10), "to": now, "dry_run": True}
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["details"][0]["count"] in (599, 600, 601) and "100" in error["message"]

    # Cancel as a whole: a slow one-at-a-time backfill stops starting slots.
    settings.backfill_interval_seconds = 1
    r = await post_backfill(
        client, operator_headers, job["id"],
        **{"from": now - timedelta(minutes=1), "to": now - timedelta(seconds=20), "overlap": "skip"},
    )  # fmt: skip
    assert r.status_code == 202, r.text
    slow = r.json()
    r = await client.post(f"/api/v1/jobs/{job['id']}/backfills/{slow['id']}/cancel", headers=operator_headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    cancelled_at = r.json()["started"]
    assert cancelled_at < slow["count"]
    r = await client.get(f"/api/v1/jobs/{job['id']}/backfills/{slow['id']}", headers=operator_headers)
    assert r.json()["status"] == "cancelled" and r.json()["started"] <= cancelled_at + 1
    async with sessions() as session:
        actions = Counter(await session.scalars(select(AuditLog.action).where(AuditLog.target_id == job["id"])))
    assert actions["job.backfill"] == 2 and actions["job.backfill_cancel"] == 1
    # A disabled job's runs would all be skipped: refused (a dry run still answers).
    await client.post(f"/api/v1/jobs/{job['id']}/disable", headers=operator_headers)
    window = {"from": now - timedelta(minutes=1), "to": now - timedelta(seconds=50)}
    r = await post_backfill(client, operator_headers, job["id"], **window)
    assert r.status_code == 409 and "disabled" in r.json()["error"]["message"]
    r = await post_backfill(client, operator_headers, job["id"], **window, dry_run=True)
    assert r.status_code == 200 and r.json()["count"] >= 9
