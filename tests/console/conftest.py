"""The console in real Chromium: a real API (uvicorn on a free port), a worker and a Temporal dev
server (the shared fixtures), and Python Playwright driving the system Chromium.

Failed tests leave a screenshot of their page in ``.test-output/console/``. Set
``AUTOPLAT_CONSOLE_SCREENSHOTS=1`` to refresh the committed page screenshots in ``docs/console/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from activities.services.browser import LAUNCH_ARGS
from tests.conftest import PASSWORD
from tests.jobs.helpers import put_module, write_module

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_DIST = ROOT / "api" / "console_dist"
OUTPUT = ROOT / ".test-output" / "console"
DOCS_SHOTS = ROOT / "docs" / "console"
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = os.environ.get("AUTOPLAT_BROWSER_PATH", "/usr/bin/chromium")
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
#: Markup in module text, event payloads, log lines and config values: shown as text, never run.
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'

CODE = """
import time

def greet(ctx):
    name = ctx.config.get("name", "world")
    ctx.state.update_sync(lambda s: {**s, "greeted": s.get("greeted", 0) + 1})
    ctx.logger.info("greeting " + name)
    ctx.logger.info("token given: " + str(bool(ctx.config.get("api_token"))))
    return {"greeting": "hello " + name}

def slow(ctx):
    ctx.logger.info("slow starts")
    while not ctx.is_cancelled():
        time.sleep(0.05)
    ctx.logger.warning("slow was cancelled")

def boom(ctx):
    ctx.logger.error("about to fail")
    raise RuntimeError("boom on purpose")
"""

GREET_CONFIG = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "title": "Name", "description": "Who to greet"}
        | {"default": "world", "maxLength": 200},
        "times": {"type": "integer", "title": "Times", "minimum": 1, "maximum": 5, "default": 1},
        "api_token": {"type": "string", "title": "API token", "description": "Write-only", "secret": True},
    },
}
JOBS = [
    {"name": "greet", "displayName": "Greet", "description": "Logs a greeting", "handler": "greet"}
    | {"config": GREET_CONFIG},
    {"name": "slow", "displayName": "Slow", "description": "Runs until cancelled", "handler": "slow"},
    {"name": "boom", "displayName": "Boom", "description": "Always fails", "handler": "boom"}
    | {"retries": {"maxAttempts": 1}},
]
MODULE_CONFIG = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "title": "Region", "default": "eu"},
        "webhook_secret": {"type": "string", "title": "Webhook secret", "secret": True},
    },
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/console/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def console_built() -> Path:
    """The built console (``./test.sh`` builds it; built here when missing and Node is present)."""
    if not (CONSOLE_DIST / "index.html").is_file():
        subprocess.run([str(ROOT / "scripts" / "console-build.sh")], check=True)
    assert (CONSOLE_DIST / "index.html").is_file(), "the console is not built: scripts/console-build.sh"
    return CONSOLE_DIST


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium missing at {CHROMIUM}: apt-get install -y chromium (or set AUTOPLAT_BROWSER_PATH)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield b
        await b.close()


@pytest.fixture
async def stack(console_built: Path, worker: Any, server: str) -> str:
    """API + worker + Temporal dev server; yields the console's base URL."""
    return server


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Path) -> Any:
    folder = write_module(
        tmp_path,
        name="demo",
        code=CODE,
        jobs=JOBS,
        extra={"config": MODULE_CONFIG, "description": f"Demo module {XSS}"},
    )
    return await put_module(sessions, settings.state_dir, folder)


@pytest.fixture
def users(make_user: Any) -> Callable[[str], Awaitable[Any]]:
    async def make(role: str) -> Any:
        return await make_user(role, email=f"{role}-{uuid.uuid4().hex[:6]}@example.com")

    return make


@pytest.fixture
async def context(browser: Any) -> AsyncIterator[Any]:
    ctx = await browser.new_context(viewport=DESKTOP, color_scheme="light")
    # Loopback only: anything else the page asks for is refused (and would show in the test).
    await ctx.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    yield ctx
    await ctx.close()


@pytest.fixture
async def page(context: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    p = await context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.errors = errors
    yield p
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::")[-1])
        await p.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)


async def sign_in(page: Any, base: str, email: str, path: str = "/", password: str = PASSWORD) -> None:
    """Open ``path`` (the login page comes first), sign in, and wait for the page's heading."""
    from playwright.async_api import expect

    await page.goto(base + path)
    await expect(page.get_by_role("heading", name="autoplat")).to_be_visible()
    await page.get_by_label("Email or username").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("navigation", name="Main")).to_be_visible()


async def axe_violations(page: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of the page as it is now."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.evaluate(AXE.read_text())
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"][:5]]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


async def shoot(page: Any, name: str) -> None:
    """A page screenshot for docs/console (only when asked: they are committed)."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(OUTPUT / f"page-{name}.png"))
    if os.environ.get("AUTOPLAT_CONSOLE_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(DOCS_SHOTS / f"{name}.png"))


async def bearer(base: str, email: str, password: str = PASSWORD) -> dict[str, str]:
    """Headers for direct API calls made by a test (arranging data the page then shows)."""
    import httpx

    async with httpx.AsyncClient(base_url=base) as http:
        r = await http.post("/api/v1/auth/login", json={"login": email, "password": password})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def api_call(base: str, headers: dict[str, str], method: str, path: str, **kw: Any) -> Any:
    import httpx

    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        r = await http.request(method, path, **kw)
        assert r.status_code < 300, r.text
        return r.json() if r.content else None


async def make_job(base: str, headers: dict[str, str], job_type: str, **extra: Any) -> dict[str, Any]:
    body = {"module": "demo", "job_type": job_type, "name": f"{job_type} job", "schedule": None, **extra}
    job: dict[str, Any] = await api_call(base, headers, "POST", "/api/v1/jobs", json=body)
    return job


async def no_script_ran(page: Any) -> None:
    assert await page.evaluate("window.__xss === undefined"), "a payload's markup was executed"
    assert page.errors == [], page.errors
