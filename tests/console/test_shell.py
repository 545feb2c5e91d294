"""Serving: the console at /, deep links, the API and the docs untouched, caching, offline docs."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.async_api import expect

from tests.console.conftest import sign_in


async def test_console_is_served_without_shadowing_the_api(console_built: Any, server: str) -> None:
    async with httpx.AsyncClient(base_url=server) as http:
        index = await http.get("/")
        assert index.status_code == 200 and '<div id="root">' in index.text
        assert index.headers["cache-control"] == "no-cache"
        assert "script-src 'self'" in index.headers["content-security-policy"]
        deep = await http.get("/executions/0f0e0d0c-0000-4000-8000-000000000000?status=FAILED")
        assert deep.status_code == 200 and deep.text == index.text
        asset = next(part.split('"')[0] for part in index.text.split('src="')[1:] if part.startswith("/assets/"))
        hashed = await http.get(asset)
        assert hashed.status_code == 200
        assert hashed.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert (await http.get("/assets/missing-0000.js")).status_code == 404
        # The API's own answers are unchanged: JSON errors, 404 for unknown API paths, health, OpenAPI.
        unknown = await http.get("/api/v1/nope")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"]
        assert (await http.get("/api/v1/jobs")).status_code == 401
        assert (await http.post("/jobs")).status_code in (404, 405)
        assert (await http.get("/health/live")).status_code == 200
        assert (await http.get("/openapi.json")).json()["info"]["title"] == "autoplat"
        for page, asset_path in (
            ("/docs", "/vendor/swagger-ui/swagger-ui-bundle.js"),
            ("/redoc", "/vendor/redoc/redoc.standalone.js"),
        ):
            html = (await http.get(page)).text
            assert asset_path in html
            assert "cdn" not in html.lower() and "fonts.googleapis" not in html
            assert (await http.get(asset_path)).status_code == 200


async def test_docs_render_offline(browser: Any, console_built: Any, server: str) -> None:
    """Swagger UI and ReDoc load with every request to the loopback server only."""
    ctx = await browser.new_context()
    outside: list[str] = []
    page = await ctx.new_page()
    page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else outside.append(r.url))
    await page.goto(server + "/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("autoplat")
    await page.goto(server + "/redoc")
    await expect(page.locator("h1").first).to_contain_text("autoplat")
    await ctx.close()
    assert outside == []


async def test_login_logout_and_deep_link_reload(stack: str, page: Any, users: Any) -> None:
    admin = await users("admin")
    # A deep link while signed out: the login page, then the page that was asked for.
    await sign_in(page, stack, admin.email, path="/executions?status=FAILED")
    await expect(page).to_have_url(stack + "/executions?status=FAILED")
    await expect(page.get_by_role("heading", name="Executions")).to_be_visible()
    await expect(page.get_by_label("Status")).to_have_value("FAILED")
    # Tokens are out of the page's reach: the refresh token is an HttpOnly cookie, nothing is stored.
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["autoplat_refresh"]["httpOnly"] and cookies["autoplat_refresh"]["sameSite"] == "Strict"
    assert "autoplat_refresh" not in await page.evaluate("document.cookie")
    stored = await page.evaluate("JSON.stringify([localStorage, sessionStorage])")
    assert "eyJ" not in stored and "token" not in stored.lower(), stored
    # Reloading a deep link keeps the session (refresh cookie) and the page.
    await page.reload()
    await expect(page.get_by_role("heading", name="Executions")).to_be_visible()
    await expect(page.get_by_label("Status")).to_have_value("FAILED")
    # The user menu shows who is signed in.
    await page.locator("details.usermenu summary").click()
    await expect(page.get_by_test_id("role")).to_have_text("admin")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    # Signed out for good: a reload does not bring the session back.
    await page.goto(stack + "/jobs")
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    await expect(page).to_have_url(stack + "/login?next=%2Fjobs")
    assert page.errors == []
