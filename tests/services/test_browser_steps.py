"""Browser steps on a real worker: concurrent steps isolated, contexts closed, artifacts served."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import eventually
from tests.jobs.helpers import put_module, write_module

CODE = """
async def visit(ctx):
    base = ctx.config["base"]
    await ctx.browser.navigate(f"{base}/set?who={ctx.config['who']}")
    await ctx.browser.navigate(f"{base}/barrier")  # both steps are inside the browser at once
    await ctx.browser.navigate(f"{base}/echo")
    return {"cookies": await ctx.browser.text("body")}

def capture(ctx):
    ctx.browser.navigate(ctx.config["base"] + "/page")
    shot = ctx.browser.screenshot("page.png")
    pdf = ctx.browser.pdf("page.pdf")
    return {"shot": shot, "pdf": pdf, "title": ctx.browser.text("h1")}

async def hang(ctx):
    await ctx.browser.navigate(ctx.config["base"] + "/page")
    ctx.logger.info("page open")
    if ctx.config.get("marker"):
        open(ctx.config["marker"], "w").close()  # tells the test the page is open
    await ctx.browser.wait_for("#never", timeout=600)

async def elsewhere(ctx):
    await ctx.browser.navigate(ctx.config["base"].replace("127.0.0.1", "localhost") + "/page")

async def crash_after_open(ctx):
    await ctx.browser.navigate(ctx.config["base"] + "/page")
    raise RuntimeError("handler bug after opening the browser")
"""
CONFIG = {
    "type": "object",
    "properties": {
        "base": {"type": "string"},
        "who": {"type": "string", "default": "x"},
        "marker": {"type": "string"},
    },
}
JOBS = [
    {"name": "visit", "description": "cookies", "handler": "visit", "config": CONFIG},
    {"name": "capture", "description": "artifacts", "handler": "capture", "config": CONFIG},
    {"name": "crash", "description": "fails", "handler": "crash_after_open", "config": CONFIG},
    {"name": "elsewhere", "description": "host not allowed", "handler": "elsewhere", "config": CONFIG},
    {"name": "hang", "description": "waits in the browser", "handler": "hang", "config": CONFIG},
]


class Site(BaseHTTPRequestHandler):
    barrier = threading.Barrier(2, timeout=30)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        headers: list[tuple[str, str]] = []
        if self.path.startswith("/set"):
            who = self.path.split("who=", 1)[1]
            headers.append(("Set-Cookie", f"who={who}; Path=/"))
            body = f"<p>set {who}</p>"
        elif self.path == "/barrier":
            Site.barrier.wait()
            body = "<p>together</p>"
        elif self.path == "/echo":
            body = f"<pre>{self.headers.get('Cookie', '')}</pre>"
        else:
            body = "<h1>All systems go</h1><p>ok</p>"
        data = body.encode()
        self.send_response(200)
        for k, v in [("Content-Type", "text/html"), ("Content-Length", str(len(data))), *headers]:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    Site.barrier = threading.Barrier(2, timeout=30)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Any) -> Any:
    extra = {"permissions": {"hosts": ["127.0.0.1"], "services": ["browser"]}}
    folder = write_module(tmp_path, name="browsing", code=CODE, jobs=JOBS, extra=extra)
    return await put_module(sessions, settings.state_dir, folder)


async def _job(client: Any, headers: dict[str, str], job_type: str, name: str, config: dict[str, Any]) -> str:
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "browsing", "job_type": job_type, "name": name, "schedule": None, "config": config},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _execute(client: Any, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    r = await client.post(f"/api/v1/jobs/{job_id}/execute?wait=true", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _browser_provider(worker: Any) -> Any:
    from activities.services.browser import BrowserActivities

    for fn in worker.config()["activities"]:
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, BrowserActivities):
            return owner
    raise AssertionError("no browser provider registered on the worker")


async def test_two_concurrent_browser_steps_are_isolated(worker, client, module, operator_headers, site):
    a = await _job(client, operator_headers, "visit", "a", {"base": site, "who": "alice"})
    b = await _job(client, operator_headers, "visit", "b", {"base": site, "who": "bob"})
    first, second = await asyncio.gather(_execute(client, operator_headers, a), _execute(client, operator_headers, b))
    assert first["status"] == "COMPLETED", first["error"]
    assert second["status"] == "COMPLETED", second["error"]
    # Each step saw only its own cookie, although both were in the browser at the same time.
    assert first["result"] == {"cookies": "who=alice"}
    assert second["result"] == {"cookies": "who=bob"}
    provider = _browser_provider(worker)
    assert provider.pool.launches == 1  # one browser reused by both steps
    assert (await provider.pool.browser()).contexts == []  # both contexts closed with their steps


async def test_context_closed_when_the_step_fails(worker, client, module, operator_headers, site):
    job = await _job(client, operator_headers, "crash", "crash", {"base": site})
    body = await _execute(client, operator_headers, job)
    assert body["status"] == "FAILED" and "handler bug" in body["error"]["message"]
    provider = _browser_provider(worker)
    assert provider.pool.launches == 1
    assert (await provider.pool.browser()).contexts == []
    assert provider.pool.in_use == 0


async def test_screenshot_and_pdf_are_downloadable_artifacts(
    worker, client, module, operator_headers, viewer_headers, site
):
    job = await _job(client, operator_headers, "capture", "capture", {"base": site})
    body = await _execute(client, operator_headers, job)
    assert body["status"] == "COMPLETED", body["error"]
    assert body["result"]["title"] == "All systems go"
    listing = await client.get(f"/api/v1/executions/{body['id']}/artifacts", headers=viewer_headers)
    assert listing.status_code == 200, listing.text
    items = {i["name"]: i for i in listing.json()["items"]}
    assert set(items) == {"page.png", "page.pdf"}
    assert items["page.png"]["content_type"] == "image/png" and items["page.png"]["step"] == "capture"
    for name, magic in (("page.png", b"\x89PNG"), ("page.pdf", b"%PDF")):
        item = items[name]
        assert item["url"] == f"/api/v1/executions/{body['id']}/artifacts/{name}"
        r = await client.get(item["url"], headers=viewer_headers)
        assert r.status_code == 200
        assert r.content.startswith(magic)
        assert len(r.content) == item["size"] and hashlib.sha256(r.content).hexdigest() == item["sha256"]
        assert r.headers["content-type"] == item["content_type"]
        assert body["result"]["shot" if name.endswith("png") else "pdf"]["sha256"] == item["sha256"]


async def test_hosts_outside_the_manifest_fail_without_retry(worker, client, module, operator_headers, site):
    r = await client.post(
        "/api/v1/jobs",
        json={
            "module": "browsing",
            "job_type": "elsewhere",
            "name": "elsewhere",
            "schedule": None,
            "retries": 3,
            "config": {"base": site},
        },
        headers=operator_headers,
    )
    body = await _execute(client, operator_headers, r.json()["id"])
    assert body["status"] == "FAILED" and body["attempt"] == 1
    assert "host localhost is not in the module's permissions.hosts" in body["error"]["message"]


async def test_browser_needs_the_service_in_the_manifest(
    worker, client, sessions, settings, tmp_path, operator_headers
):
    folder = write_module(
        tmp_path, name="nobrowser", code=CODE, jobs=JOBS, extra={"permissions": {"hosts": ["127.0.0.1"]}}
    )
    await put_module(sessions, settings.state_dir, folder)
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "nobrowser", "job_type": "capture", "name": "c", "schedule": None, "config": {"base": "x"}},
        headers=operator_headers,
    )
    body = await _execute(client, operator_headers, r.json()["id"])
    assert body["status"] == "FAILED"
    assert "ctx.browser needs 'browser' in the manifest's permissions.services" in body["error"]["message"]
    assert _browser_provider(worker).pool.launches == 0


async def _contexts(worker: Any) -> int:
    provider = _browser_provider(worker)
    return len((await provider.pool.browser()).contexts) if provider.pool.launches else 0


async def test_context_closed_when_the_step_is_cancelled(worker, client, module, operator_headers, site, tmp_path):
    marker = tmp_path / "page-open"
    job = await _job(client, operator_headers, "hang", "hang", {"base": site, "marker": str(marker)})
    started = (await client.post(f"/api/v1/jobs/{job}/execute", headers=operator_headers)).json()

    async def page_open() -> bool:
        # The context opens before the page has loaded: cancel only once the handler says it is open.
        return marker.exists() and await _contexts(worker) == 1

    await eventually(page_open, timeout=30, what="browser page open")
    r = await client.post(f"/api/v1/executions/{started['id']}/cancel", headers=operator_headers)
    assert r.status_code == 202, r.text

    async def cancelled() -> dict[str, Any] | None:
        row = (await client.get(f"/api/v1/executions/{started['id']}", headers=operator_headers)).json()
        return row if row["status"] == "CANCELLED" else None

    row = await eventually(cancelled, timeout=30, what="CANCELLED")
    assert any(e["message"] == "page open" for e in row["logs"])

    # The row can read CANCELLED before the activity has seen the cancellation (next heartbeat).
    async def released() -> bool:
        return await _contexts(worker) == 0 and _browser_provider(worker).pool.in_use == 0

    await eventually(released, timeout=30, what="browser context closed after cancel")


async def test_context_closed_when_the_step_times_out(worker, client, module, operator_headers, site):
    r = await client.post(
        "/api/v1/jobs",
        json={
            "module": "browsing",
            "job_type": "hang",
            "name": "hang-timeout",
            "schedule": None,
            "timeout_seconds": 3,
            "config": {"base": site},
        },
        headers=operator_headers,
    )
    body = await _execute(client, operator_headers, r.json()["id"])
    assert body["status"] == "TIMED_OUT", body

    async def released() -> bool:
        return await _contexts(worker) == 0 and _browser_provider(worker).pool.in_use == 0

    await eventually(released, timeout=30, what="browser context closed after the timeout")
