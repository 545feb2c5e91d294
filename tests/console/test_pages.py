"""Every page: no serious or critical axe-core violation (light and dark), usable on a phone, and a
screenshot of each (committed to docs/console/ when AUTOPLAT_CONSOLE_SCREENSHOTS=1)."""

from __future__ import annotations

import json
from typing import Any

from playwright.async_api import expect

from tests.console.conftest import (
    DESKTOP,
    PHONE,
    api_call,
    axe_violations,
    bearer,
    make_job,
    no_script_ran,
    shoot,
    sign_in,
)


async def _arrange(stack: str, email: str) -> dict[str, Any]:
    """A job with a schedule, a completed and a failed run, and a few events."""
    headers = await bearer(stack, email)
    greet = await make_job(
        stack, headers, "greet", name="Nightly greeting", schedule="0 2 * * *", timezone="Europe/Paris"
    )
    boom = await make_job(stack, headers, "boom", name="Flaky import", retries=0)
    done = await api_call(stack, headers, "POST", f"/api/v1/jobs/{greet['id']}/execute?wait=true", json={})
    await api_call(stack, headers, "POST", f"/api/v1/jobs/{boom['id']}/execute?wait=true", json={})
    for name, source in [("data.synced", "sync"), ("health.alert", "probe"), ("data.synced", "sync")]:
        event = {"name": name, "source": source, "payload": {"n": 1}}
        await api_call(stack, headers, "POST", "/api/v1/events", json=event)
    return {"job": greet, "execution": done}


async def _open(page: Any, url: str, heading: str) -> None:
    await page.goto(url)
    await expect(page.get_by_role("heading", level=1)).to_contain_text(heading)
    await expect(page.locator("main").get_by_text("Loading…")).to_have_count(0)


async def test_every_page_is_accessible_and_fits_desktop_and_phone(
    stack: str, browser: Any, page: Any, module: Any, users: Any
) -> None:
    admin = await users("admin")
    data = await _arrange(stack, admin.email)
    pages = [
        ("dashboard", "/", "Dashboard"),
        ("modules", "/modules", "Modules"),
        ("module", "/modules/demo", "Demo"),
        ("jobs", "/jobs", "Jobs"),
        ("job-create", "/jobs/new?module=demo", "Create job"),
        ("job", f"/jobs/{data['job']['id']}", "Nightly greeting"),
        ("executions", "/executions", "Executions"),
        ("execution", f"/executions/{data['execution']['id']}", "demo.greet"),
        ("events", "/events", "Events"),
        ("admin", "/admin", "Admin"),
        ("health", "/status", "Health"),
    ]
    found: dict[str, Any] = {}

    # The login page, signed out.
    await page.goto(stack + "/login")
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    found["login"] = await axe_violations(page)
    await shoot(page, "login")

    await sign_in(page, stack, admin.email)
    for name, path, heading in pages:
        await _open(page, stack + path, heading)
        if name == "job-create":
            await page.get_by_label("Job type").select_option("greet")
            await page.get_by_label("Preset").select_option(label="Weekdays at 09:00")
            await expect(page.locator(".preview ol.next-runs li")).to_have_count(5)
        if name == "events":
            await expect(page.locator(".chart canvas")).to_have_count(1)
        if name == "health":
            # The key figures for those who run no Grafana: the worker that ran the jobs is listed.
            await expect(page.get_by_text("Runs per minute (last hour)")).to_be_visible()
            await expect(page.get_by_role("region", name="Dependencies")).to_contain_text("database")
            await expect(page.get_by_role("region", name="Workers").locator("tbody tr").first).to_be_visible()
        if name == "job":
            # The job's state document (ctx.state), read-only, as the handler left it.
            state = page.get_by_role("region", name="State")
            await expect(state).to_contain_text("Version 1")
            await expect(state).to_contain_text('"greeted": 1')
        found[name] = await axe_violations(page)
        await shoot(page, name)

    # Dark theme (from the system preference), for the pages with the most colour.
    await page.emulate_media(color_scheme="dark")
    for name, path, heading in [pages[0], pages[7], pages[8]]:
        await _open(page, stack + path, heading)
        assert await page.evaluate("document.documentElement.dataset.theme") == "dark"
        found[f"{name}-dark"] = await axe_violations(page)
        await shoot(page, f"{name}-dark")
    await page.emulate_media(color_scheme="light")

    # A phone: every page fits its width (tables scroll inside their own box).
    await page.set_viewport_size(PHONE)
    for name, path, heading in pages:
        await _open(page, stack + path, heading)
        if name == "job-create":
            await page.get_by_label("Job type").select_option("greet")
            await expect(page.locator("#config_name")).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{name} is {width}px wide on a {PHONE['width']}px phone"
        if name in ("dashboard", "execution", "job-create"):
            await shoot(page, f"{name}-phone")
    await page.set_viewport_size(DESKTOP)

    serious = {name: v for name, v in found.items() if v}
    assert serious == {}, json.dumps(serious, indent=1)
    await no_script_ran(page)


async def test_keyboard_reaches_the_navigation_and_the_user_menu(stack: str, page: Any, users: Any) -> None:
    admin = await users("admin")
    await sign_in(page, stack, admin.email)
    await page.reload()
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="autoplat home")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Dashboard")).to_be_focused()
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Modules")).to_be_visible()
    # The theme switch in the user menu, by keyboard.
    await page.locator("details.usermenu summary").press("Enter")
    await expect(page.locator("details.usermenu")).to_have_attribute("open", "")
    await page.get_by_label("Theme").select_option("dark")
    assert await page.evaluate("document.documentElement.dataset.theme") == "dark"
    await page.reload()
    await expect(page.get_by_role("heading", name="Modules")).to_be_visible()
    assert await page.evaluate("document.documentElement.dataset.theme") == "dark"
