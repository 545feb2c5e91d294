"""Live execution logs over SSE, on a real uvicorn server (ASGITransport buffers whole responses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoplat.context import TRUNCATION_MARKER, LogBuffer
from registry.services.logstream import LogMerge
from tests.conftest import eventually, free_port
from tests.jobs.helpers import put_module, write_module
from tests.sse import Stream

CODE = """
import asyncio, time
from pathlib import Path

def talk_sync(ctx):
    ctx.logger.info("first line")
    gate = Path(ctx.config["gate"])
    while not gate.exists():
        time.sleep(0.02)
        ctx.check_cancelled()
    ctx.logger.info("second line", extra={"n": 2})
    return {"ok": True}

async def talk_async(ctx):
    ctx.logger.info("first line")
    gate = Path(ctx.config["gate"])
    while not gate.exists():
        await asyncio.sleep(0.02)
    ctx.logger.info("second line", extra={"n": 2})
    return {"ok": True}

def fail(ctx):
    ctx.logger.info("before the failure")
    raise RuntimeError("boom")
"""
CONFIG = {"type": "object", "properties": {"gate": {"type": "string"}}}
JOBS = [
    {"name": "talk-sync", "description": "sync", "handler": "talk_sync", "config": CONFIG},
    {"name": "talk-async", "description": "async", "handler": "talk_async", "config": CONFIG},
    {"name": "fail", "description": "fails", "handler": "fail"},
]


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Path) -> Any:
    return await put_module(sessions, settings.state_dir, write_module(tmp_path, name="talker", code=CODE, jobs=JOBS))


async def _start(http: httpx.AsyncClient, headers: dict[str, str], job_type: str, config: dict[str, Any]) -> str:
    r = await http.post(
        "/api/v1/jobs",
        json={"module": "talker", "job_type": job_type, "name": job_type, "schedule": None, "config": config},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    r = await http.post(f"/api/v1/jobs/{r.json()['id']}/execute", headers=headers)
    assert r.status_code in (200, 201, 202), r.text
    return str(r.json()["id"])


def _messages(events: list[dict[str, str]]) -> list[str]:
    return [json.loads(e["data"])["message"] for e in events if e["event"] == "log"]


@pytest.mark.parametrize("job_type", ["talk-sync", "talk-async"])
async def test_stream_delivers_lines_while_the_step_runs(
    worker, server, module, operator_headers, viewer_headers, tmp_path, job_type
):
    gate = tmp_path / f"gate-{job_type}"
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        execution_id = await _start(http, operator_headers, job_type, {"gate": str(gate)})
        url = f"/api/v1/executions/{execution_id}/logs/stream"
        async with http.stream("GET", url, headers=viewer_headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            stream = Stream(r)
            first = await stream.take()
            assert first["event"] == "log" and json.loads(first["data"])["message"] == "first line"
            # Live: the step is still running (blocked on the gate) and nothing is stored yet.
            row = (await http.get(f"/api/v1/executions/{execution_id}", headers=viewer_headers)).json()
            assert row["status"] == "RUNNING" and row["logs"] == []
            gate.write_text("open")
            second = await stream.take()
            assert json.loads(second["data"])["message"] == "second line"
            assert json.loads(second["data"])["extra"] == {"n": 2}
            rest = await stream.rest()
        # Each line once (live, and not again when the stored log is read at the end), then "end".
        assert _messages(rest) == []
        assert [e["event"] for e in rest] == ["end"] and json.loads(rest[-1]["data"]) == {"status": "COMPLETED"}

        # Reconnecting after the end replays what is stored, then ends at once.
        async with http.stream("GET", url, headers=viewer_headers) as r:
            events = await Stream(r).rest()
        assert _messages(events) == ["first line", "second line"]
        assert [e["event"] for e in events][-1] == "end"
        assert [e["id"] for e in events if e["event"] == "log"] == ["1", "2"]


async def test_stream_of_a_failed_run_ends_with_its_lines(worker, server, module, operator_headers):
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        execution_id = await _start(http, operator_headers, "fail", {})
        async with http.stream("GET", f"/api/v1/executions/{execution_id}/logs/stream", headers=operator_headers) as r:
            events = await Stream(r).rest()
    messages = _messages(events)
    assert messages[0] == "before the failure" and any("RuntimeError: boom" in m for m in messages)
    assert len(messages) == len(set(messages))  # nothing delivered twice
    assert json.loads(events[-1]["data"]) == {"status": "FAILED"}


async def test_stream_requires_auth_and_an_existing_execution(server, viewer_headers):
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        r = await http.get("/api/v1/executions/00000000-0000-0000-0000-000000000000/logs/stream")
        assert r.status_code == 401
        r = await http.get(
            "/api/v1/executions/00000000-0000-0000-0000-000000000000/logs/stream", headers=viewer_headers
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_merge_delivers_each_entry_once_whatever_arrives_first():
    a, b, b2 = {"message": "a"}, {"message": "b"}, {"message": "b"}
    merge = LogMerge()
    assert list(merge.live(a)) == [a]
    assert list(merge.stored([a, b])) == [b]  # a was already delivered live
    assert list(merge.live(b2)) == []  # b was delivered from the store
    assert list(merge.live(b2)) == [b2]  # a genuine repeat of the same line is kept
    assert list(merge.stored([a, b, b2, {"message": "c"}])) == [{"message": "c"}]


def test_log_buffer_is_bounded_with_a_marker_and_feeds_the_sink():
    seen: list[dict[str, Any]] = []
    buffer = LogBuffer(limit=1024, sink=seen.append)
    for i in range(100):
        buffer.add({"ts": "t", "level": "INFO", "message": f"line {i:03d} " + "x" * 40})
    assert buffer.truncated and buffer.size <= 1024 + 200
    assert buffer.entries[-1]["message"] == TRUNCATION_MARKER
    assert seen == buffer.entries  # the live stream sees exactly what is kept


async def test_publisher_never_fails_the_step_when_redis_is_down(settings):
    from types import SimpleNamespace

    from activities.services.logs import LogStream

    settings.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    stream = LogStream(SimpleNamespace(settings=settings))
    sink = stream.log_sink("exec-1")
    buffer = LogBuffer(sink=sink)
    for i in range(3):
        buffer.add({"ts": "t", "level": "INFO", "message": f"line {i}"})

    async def dropped() -> bool:
        return stream.dropped == 3

    await eventually(dropped, what="live copies dropped")
    assert [e["message"] for e in buffer.entries] == ["line 0", "line 1", "line 2"]  # the stored log is intact
    await stream.close()


async def test_publisher_sends_entries_in_order(settings):
    from types import SimpleNamespace

    from redis.asyncio import Redis

    from activities.services.logs import LogStream
    from registry.services.logstream import log_channel

    redis = Redis.from_url(settings.redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(log_channel(settings.redis_prefix, "exec-2"))
    stream = LogStream(SimpleNamespace(settings=settings))
    sink = stream.log_sink("exec-2")
    for i in range(50):
        sink({"message": f"line {i}"})
    got: list[str] = []

    async def all_received() -> bool:
        while (raw := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)) is not None:
            got.append(json.loads(raw["data"])["message"])
        return len(got) >= 50

    await eventually(all_received, what="50 live entries")
    assert got == [f"line {i}" for i in range(50)]
    await stream.close()
    await pubsub.aclose()
    await redis.aclose()


async def test_without_redis_the_stream_serves_the_stored_log(
    worker, server, module, app_state, operator_headers, tmp_path, monkeypatch
):
    """Redis down: a finished run's stream is its stored log and ``end`` (not a 503); a running
    run's says live lines are unavailable, then delivers each step's lines once stored, and ends."""
    from redis.asyncio import Redis

    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        failed = await _start(http, operator_headers, "fail", {})
        gate = tmp_path / "gate-redisless"
        running = await _start(http, operator_headers, "talk-async", {"gate": str(gate)})

        async def ended(execution_id: str) -> bool:
            row = await http.get(f"/api/v1/executions/{execution_id}", headers=operator_headers)
            return row.json()["status"] == "FAILED"

        await eventually(lambda: ended(failed), timeout=30, what="the failing run to end")
        monkeypatch.setattr(app_state, "redis", dead)
        try:
            async with http.stream("GET", f"/api/v1/executions/{failed}/logs/stream", headers=operator_headers) as r:
                assert r.status_code == 200
                events = await Stream(r).rest()
            assert _messages(events)[0] == "before the failure"
            assert [e["event"] for e in events][-1] == "end" and json.loads(events[-1]["data"]) == {"status": "FAILED"}

            async with http.stream("GET", f"/api/v1/executions/{running}/logs/stream", headers=operator_headers) as r:
                assert r.status_code == 200
                stream = Stream(r)
                notice = await stream.take()
                assert notice["event"] == "notice" and "unavailable" in json.loads(notice["data"])["message"]
                gate.write_text("open")
                rest = await stream.rest()
            assert _messages(rest) == ["first line", "second line"]
            assert json.loads(rest[-1]["data"]) == {"status": "COMPLETED"}
        finally:
            await dead.aclose()
