"""The live stream over a real HTTP server (ASGITransport buffers whole responses)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx


class Stream:
    """Reads server-sent events off an open streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        async for line in self.lines:
            if not line:
                if "data" in fields:
                    return fields
                continue
            if line.startswith(":"):
                continue  # keep-alive comment
            key, _, value = line.partition(":")
            fields[key] = value[1:] if value.startswith(" ") else value
        raise AssertionError("stream ended")

    async def take(self, n: int) -> list[dict[str, str]]:
        return [await asyncio.wait_for(self.next(), timeout=10) for _ in range(n)]


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
            got = await stream.take(2)
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
            replayed = await stream.take(2)
            assert [json.loads(m["data"])["id"] for m in replayed] == [e["id"] for e in missed]
            live = await post(http, operator_headers, "data.synced", n=5)
            (after,) = await stream.take(1)
            assert json.loads(after["data"])["id"] == live["id"]


async def test_stream_requires_auth(server, viewer_headers):
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        r = await http.get("/api/v1/events/stream")
        assert r.status_code == 401
        async with http.stream("GET", "/api/v1/events/stream?pattern=bad..", headers=viewer_headers) as r:
            assert r.status_code == 422
