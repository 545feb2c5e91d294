"""Services inside real steps on a worker: ctx.http, ctx.storage and ctx.state through the platform."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.helpers import put_module, write_module

WRITER = """
def sync(ctx):
    data = ctx.http.get_json_sync(ctx.config["url"] + "?since=" + str(ctx.state.value_sync().get("cursor", 0)))
    ctx.storage.put_many_sync({f"rec:{r['id']}": r for r in data["items"]})
    new = ctx.state.update_sync(lambda s: {**s, "cursor": max([s.get("cursor", 0)] + [r["id"] for r in data["items"]])})
    return {"cursor": new["cursor"], "stored": len(ctx.storage.query_sync("rec:", limit=1000))}

async def peek(ctx):
    return {"secret": await ctx.storage.get("rec:1"), "all": [d.key for d in await ctx.storage.query()]}

def forbidden(ctx):
    return ctx.http.get_sync("http://169.254.169.254/latest/meta-data/").status_code
"""
READER = """
async def peek(ctx):
    await ctx.storage.put("mine", 1)
    return {"secret": await ctx.storage.get("rec:1"), "all": [d.key for d in await ctx.storage.query()]}
"""
URL = {"type": "object", "properties": {"url": {"type": "string"}}}


class Source(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        since = int(self.path.split("since=")[1])
        items = [{"id": i, "name": f"r{i}"} for i in range(since + 1, since + 4)]
        body = json.dumps({"items": items}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def source() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Source)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/records"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def modules(sessions: Any, settings: Any, tmp_path: Path) -> None:
    hosts = {"permissions": {"hosts": ["127.0.0.1"], "services": ["http", "storage"]}}
    jobs = [
        {"name": "sync", "description": "sync", "handler": "sync", "config": URL},
        {"name": "peek", "description": "peek", "handler": "peek"},
        {"name": "forbidden", "description": "metadata", "handler": "forbidden"},
    ]
    await put_module(
        sessions, settings.state_dir, write_module(tmp_path, name="writer", code=WRITER, jobs=jobs, extra=hosts)
    )
    reader_jobs = [{"name": "peek", "description": "peek", "handler": "peek"}]
    reader = write_module(
        tmp_path, name="reader", code=READER, jobs=reader_jobs, extra={"permissions": {"services": ["storage"]}}
    )
    await put_module(sessions, settings.state_dir, reader)


async def _run(client: Any, headers: dict[str, str], module: str, job_type: str, **config: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/jobs",
        json={
            "module": module,
            "job_type": job_type,
            "name": f"{module}-{job_type}",
            "schedule": None,
            "config": config,
        },
        headers=headers,
    )
    job = r.json() if r.status_code == 201 else None
    if job is None:  # the same job again
        listed = (await client.get(f"/api/v1/jobs?module={module}", headers=headers)).json()["items"]
        job = next(j for j in listed if j["job_type"] == job_type)
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=headers)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


async def test_sync_keeps_a_cursor_and_records_and_other_modules_see_nothing(
    worker, client, modules, source, operator_headers
):
    first = await _run(client, operator_headers, "writer", "sync", url=source)
    assert first["status"] == "COMPLETED", first
    assert first["result"] == {"cursor": 3, "stored": 3}
    second = await _run(client, operator_headers, "writer", "sync", url=source)
    assert second["result"] == {"cursor": 6, "stored": 6}  # resumed from the stored cursor

    detail = (await client.get(f"/api/v1/executions/{second['id']}", headers=operator_headers)).json()
    (line,) = [e for e in detail["logs"] if e["message"].startswith("HTTP GET")]
    assert line["message"] == f"HTTP GET {source}?since=3 -> 200 ({line['extra']['http']['duration_ms']} ms)"

    own = await _run(client, operator_headers, "writer", "peek")
    assert own["result"]["secret"] == {"id": 1, "name": "r1"} and len(own["result"]["all"]) == 6
    other = await _run(client, operator_headers, "reader", "peek")
    assert other["result"] == {"secret": None, "all": ["mine"]}


async def test_a_host_outside_the_allowlist_fails_the_step_without_retry(worker, client, modules, operator_headers):
    run = await _run(client, operator_headers, "writer", "forbidden")
    assert run["status"] == "FAILED"
    assert run["error"]["type"] == "JobError"
    assert "host 169.254.169.254 is not allowed" in run["error"]["message"]
    assert run["attempt"] == 1
