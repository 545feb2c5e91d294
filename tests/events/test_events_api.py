"""The events API contract: accept (idempotent, validated, size-capped), browse, stats, cleanup."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from registry.db import unit_of_work
from registry.models import Event
from registry.services.events import MAX_EVENT_PAYLOAD_BYTES
from tests.events.helpers import add_job, count_events, listening_module

URL = "/api/v1/events"


async def test_post_stores_the_event(client, operator_headers):
    r = await client.post(
        URL, json={"name": "data.synced", "payload": {"rows": 3}, "source": "crm"}, headers=operator_headers
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "data.synced"
    assert body["payload"] == {"rows": 3}
    assert body["source"] == "crm"
    assert body["dispatch_status"] == "PENDING"
    assert body["id"] and body["seq"] >= 1

    r = await client.get(f"{URL}/{body['id']}", headers=operator_headers)
    assert r.status_code == 200
    detail = r.json()
    # PENDING, or DISPATCHED ("no subscribers") if the API's background dispatcher got to it first.
    assert detail["dispatch_status"] in ("PENDING", "DISPATCHED")
    assert detail["executions"] == [] and detail["deliveries"] == []


async def test_repeated_id_answers_the_stored_event(client, sessions, operator_headers):
    event = {"id": "evt-fixed-1", "name": "data.synced", "payload": {"n": 1}}
    first = await client.post(URL, json=event, headers=operator_headers)
    assert first.status_code == 201
    again = await client.post(URL, json={**event, "payload": {"n": 2}}, headers=operator_headers)
    assert again.status_code == 200
    # The stored event, as it is now (the background dispatcher may have moved its status on).
    assert {**again.json(), "dispatch_status": None} == {**first.json(), "dispatch_status": None}
    assert await count_events(sessions) == 1


async def test_concurrent_duplicates_store_one_row(client, sessions, operator_headers):
    event = {"id": "evt-race", "name": "data.synced", "payload": {}}
    responses = await asyncio.gather(*(client.post(URL, json=event, headers=operator_headers) for _ in range(8)))
    assert sorted(r.status_code for r in responses).count(201) == 1
    assert {r.json()["seq"] for r in responses} == {responses[0].json()["seq"]}
    assert await count_events(sessions) == 1


async def test_invalid_input(client, operator_headers):
    for name in ["Data.Synced", "data..synced", "", ".data", "data synced", "data.*"]:
        r = await client.post(URL, json={"name": name, "payload": {}}, headers=operator_headers)
        assert r.status_code == 422, (name, r.text)
    r = await client.post(URL, json={"name": "data.synced", "payload": [1, 2]}, headers=operator_headers)
    assert r.status_code == 422
    r = await client.post(URL, json={"name": "data.synced", "payload": {}, "id": "x" * 37}, headers=operator_headers)
    assert r.status_code == 422


async def test_payload_size_limit(client, sessions, operator_headers):
    big = {"blob": "x" * MAX_EVENT_PAYLOAD_BYTES}
    r = await client.post(URL, json={"name": "data.synced", "payload": big}, headers=operator_headers)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    fits = {"blob": "x" * (MAX_EVENT_PAYLOAD_BYTES - 20)}
    r = await client.post(URL, json={"name": "data.synced", "payload": fits}, headers=operator_headers)
    assert r.status_code == 201
    assert await count_events(sessions) == 1


async def test_permissions(client, viewer_headers):
    r = await client.post(URL, json={"name": "data.synced", "payload": {}}, headers=viewer_headers)
    assert r.status_code == 403
    assert (await client.get(URL, headers=viewer_headers)).status_code == 200
    assert (await client.delete(f"{URL}?older_than_days=1", headers=viewer_headers)).status_code == 403
    assert (await client.get(URL)).status_code == 401
    assert (await client.get(f"{URL}/stream")).status_code == 401


async def test_list_filters_and_pagination(client, operator_headers):
    names = ["data.synced", "data.failed", "data.table.synced", "health.alert", "data.synced"]
    for i, name in enumerate(names):
        source = "crm" if i % 2 == 0 else "erp"
        r = await client.post(URL, json={"name": name, "payload": {"i": i}, "source": source}, headers=operator_headers)
        assert r.status_code == 201

    async def names_for(query: str) -> list[str]:
        r = await client.get(f"{URL}?{query}", headers=operator_headers)
        assert r.status_code == 200, r.text
        return [e["name"] for e in r.json()["items"]]

    assert await names_for("name=data.synced") == ["data.synced", "data.synced"]
    assert await names_for("pattern=data.*") == ["data.synced", "data.failed", "data.synced"]
    assert await names_for("pattern=data.**") == ["data.synced", "data.table.synced", "data.failed", "data.synced"]
    assert await names_for("pattern=*.*.synced") == ["data.table.synced"]
    assert await names_for("source=erp") == ["health.alert", "data.failed"]
    assert (await client.get(f"{URL}?pattern=data.***", headers=operator_headers)).status_code == 422

    r = await client.get(f"{URL}?limit=2&page=2", headers=operator_headers)
    body = r.json()
    assert (body["total"], body["page"], body["limit"]) == (5, 2, 2)
    assert [e["payload"]["i"] for e in body["items"]] == [2, 1]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = await client.get(URL, params={"since": future}, headers=operator_headers)
    assert r.json()["total"] == 0
    r = await client.get(URL, params={"until": future}, headers=operator_headers)
    assert r.json()["total"] == 5


async def test_recent(client, viewer_headers, operator_headers):
    for i in range(3):
        await client.post(URL, json={"name": "data.synced", "payload": {"i": i}}, headers=operator_headers)
    r = await client.get(f"{URL}/recent?limit=2", headers=viewer_headers)
    assert r.status_code == 200, r.text
    assert [e["payload"]["i"] for e in r.json()] == [2, 1]


async def test_unknown_event_is_404(client, operator_headers):
    r = await client.get(f"{URL}/nope", headers=operator_headers)
    assert r.status_code == 404


async def test_stats(client, sessions, operator_headers):
    for name, source in [("data.synced", "crm"), ("data.synced", "crm"), ("health.alert", "probe")]:
        await client.post(URL, json={"name": name, "payload": {}, "source": source}, headers=operator_headers)
    async with unit_of_work(sessions) as session:
        old = Event(name="old.one", payload={}, received_at=datetime.now(UTC) - timedelta(days=3))
        session.add(old)
    r = await client.get(f"{URL}/stats", headers=operator_headers)
    assert r.status_code == 200, r.text
    stats = r.json()
    assert (stats["total"], stats["last_24h"], stats["last_7d"]) == (4, 3, 4)
    assert stats["top_names"][0] == {"value": "data.synced", "count": 2}
    assert stats["top_sources"] == [{"value": "crm", "count": 2}, {"value": "probe", "count": 1}]
    assert len(stats["per_hour"]) == 24
    assert stats["per_hour"][-1]["count"] == 3


async def test_delete_older_than(client, sessions, operator_headers):
    ids = []
    for i in range(3):
        r = await client.post(URL, json={"name": "data.synced", "payload": {"i": i}}, headers=operator_headers)
        ids.append(r.json()["id"])
    async with unit_of_work(sessions) as session:
        old = datetime.now(UTC) - timedelta(days=10)
        await session.execute(
            update(Event).where(Event.id.in_(ids[:2])).values(received_at=old, dispatch_status="DISPATCHED")
        )
        # Old but never dispatched: kept, so no accepted event is lost.
        await session.execute(
            update(Event)
            .where(Event.id == ids[2])
            .values(received_at=old, dispatch_status="PENDING", next_attempt_at=datetime.now(UTC) + timedelta(hours=1))
        )
    r = await client.delete(f"{URL}?older_than_days=7", headers=operator_headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"deleted": 2}
    assert await count_events(sessions) == 1
    assert (await client.delete(URL, headers=operator_headers)).status_code == 422


async def test_subscriptions(client, sessions, settings, tmp_path, operator_headers):
    module = await listening_module(sessions, settings.state_dir, tmp_path)
    refresh = await add_job(sessions, module, "refresh")
    await add_job(sessions, module, "refresh", name="off", enabled=False)
    audit = await add_job(sessions, module, "audit", event_triggers=["health.*"])
    r = await client.get(f"{URL}/subscriptions", headers=operator_headers)
    assert r.status_code == 200, r.text
    subs: list[dict[str, Any]] = r.json()
    by_pattern = {(s["kind"], s["pattern"]): s for s in subs}
    listener = by_pattern[("listener", "data.*")]
    assert listener["job_type"] == "refresh"
    assert listener["filter"] == {"kind": "full"} and listener["mapping"] == {"table": "data.table"}
    assert listener["jobs"] == [{"id": refresh.id, "name": refresh.name}]
    assert by_pattern[("listener", "job.**")]["jobs"] == [{"id": audit.id, "name": audit.name}]
    assert by_pattern[("job", "health.*")]["jobs"] == [{"id": audit.id, "name": audit.name}]


async def test_subscriptions_only_from_enabled_modules(client, sessions, settings, tmp_path, operator_headers):
    module = await listening_module(sessions, settings.state_dir, tmp_path, status="DISABLED")
    await add_job(sessions, module, "refresh", event_triggers=["x.y"])
    r = await client.get(f"{URL}/subscriptions", headers=operator_headers)
    assert r.json() == []
