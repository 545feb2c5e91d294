"""The example module, run with the SDK harness against a real local HTTP source."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from autoplat.testing import TemporalHarness, arun_job

MODULE = Path(__file__).resolve().parents[2] / "example_modules" / "data_sync"
RECORDS = [{"id": i} for i in range(25)]


class Source(BaseHTTPRequestHandler):
    status = "ok"

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/records":
            offset, limit = int(query["offset"][0]), int(query["limit"][0])
            body: Any = {"items": RECORDS[offset : offset + limit]}
        elif url.path == "/status":
            body = {"status": Source.status}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def source() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Source)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Source.status = "ok"
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_hourly_sync_pulls_every_page_and_emits_data_synced(source):
    result = await arun_job(MODULE, "hourly-sync", config={"source_url": f"{source}/records", "batch_size": 10})
    assert result.status == "COMPLETED", result.steps[-1].error
    assert result.result["records"] == 25 and result.result["pages"] == 3
    assert [e["name"] for e in result.events] == ["data.synced"]
    assert result.events[0]["payload"]["records"] == 25


async def test_health_check_alerts_only_when_unhealthy(source):
    healthy = await arun_job(MODULE, "health-check", config={"status_url": f"{source}/status"})
    assert healthy.result["healthy"] is True and healthy.events == []
    Source.status = "degraded"
    unhealthy = await arun_job(MODULE, "health-check", config={"status_url": f"{source}/status"})
    assert unhealthy.result["healthy"] is False
    assert [e["name"] for e in unhealthy.events] == ["health.alert"]


async def test_report_and_notify_use_the_triggering_event():
    report = await arun_job(MODULE, "daily-report", event={"name": "data.synced", "payload": {"records": 7}})
    assert report.result["records"] == 7 and report.result["recipients"] == ["ops@example.com"]
    alert = await arun_job(MODULE, "notify", event={"name": "health.alert", "payload": {"status": "unhealthy"}})
    assert alert.result == {"to": "ops@example.com", "subject": "data-sync alert: unhealthy", "detail": None}


async def test_health_check_on_temporal(source, tmp_path):
    async with TemporalHarness(tmp_path) as harness:
        execution = await harness.run(MODULE, "health-check", config={"status_url": f"{source}/status"})
    assert execution["status"] == "COMPLETED", execution["error"]
    assert execution["result"]["healthy"] is True
