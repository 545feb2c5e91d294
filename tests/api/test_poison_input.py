"""Poison input: values that parse but can't be stored or served back are refused with 422 before
anything is stored; a stored row that can't be served never breaks a list; names, timezones, crons
and Last-Event-ID are checked; the platform's own event names and source can't be spoofed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import func, select, text

from registry.db import unit_of_work
from registry.models import Event, Job
from tests.conftest import REDIS_URL
from tests.jobs.helpers import put_module, write_module

EVENTS = "/api/v1/events"
JOBS = "/api/v1/jobs"


def deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


#: JSON texts of payloads / configs that are JSON to Python's parser but not storable or servable.
POISON = {
    "65 levels": deep(65),
    "NaN": '{"x": NaN}',
    "Infinity": '{"x": [1, -Infinity]}',
    "lone surrogate": '{"x": "\\ud800"}',
    "lone surrogate key": '{"\\udfff": 1}',
    "NUL": '{"x": "a\\u0000b"}',
}


async def _count(sessions: Any, model: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def _post_json(client: Any, url: str, body: str, headers: dict[str, str]) -> Any:
    return client.post(url, content=body.encode(), headers={**headers, "Content-Type": "application/json"})


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Path) -> Any:
    jobs = [{"name": "tick", "description": "ticks", "handler": "tick"}]
    folder = write_module(tmp_path, name="poison", code="def tick(ctx):\n    return 1\n", jobs=jobs)
    return await put_module(sessions, settings.state_dir, folder)


async def test_event_payloads_that_cannot_be_stored_are_refused(client, sessions, operator_headers):
    for label, payload in POISON.items():
        r = await _post_json(client, EVENTS, f'{{"name": "data.synced", "payload": {payload}}}', operator_headers)
        assert r.status_code == 422, (label, r.text)
        error = r.json()["error"]
        assert error["code"] == "validation_error" and error["details"][0]["loc"] == ["body", "payload"], label
    r = await _post_json(client, EVENTS, f'{{"name": "data.synced", "payload": {deep(63)}}}', operator_headers)
    assert r.status_code == 201, r.text
    assert await _count(sessions, Event) == 1


async def test_platform_event_names_and_source_are_reserved(client, sessions, operator_headers):
    for name in ["job.completed", "module.enabled", "alert.fired", "incident.opened", "schedule.fired", "job"]:
        r = await client.post(EVENTS, json={"name": name, "payload": {}}, headers=operator_headers)
        assert r.status_code == 422, (name, r.text)
        assert "reserved" in r.json()["error"]["message"], name
    for source in ["platform", "Platform", " platform "]:
        r = await client.post(EVENTS, json={"name": "data.synced", "source": source}, headers=operator_headers)
        assert r.status_code == 422, (source, r.text)
    # Close to, but not, reserved.
    for name in ["jobs.done", "modules.x", "my.job.completed"]:
        r = await client.post(EVENTS, json={"name": name, "payload": {}}, headers=operator_headers)
        assert r.status_code == 201, (name, r.text)
    assert await _count(sessions, Event) == 3


async def test_control_characters_in_names_are_refused(client, sessions, module, operator_headers):
    for name in ["data.synced\n", "data\x00synced", "data.\tsynced"]:
        r = await client.post(EVENTS, json={"name": name}, headers=operator_headers)
        assert r.status_code == 422, (repr(name), r.text)
    r = await client.post(EVENTS, json={"name": "data.synced", "source": "crm\x00"}, headers=operator_headers)
    assert r.status_code == 422
    for name in ["nightly\x00", "night\nly", "a\x1bb", "a\x7f"]:
        job = {"module": "poison", "job_type": "tick", "name": name, "schedule": None}
        r = await client.post(JOBS, json=job, headers=operator_headers)
        assert r.status_code == 422, (repr(name), r.text)
    job = {"module": "poison", "job_type": "tick", "name": "ok", "description": "x\x00", "schedule": None}
    assert (await client.post(JOBS, json=job, headers=operator_headers)).status_code == 422
    assert await _count(sessions, Event) == 0 and await _count(sessions, Job) == 0


async def test_job_config_that_cannot_be_stored_is_refused(
    client, sessions, module, operator_headers, temporal_settings
):
    for label, config in POISON.items():
        body = f'{{"module": "poison", "job_type": "tick", "name": "j", "schedule": null, "config": {config}}}'
        r = await _post_json(client, JOBS, body, operator_headers)
        assert r.status_code == 422, (label, r.text)
        assert r.json()["error"]["details"][0]["loc"] == ["body", "config"], label
    assert await _count(sessions, Job) == 0
    job = {"module": "poison", "job_type": "tick", "name": "j", "schedule": None}
    r = await client.post(JOBS, json=job, headers=operator_headers)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    for label, config in POISON.items():
        r = await client.request(
            "PATCH",
            f"{JOBS}/{job_id}",
            content=f'{{"config": {config}}}'.encode(),
            headers={**operator_headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 422, (label, r.text)
        r = await _post_json(client, f"{JOBS}/{job_id}/execute", f'{{"config": {config}}}', operator_headers)
        assert r.status_code == 422, (label, r.text)
    r = await client.get(f"{JOBS}/{job_id}", headers=operator_headers)
    assert r.json()["config"] == {} and r.json()["revision"] == 1


async def test_module_config_that_cannot_be_stored_is_refused(client, module, admin_headers):
    for label, config in POISON.items():
        r = await client.put(
            "/api/v1/modules/poison/config",
            content=f'{{"config": {config}}}'.encode(),
            headers={**admin_headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 422, (label, r.text)
    assert (await client.get("/api/v1/modules/poison/config", headers=admin_headers)).json()["config"] == {}


async def test_timezones_that_are_not_iana_zones_are_refused(client, sessions, module, operator_headers):
    for tz in ["", "localtime", "posixrules", "Factory", "posix/Europe/Paris", "right/UTC", "Mars/Olympus"]:
        job = {"module": "poison", "job_type": "tick", "name": "j", "schedule": "0 3 * * *", "timezone": tz}
        r = await client.post(JOBS, json=job, headers=operator_headers)
        assert r.status_code == 422, (tz, r.text)
    assert await _count(sessions, Job) == 0


async def test_crons_firing_more_often_than_the_minimum_are_refused(
    client, sessions, module, temporal_settings, operator_headers
):
    settings = temporal_settings
    for cron in ["* * * * * *", "*/30 * * * * *", "0,59 * * * * *"]:
        job = {"module": "poison", "job_type": "tick", "name": "j", "schedule": cron}
        r = await client.post(JOBS, json=job, headers=operator_headers)
        assert r.status_code == 422, (cron, r.text)
        assert r.json()["error"]["details"][0]["minimum"] == 60
    settings.min_schedule_interval_seconds = 3600
    job = {"module": "poison", "job_type": "tick", "name": "j", "schedule": "*/5 * * * *"}
    r = await client.post(JOBS, json=job, headers=operator_headers)
    assert r.status_code == 422 and "300 s" in r.json()["error"]["message"]
    assert await _count(sessions, Job) == 0
    # An unchanged cron is not checked again on an update (the minimum may have been raised since).
    r = await client.post(JOBS, json={**job, "schedule": None}, headers=operator_headers)
    assert r.status_code == 201
    r = await client.patch(f"{JOBS}/{r.json()['id']}", json={"schedule": "* * * * *"}, headers=operator_headers)
    assert r.status_code == 422


async def test_a_stored_row_that_cannot_be_served_never_breaks_the_list(client, sessions, operator_headers):
    ok = await client.post(EVENTS, json={"name": "data.ok", "payload": {"n": 1}}, headers=operator_headers)
    assert ok.status_code == 201
    # Written around the API (by hand, an older version, another tool): PostgreSQL takes them as JSON.
    async with unit_of_work(sessions) as session:
        for event_id, payload in [("poison-huge", '{"x": 1e400}'), ("poison-deep", "[" * 5000 + "]" * 5000)]:
            await session.execute(
                text(
                    "INSERT INTO events (id, name, payload, received_at, occurred_at, dispatch_status, "
                    "dispatch_attempts) VALUES (:id, 'data.poison', CAST(:payload AS jsonb), now(), now(), "
                    "'DISPATCHED', 0)"
                ),
                {"id": event_id, "payload": payload},
            )
    r = await client.get(EVENTS, headers=operator_headers)
    assert r.status_code == 200, r.text
    items = {e["id"]: e for e in r.json()["items"]}
    assert set(items) == {ok.json()["id"], "poison-huge", "poison-deep"}
    assert items[ok.json()["id"]]["payload"] == {"n": 1} and items[ok.json()["id"]]["payload_problem"] is None
    for event_id in ("poison-huge", "poison-deep"):
        assert items[event_id]["payload"] == {} and items[event_id]["payload_problem"], event_id
        r = await client.get(f"{EVENTS}/{event_id}", headers=operator_headers)
        assert r.status_code == 200 and r.json()["payload_problem"], r.text
    r = await client.get(f"{EVENTS}/recent", headers=operator_headers)
    assert r.status_code == 200 and len(r.json()) == 3


async def _stream_connections() -> int:
    """Connections to the test Redis that are subscribed to a channel (a live stream holds one)."""
    probe = aioredis.Redis.from_url(REDIS_URL)
    try:
        return sum(1 for c in await probe.client_list() if int(c.get("sub", 0)) or int(c.get("psub", 0)))
    finally:
        await probe.aclose()


async def test_a_bad_last_event_id_is_a_400_that_holds_no_redis_connection(client, viewer_headers):
    before = await _stream_connections()
    for value in ["abc", "-1", "1.5", "1e3", "9" * 19, "12 34", "0x10"]:
        r = await client.get(f"{EVENTS}/stream", headers={**viewer_headers, "Last-Event-ID": value})
        assert r.status_code == 400, (value, r.text)
        assert r.json()["error"]["code"] == "bad_request"
    assert await _stream_connections() == before


def test_the_poison_list_is_json_for_python() -> None:
    # The texts above parse for Python's json, so the refusals are the server's, not the client's.
    for body in POISON.values():
        json.loads(body)


async def test_an_execution_that_cannot_be_served_never_breaks_the_list(client, sessions, operator_headers):
    from registry.models import Execution

    async with unit_of_work(sessions) as session:
        session.add(Execution(module_name="m", job_type="j", workflow_id="wf-ok", trigger="manual", result={"ok": 1}))
        # A handler's result 300 levels deep: storable, but beyond what a JSON response can serialise.
        deep_result = json.loads("[" * 300 + "]" * 300)
        session.add(
            Execution(module_name="m", job_type="j", workflow_id="wf-deep", trigger="manual", result=deep_result)
        )
    r = await client.get("/api/v1/executions", params={"include": "result"}, headers=operator_headers)
    assert r.status_code == 200, r.text
    rows = {e["workflow_id"]: e for e in r.json()["items"]}
    assert rows["wf-ok"]["result"] == {"ok": 1} and rows["wf-ok"]["data_problem"] is None
    assert rows["wf-deep"]["result"] is None and rows["wf-deep"]["data_problem"].startswith("result: ")
    r = await client.get(f"/api/v1/executions/{rows['wf-deep']['id']}", headers=operator_headers)
    assert r.status_code == 200 and r.json()["data_problem"], r.text


async def test_a_job_whose_config_cannot_be_served_never_breaks_the_list(
    client, sessions, module, operator_headers, temporal_settings
):
    from sqlalchemy import update

    ids = []
    for name in ("fine", "poisoned"):
        job = {"module": "poison", "job_type": "tick", "name": name, "schedule": None, "config": {"n": 1}}
        r = await client.post(JOBS, json=job, headers=operator_headers)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    async with unit_of_work(sessions) as session:  # written around the API
        await session.execute(update(Job).where(Job.id == ids[1]).values(config=json.loads(deep(300))))
    r = await client.get(JOBS, headers=operator_headers)
    assert r.status_code == 200, r.text
    rows = {j["name"]: j for j in r.json()["items"]}
    assert rows["fine"]["config"] == {"n": 1} and rows["fine"]["data_problem"] is None
    assert rows["poisoned"]["config"] == {} and rows["poisoned"]["data_problem"].startswith("config: ")
