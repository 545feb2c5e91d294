"""The live stream over a real HTTP server (ASGITransport buffers whole responses)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.sse import Stream


async def post(http: httpx.AsyncClient, headers: dict[str, str], name: str, **payload: Any) -> dict[str, Any]:
    r = await http.post("/api/v1/events", json={"name": name, "payload": payload}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def test_stream_delivers_in_order_and_replays_on_reconnect(server, operator_headers):
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        async with http.stream("GET", "/api/v1/events/stream?pattern=data.**", headers=operator_headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            stream = Stream(r)
            first = await post(http, operator_headers, "data.synced", n=1)
            await post(http, operator_headers, "health.alert", n=0)  # filtered out by the pattern
            second = await post(http, operator_headers, "data.table.synced", n=2)
            got = await stream.take_many(2)
        assert [m["event"] for m in got] == ["data.synced", "data.table.synced"]
        assert [m["id"] for m in got] == [str(first["seq"]), str(second["seq"])]
        data = json.loads(got[0]["data"])
        assert data["id"] == first["id"] and data["payload"] == {"n": 1}

        # Disconnected: these are missed live, then replayed from the database.
        missed = [await post(http, operator_headers, "data.synced", n=i) for i in (3, 4)]
        headers = {**operator_headers, "Last-Event-ID": got[-1]["id"]}
        async with http.stream("GET", "/api/v1/events/stream?pattern=data.*", headers=headers) as r:
            assert r.status_code == 200
            stream = Stream(r)
            replayed = await stream.take_many(2)
            assert [json.loads(m["data"])["id"] for m in replayed] == [e["id"] for e in missed]
            live = await post(http, operator_headers, "data.synced", n=5)
            after = await stream.take()
            assert json.loads(after["data"])["id"] == live["id"]


async def test_stream_requires_auth(server, viewer_headers):
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        r = await http.get("/api/v1/events/stream")
        assert r.status_code == 401
        async with http.stream("GET", "/api/v1/events/stream?pattern=bad..", headers=viewer_headers) as r:
            assert r.status_code == 422
