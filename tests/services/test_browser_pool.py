"""The browser service against the system Chromium and a real local HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from activities.services.browser import BrowserPool, BrowserSession, BrowserUnavailable, find_browser, host_allowed
from autoplat.errors import JobError
from registry.settings import Settings
from tests.conftest import eventually
from tests.services.helpers import Receiver, http_receiver

PAGE = """<!doctype html><html><body>
<h1 id="title">Status</h1>
<form><input id="q" name="q"><button id="go" type="button"
  onclick="document.getElementById('out').textContent = 'searched ' + q.value">Go</button></form>
<p id="out"></p>
<table id="svc"><tr><th>service</th><th>state</th></tr>
<tr><td>api</td><td>up</td></tr><tr><td>db</td><td>down</td></tr></table>
<script>document.cookie = "seen=" + (document.cookie.includes("mine=") ? "again" : "first");</script>
</body></html>"""


@pytest.fixture
def site() -> Iterator[Receiver]:
    with http_receiver(**{"index.html": ("text/html", PAGE)}) as receiver:
        yield receiver


def browser_settings(**kw: Any) -> Settings:
    return Settings(dev_mode=True, **{"http_allow_private": "loopback", **kw})


@pytest.fixture
async def pool() -> AsyncIterator[BrowserPool]:
    p = BrowserPool(browser_settings(browser_max_contexts=2, browser_timeout_seconds=10))
    try:
        yield p
    finally:
        await p.close()


async def test_helpers_navigate_fill_click_text_table_screenshot_pdf(pool, site):
    session = BrowserSession(pool)
    try:
        assert await session.navigate(f"{site.url}/index.html") == 200
        await session.fill("#q", "disk")
        await session.click("#go")
        await session.wait_for("#out:has-text('searched disk')")
        assert await session.text("#out") == "searched disk"
        assert await session.table("#svc") == [{"service": "api", "state": "up"}, {"service": "db", "state": "down"}]
        shot = await session.screenshot("s.png")
        assert shot["content_type"] == "image/png" and shot["data"].startswith(b"\x89PNG\r\n\x1a\n")
        pdf = await session.pdf("p.pdf")
        assert pdf["data"].startswith(b"%PDF")
    finally:
        await session.close()
    assert pool.launches == 1


async def test_sessions_are_isolated_and_closed(pool, site):
    first, second = BrowserSession(pool), BrowserSession(pool)
    try:
        await asyncio.gather(first.navigate(f"{site.url}/index.html"), second.navigate(f"{site.url}/index.html"))
        await first.page.context.add_cookies([{"name": "mine", "value": "1", "url": site.url}])
        await first.navigate(f"{site.url}/index.html")
        await second.navigate(f"{site.url}/index.html")
        first_cookies = {c["name"]: c["value"] for c in await first.page.context.cookies()}
        second_cookies = {c["name"]: c["value"] for c in await second.page.context.cookies()}
        assert first_cookies == {"mine": "1", "seen": "again"}
        assert second_cookies == {"seen": "first"}
        browser = await pool.browser()
        assert len(browser.contexts) == 2 and pool.in_use == 2  # one browser, two contexts
    finally:
        await first.close()
        await second.close()
    assert (await pool.browser()).contexts == [] and pool.in_use == 0
    assert pool.launches == 1


async def test_contexts_are_bounded(site):
    pool = BrowserPool(browser_settings(browser_max_contexts=1))
    first, second = BrowserSession(pool), BrowserSession(pool)
    try:
        await first.navigate(f"{site.url}/index.html")
        waiting = asyncio.create_task(second.navigate(f"{site.url}/index.html"))
        done, _ = await asyncio.wait({waiting}, timeout=1.0)  # must NOT finish while the slot is taken
        assert not done and not second.opened
        await first.close()
        assert await waiting == 200
    finally:
        await second.close()
        await pool.close()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _browser_processes() -> list[int]:
    found = []
    for pid in _descendants(os.getpid()):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"chrom" in os.path.basename(args[0]) and not any(a.startswith(b"--type=") for a in args):
            found.append(pid)
    return found


async def test_a_crashed_browser_is_relaunched(pool, site):
    before = set(_browser_processes())  # other tests' browsers may still be shutting down
    session = BrowserSession(pool)
    await session.navigate(f"{site.url}/index.html")
    await session.close()
    browser = await pool.browser()
    victims = set(_browser_processes()) - before
    assert victims, "no Chromium process found for this pool"
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    async def disconnected() -> bool:
        return not browser.is_connected()

    await eventually(disconnected, what="browser disconnected after SIGKILL")
    again = BrowserSession(pool)
    try:
        assert await again.navigate(f"{site.url}/index.html") == 200
    finally:
        await again.close()
    assert pool.launches == 2


def test_missing_browser_is_a_clear_error(tmp_path):
    with pytest.raises(BrowserUnavailable, match="AUTOPLAT_BROWSER_PATH=/nonexistent/chromium is not an executable"):
        find_browser("/nonexistent/chromium")
    assert find_browser(None).endswith("chromium")


async def test_missing_browser_fails_the_step_without_retry(site):
    pool = BrowserPool(browser_settings(browser_path="/nonexistent/chromium"))
    session = BrowserSession(pool)
    try:
        with pytest.raises(JobError, match="apt-get install chromium"):
            await session.navigate(f"{site.url}/index.html")
        assert pool.in_use == 0  # the slot was given back
    finally:
        await session.close()
        await pool.close()


async def _hosts(*names: str) -> Any:
    async def load() -> list[str]:
        return list(names)

    return load


async def test_navigation_outside_permissions_hosts_is_refused(pool, site):
    port = site.url.rsplit(":", 1)[1]
    session = BrowserSession(pool, hosts=await _hosts("127.0.0.1"))
    try:
        with pytest.raises(JobError, match="host localhost is not in the module's permissions.hosts"):
            await session.navigate(f"http://localhost:{port}/index.html")
        assert not session.opened and site.requests == []
        # Sub-resources and redirects to other hosts are blocked inside the page too.
        site.pages["/with-image.html"] = ("text/html", f'<img src="http://localhost:{port}/pixel.png"><p>x</p>')
        assert await session.navigate(f"{site.url}/with-image.html") == 200
        await session.wait_for("p")
        assert session.blocked == [f"http://localhost:{port}/pixel.png"]
        assert [r.path for r in site.requests] == ["/with-image.html"]
    finally:
        await session.close()


async def test_a_redirect_to_a_refused_host_is_caught_and_its_page_dropped(pool, site):
    port = site.url.rsplit(":", 1)[1]
    site.pages["/secret.html"] = ("text/html", "<p id='s'>internal secret</p>")
    site.pages["/hop"] = ("redirect", f"http://localhost:{port}/secret.html")
    session = BrowserSession(pool, hosts=await _hosts("127.0.0.1"))
    try:
        with pytest.raises(JobError, match="refused destination"):
            await session.navigate(f"{site.url}/hop")
        assert session.page.url == "about:blank"
        assert "internal secret" not in await session.text("body")
        assert f"http://localhost:{port}/secret.html" in session.blocked
    finally:
        await session.close()


async def test_loopback_needs_the_private_address_setting(site):
    pool = BrowserPool(browser_settings(http_allow_private="off"))
    session = BrowserSession(pool)
    try:
        with pytest.raises(JobError, match="AUTOPLAT_HTTP_ALLOW_PRIVATE"):
            await session.navigate(f"{site.url}/index.html")
        with pytest.raises(JobError, match="only opens http"):
            await session.navigate("file:///etc/passwd")
        assert site.requests == [] and pool.launches == 0
    finally:
        await session.close()
        await pool.close()


def test_host_patterns():
    assert host_allowed("api.example.com", ["api.example.com"])
    assert host_allowed("a.b.example.com", ["*.example.com"])
    assert not host_allowed("example.com", ["*.example.com"])
    assert not host_allowed("evilexample.com", ["*.example.com"])
    assert not host_allowed("api.example.com.evil.io", ["api.example.com"])


async def test_screenshot_activity_stores_an_artifact(sessions, site):
    """The platform's own workflows can call the browser as an activity."""
    from temporalio.testing import ActivityEnvironment

    from activities.services.browser import BrowserActivities, ScreenshotInput
    from registry.services import artifacts
    from tests.services.helpers import make_execution

    execution_id = await make_execution(sessions)
    acts = BrowserActivities(browser_settings(), sessions)
    try:
        info = await ActivityEnvironment().run(
            acts.browser_screenshot, ScreenshotInput(execution_id=execution_id, url=f"{site.url}/index.html")
        )
    finally:
        await acts.close()
    assert info["name"] == "screenshot.png" and info["size"] > 100
    async with sessions() as session:
        found = await artifacts.get_artifact(session=session, execution_id=execution_id, name="screenshot.png")
    assert found.data.startswith(b"\x89PNG") and found.artifact.step is None


async def test_logged_urls_mask_the_steps_secrets(pool, site):
    """The browser logs where it went as ctx.http does: secret values and user info never in clear."""
    from autoplat.context import ExecutionInfo, JobLogger, LogBuffer

    buffer = LogBuffer()
    logger = JobLogger(buffer, ExecutionInfo(execution_id="e", module="m", job_type="j"))
    session = BrowserSession(pool, logger=logger, secrets=["s3cret-token-value", 42])
    try:
        assert await session.navigate(f"{site.url}/index.html?q=s3cret-token-value&page=1") == 200
    finally:
        await session.close()
    text = buffer.text()
    assert "s3cret-token-value" not in text
    assert "index.html?q=***&page=1" in text
