"""The example module, run with the SDK harness against a real local HTTP source."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from autoplat.testing import MemoryState, MemoryStorage, TemporalHarness, arun_job

MODULE = Path(__file__).resolve().parents[2] / "example_modules" / "data_sync"
RECORDS: list[dict[str, Any]] = []


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
        elif url.path == "/status-page":
            page = f"<html><body><h1>Source status</h1><p id='s'>{Source.status}</p></body></html>".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
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
async def demo() -> AsyncIterator[str]:
    """The dev stack's demo source (autoplat/devserver.py) on a free port."""
    import asyncio
    import socket

    import uvicorn

    from autoplat.devserver import demo_source_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(demo_source_app(), log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):  # polled with a deadline: uvicorn has no "started" event
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    await task


@pytest.fixture
def source() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Source)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Source.status = "ok"
    RECORDS[:] = [{"id": i} for i in range(25)]
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_hourly_sync_pulls_every_page_and_emits_data_synced(source):
    storage, state = MemoryStorage(), MemoryState()
    config = {"source_url": f"{source}/records", "batch_size": 10}
    result = await arun_job(
        MODULE, "hourly-sync", config=config, allow_private="loopback", storage=storage, state=state
    )
    assert result.status == "COMPLETED", result.steps[-1].error
    assert result.result["records"] == 25 and result.result["pages"] == 3
    assert [e["name"] for e in result.events] == ["data.synced"]
    assert result.events[0]["payload"]["records"] == 25
    # Every request is in the log; records are stored; the cursor is kept for the next run.
    assert sum(e["message"].startswith("HTTP GET") for e in result.logs) == 3
    assert len(await storage.query("record:", limit=1000)) == 25 and await storage.get("record:7") == {"id": 7}
    assert (await state.get()).value == {"cursor": 25}

    # The next run only fetches what was added since.
    RECORDS.extend({"id": i} for i in range(25, 32))
    again = await arun_job(MODULE, "hourly-sync", config=config, allow_private="loopback", storage=storage, state=state)
    assert again.result["records"] == 7 and again.result["cursor"] == 32
    assert len(await storage.query("record:", limit=1000)) == 32


async def test_hourly_sync_refuses_loopback_unless_allowed(source):
    config = {"source_url": f"{source}/records", "batch_size": 10}
    result = await arun_job(MODULE, "hourly-sync", config=config, allow_private="off")
    assert result.status == "FAILED" and "loopback" in str(result.steps[-1].error)


async def test_health_check_alerts_only_when_unhealthy(source):
    config = {"status_url": f"{source}/status"}
    healthy = await arun_job(MODULE, "health-check", config=config, allow_private="loopback")
    assert healthy.result["healthy"] is True and [e["name"] for e in healthy.events] == ["health.checked"]
    assert healthy.events[0]["payload"]["healthy"] is True
    Source.status = "degraded"
    unhealthy = await arun_job(MODULE, "health-check", config=config, allow_private="loopback")
    assert unhealthy.result["healthy"] is False
    assert [e["name"] for e in unhealthy.events] == ["health.checked", "health.alert"]
    assert unhealthy.events[0]["payload"]["healthy"] is False


async def test_report_goes_through_the_configured_channel(demo):
    """daily-report sends through ctx.notify: by default a webhook to the demo inbox (what the dev
    stack serves); email without an SMTP server is said unsent in the log and the result; both runs
    announce report.generated."""
    import httpx

    from activities.services.notify import Notifier, Sender
    from registry.settings import Settings

    settings = Settings(dev_mode=True)  # dev mode: loopback allowed, no SMTP server
    assert settings.http_allow_private == "loopback" and settings.smtp_host is None
    event = {"name": "data.synced", "payload": {"records": 7}}
    async with httpx.AsyncClient() as client:
        services = {"notify": Notifier(Sender(settings, client))}
        hooked = await arun_job(
            MODULE, "daily-report", event=event, config={"webhook_url": f"{demo}/inbox"}, services=services
        )
        mailed = await arun_job(MODULE, "daily-report", event=event, config={"channel": "email"}, services=services)
        [received] = (await client.get(f"{demo}/inbox")).json()["items"]
    assert hooked.status == "COMPLETED", hooked.steps[-1].error
    assert hooked.result["sent"] is True and hooked.result["channel"] == "webhook"
    assert received["subject"] == "data-sync report: 7 record(s)" and received["body"]["records"] == 7
    assert [(e["name"], e["payload"]["sent"]) for e in hooked.events] == [("report.generated", True)]
    assert mailed.status == "COMPLETED" and mailed.result["sent"] is False
    assert mailed.result["recipients"] == ["ops@example.com"]
    assert any("no SMTP server configured (AUTOPLAT_SMTP_HOST)" in e["message"] for e in mailed.logs)
    assert [(e["name"], e["payload"]["sent"]) for e in mailed.events] == [("report.generated", False)]


async def test_sync_failed_turns_job_failed_into_data_sync_failed():
    failed = {"execution_id": "e-1", "job_id": "j-1", "error": {"message": "boom"}, "reason": None}
    result = await arun_job(MODULE, "sync-failed", event={"name": "job.failed", "payload": failed})
    assert result.status == "COMPLETED"
    assert [(e["name"], e["payload"]["execution_id"]) for e in result.events] == [("data.sync.failed", "e-1")]
    by_hand = await arun_job(MODULE, "sync-failed")
    assert by_hand.status == "COMPLETED" and by_hand.result == {"announced": False} and by_hand.events == []


def test_the_example_defaults_point_at_the_demo_source():
    """What ./run.sh relies on: each default URL of the example is a route of the dev stack's demo
    source, on its port; every job type the dev stack schedules or triggers asks for its job."""
    from autoplat.devserver import DEMO_PORT, demo_source_app

    manifest = json.loads((MODULE / "manifest.json").read_text())
    paths = {route.path for route in demo_source_app().routes}
    urls = [
        prop["default"]
        for job in manifest["jobs"]
        for prop in (job.get("config") or {}).get("properties", {}).values()
        if prop.get("format") == "uri" and "default" in prop
    ]
    assert len(urls) == 3
    for url in urls:
        parsed = urlparse(url)
        assert (parsed.hostname, parsed.port) == ("127.0.0.1", DEMO_PORT) and parsed.path in paths, url
    listened = {listener["job"] for listener in manifest["events"]["listeners"]}
    scheduled = {job["name"] for job in manifest["jobs"] if job.get("schedule")}
    assert {job["name"] for job in manifest["jobs"] if job.get("createJob")} == listened | scheduled


async def test_the_demo_source_pages_records_and_reports_its_status(demo):
    import httpx

    async with httpx.AsyncClient(base_url=demo) as client:
        first = (await client.get("/records", params={"offset": 0, "limit": 100})).json()
        rest = (await client.get("/records", params={"offset": 100, "limit": 100})).json()
        assert [r["id"] for r in first["items"]] == list(range(100)) and first["total"] == 120
        assert [r["id"] for r in rest["items"]] == list(range(100, 120))
        assert (await client.get("/records", params={"limit": "x"})).status_code == 400
        assert (await client.get("/status")).json()["status"] == "ok"
        await client.post("/status", json={"status": "down"})
        assert (await client.get("/status")).json()["status"] == "down"
        assert (await client.get("/")).json()["inbox"] == "/inbox"


async def test_health_check_goes_through_the_address_policy(source):
    # A loopback status page with private destinations off: refused like any ctx.http request (the
    # check used to open its own connection and reached it).
    result = await arun_job(MODULE, "health-check", config={"status_url": f"{source}/status"}, allow_private="off")
    assert result.status == "FAILED"
    assert "loopback" in str(result.steps[-1].error)


async def test_health_check_on_temporal(source, tmp_path):
    async with TemporalHarness(tmp_path, http_allow_private="loopback") as harness:
        execution = await harness.run(MODULE, "health-check", config={"status_url": f"{source}/status"})
    assert execution["status"] == "COMPLETED", execution["error"]
    assert execution["result"]["healthy"] is True


async def test_hourly_sync_on_temporal_uses_the_registry_storage(source, tmp_path):
    async with TemporalHarness(tmp_path, http_allow_private="loopback") as harness:
        config = {"source_url": f"{source}/records", "batch_size": 10}
        execution = await harness.run(MODULE, "hourly-sync", config=config)
        assert execution["status"] == "COMPLETED", execution["error"]
        assert execution["result"]["records"] == 25 and execution["result"]["cursor"] == 25
        assert '"HTTP GET ' in execution["logs"]

        from activities.services.storage import StorageService

        service = StorageService(harness._deps)
        assert len(await service.module_storage("data-sync").query("record:", limit=100)) == 25
        assert (await service.job_state(execution["job_id"]).get()).value == {"cursor": 25}


async def test_undeclared_services_are_unavailable_in_the_harness(tmp_path):
    manifest = json.loads((MODULE / "manifest.json").read_text())
    manifest["permissions"]["services"] = ["events"]
    folder = tmp_path / "data_sync"
    import shutil

    shutil.copytree(MODULE, folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = await arun_job(folder, "hourly-sync", allow_private="loopback")
    assert result.status == "FAILED" and "ctx.state" not in str(result.steps[-1].error)
    assert "ctx.http is not available" in str(result.steps[-1].error)


async def test_notify_emails_on_call_through_ctx_notify():
    """The notify handler sends a text + HTML email through ctx.notify to a real SMTP server."""
    import httpx

    from activities.services.notify import Notifier, Sender
    from registry.settings import Settings
    from tests.services.helpers import smtp_server

    with smtp_server() as smtp:
        settings = Settings(dev_mode=True, smtp_host=smtp.host, smtp_port=smtp.port, smtp_tls="none")
        async with httpx.AsyncClient() as client:
            alert = await arun_job(
                MODULE,
                "notify",
                event={"name": "health.alert", "payload": {"status": "unhealthy", "status_url": "http://src/status"}},
                services={"notify": Notifier(Sender(settings, client))},
            )
        assert alert.status == "COMPLETED", alert.steps[-1].error
        [mail] = smtp.mails
        assert mail.recipients == ["ops@example.com"]
        assert mail.message["Subject"] == "data-sync alert: unhealthy"
        assert mail.message["Message-ID"] == alert.result["message_id"]
        assert "http://src/status is unhealthy." in mail.message.get_body(("plain",)).get_content()
        assert "<b>unhealthy</b>" in mail.message.get_body(("html",)).get_content()


async def test_health_check_screenshots_the_status_page(source):
    """With status_page_url set, health-check keeps a screenshot of it through ctx.browser."""
    from activities.services.browser import BrowserPool, BrowserSession
    from registry.settings import Settings

    saved: dict[str, bytes] = {}

    async def save(name: str, content_type: str, data: bytes) -> dict[str, Any]:
        saved[name] = data
        return {"name": name, "content_type": content_type, "size": len(data)}

    pool = BrowserPool(Settings(dev_mode=True, http_allow_private="loopback"))
    session = BrowserSession(pool, save=save)
    try:
        result = await arun_job(
            MODULE,
            "health-check",
            config={"status_url": f"{source}/status", "status_page_url": f"{source}/status-page"},
            services={"browser": session},
            allow_private="loopback",
        )
    finally:
        await session.close()
        await pool.close()
    assert result.status == "COMPLETED", result.steps[-1].error
    assert result.result["screenshot"]["name"] == "status.png"
    assert saved["status.png"].startswith(b"\x89PNG")


async def test_notify_and_screenshot_on_the_platform(source, tmp_path, monkeypatch):
    """The same handlers on a real worker: the email reaches aiosmtpd, the screenshot is an artifact."""
    from tests.services.helpers import smtp_server

    with smtp_server() as smtp:
        env = {
            "SMTP_HOST": smtp.host,
            "SMTP_PORT": str(smtp.port),
            "SMTP_TLS": "none",
            "HTTP_ALLOW_PRIVATE": "loopback",
        }
        for key, value in env.items():
            monkeypatch.setenv(f"AUTOPLAT_{key}", value)
        async with TemporalHarness(tmp_path) as harness:
            alert = await harness.run(MODULE, "notify")
            check = await harness.run(
                MODULE,
                "health-check",
                config={"status_url": f"{source}/status", "status_page_url": f"{source}/status-page"},
            )
        assert alert["status"] == "COMPLETED", alert["error"]
        [mail] = smtp.mails
        assert mail.message["Message-ID"] == alert["result"]["message_id"]
        assert check["status"] == "COMPLETED", check["error"]
        shot = check["result"]["screenshot"]
        assert shot["name"] == "status.png" and shot["content_type"] == "image/png" and shot["size"] > 100
        assert shot["url"] == f"/api/v1/executions/{check['id']}/artifacts/status.png"
