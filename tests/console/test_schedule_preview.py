"""GET /api/v1/schedule-preview: the next fire times of a cron expression, before a job is saved."""

from __future__ import annotations

from datetime import datetime
from typing import Any


async def test_preview_lists_the_next_runs_in_the_timezone(client: Any, viewer_headers: dict[str, str]) -> None:
    r = await client.get(
        "/api/v1/schedule-preview",
        params={"cron": "0 9 * * 1-5", "timezone": "Europe/Paris", "count": 3},
        headers=viewer_headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cron"] == "0 9 * * 1-5" and body["timezone"] == "Europe/Paris"
    runs = [datetime.fromisoformat(t) for t in body["next_runs"]]
    assert len(runs) == 3 and runs == sorted(runs)
    assert all(t.hour == 9 and t.minute == 0 and t.weekday() < 5 for t in runs)
    assert all(t.utcoffset() is not None and t.utcoffset().total_seconds() in (3600, 7200) for t in runs)


async def test_bad_cron_and_timezone_are_refused_with_their_message(client: Any, viewer_headers: dict[str, str]):
    bad_cron = await client.get("/api/v1/schedule-preview", params={"cron": "0 0 30 2 *"}, headers=viewer_headers)
    assert bad_cron.status_code == 422
    assert bad_cron.json()["error"]["message"] == "expression never fires"
    assert bad_cron.json()["error"]["details"][0]["loc"] == ["query", "cron"]
    bad_zone = await client.get(
        "/api/v1/schedule-preview", params={"cron": "* * * * *", "timezone": "Mars/Olympus"}, headers=viewer_headers
    )
    assert bad_zone.status_code == 422 and "Mars/Olympus" in bad_zone.json()["error"]["message"]
    too_many = await client.get(
        "/api/v1/schedule-preview", params={"cron": "* * * * *", "count": 21}, headers=viewer_headers
    )
    assert too_many.status_code == 422


async def test_preview_needs_a_session(client: Any) -> None:
    r = await client.get("/api/v1/schedule-preview", params={"cron": "* * * * *"})
    assert r.status_code == 401


async def test_upcoming_runs_soonest_first_enabled_jobs_of_enabled_modules_only(
    client: Any, viewer_headers: dict[str, str], sessions: Any, settings: Any, tmp_path: Any
) -> None:
    from registry.db import unit_of_work
    from registry.models import Job
    from tests.console.conftest import CODE, JOBS
    from tests.jobs.helpers import put_module, write_module

    on = await put_module(sessions, settings.state_dir, write_module(tmp_path, name="on", code=CODE, jobs=JOBS))
    off = await put_module(
        sessions, settings.state_dir, write_module(tmp_path, name="off", code=CODE, jobs=JOBS), status="DISABLED"
    )
    rows = [
        (on, "yearly", "0 0 1 1 *", True),
        (on, "every minute", "* * * * *", True),
        (on, "disabled job", "* * * * *", False),
        (on, "no schedule", None, True),
        (off, "module disabled", "* * * * *", True),
    ]
    async with unit_of_work(sessions) as s:
        for module, name, cron, enabled in rows:
            s.add(
                Job(
                    module_id=module.id,
                    module_name=module.name,
                    job_type="greet",
                    name=name,
                    schedule=cron,
                    timezone="UTC",
                    enabled=enabled,
                )
            )
    r = await client.get("/api/v1/upcoming-runs", headers=viewer_headers)
    assert r.status_code == 200, r.text
    assert [run["job_name"] for run in r.json()] == ["every minute", "yearly"]
    first = datetime.fromisoformat(r.json()[0]["at"])
    assert first.second == 0 and first > datetime.now(first.tzinfo)
    only = await client.get("/api/v1/upcoming-runs", params={"limit": 1, "module": "on"}, headers=viewer_headers)
    assert [run["job_name"] for run in only.json()] == ["every minute"]
    assert (await client.get("/api/v1/upcoming-runs")).status_code == 401


async def test_preview_applies_the_daylight_saving_policy(client: Any, viewer_headers: dict[str, str]) -> None:
    """03:30 does not exist in Bucharest on 2027-03-28 (03:00 -> 04:00): shift runs it at 04:00,
    skip leaves the day out; 03:30 happens twice on 2027-10-31: first once, both twice."""

    async def runs(cron: str, after: str, **dst: str) -> list[datetime]:
        params = {"cron": cron, "timezone": "Europe/Bucharest", "count": 3, "after": after, **dst}
        r = await client.get("/api/v1/schedule-preview", params=params, headers=viewer_headers)
        assert r.status_code == 200, r.text
        return [datetime.fromisoformat(t) for t in r.json()["next_runs"]]

    spring = "2027-03-27T12:00:00"
    shifted = await runs("30 3 * * *", spring)
    assert [(t.day, t.hour, t.minute) for t in shifted] == [(28, 4, 0), (29, 3, 30), (30, 3, 30)]
    skipped = await runs("30 3 * * *", spring, dst_nonexistent="skip")
    assert [(t.day, t.hour, t.minute) for t in skipped] == [(29, 3, 30), (30, 3, 30), (31, 3, 30)]
    autumn = "2027-10-30T12:00:00"
    first = await runs("30 3 * * *", autumn)
    both = await runs("30 3 * * *", autumn, dst_ambiguous="both")
    assert [t.day for t in first] == [31, 1, 2] and [t.day for t in both] == [31, 31, 1]
    assert both[0].utcoffset() != both[1].utcoffset()
    bad = await client.get(
        "/api/v1/schedule-preview", params={"cron": "* * * * *", "dst_ambiguous": "twice"}, headers=viewer_headers
    )
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == ["query", "dst_ambiguous"]
