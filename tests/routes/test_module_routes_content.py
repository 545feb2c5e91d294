"""A module route's answer can never run script on the API's origin (where the console lives):
non-JSON answers are sandboxed, HTML is a download unless the route declares ``html: true`` AND the
operator allows it, and nothing is content-sniffed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.routes.route_helpers import deploy, route_module

NAME = "page-mod"
BASE = f"/api/v1/m/{NAME}"
SCRIPT = "<html><body><script>fetch('/api/v1/users').then(r => r.text()).then(alert)</script></body></html>"

CODE = f"""
SCRIPT = {SCRIPT!r}

def page(ctx):
    kind = ctx.request.query.get("type", "text/html")
    ctx.response.headers["Content-Type"] = kind
    ctx.response.headers["Content-Security-Policy"] = "default-src *"  # the handler's own: dropped
    ctx.response.headers["X-Content-Type-Options"] = "sniff-away"
    ctx.response.headers["Content-Disposition"] = "inline"
    return SCRIPT

def data(ctx):
    return {{"html": SCRIPT}}

def csv(ctx):
    ctx.response.headers["Content-Type"] = "text/csv"
    ctx.response.headers["Content-Disposition"] = 'attachment; filename="rows.csv"'
    return "a,b\\n1,2\\n"
"""
JOBS = [
    {"name": "page", "handler": "page", "timeoutSeconds": 10},
    {"name": "data", "handler": "data", "timeoutSeconds": 10},
    {"name": "csv", "handler": "csv", "timeoutSeconds": 10},
]
ROUTES = [
    {"method": "GET", "path": "/page", "job": "page"},
    {"method": "GET", "path": "/html-page", "job": "page", "html": True},
    {"method": "GET", "path": "/data", "job": "data"},
    {"method": "GET", "path": "/rows.csv", "job": "csv"},
]


@pytest.fixture
async def mod(worker: Any, client: httpx.AsyncClient, admin_headers: dict[str, str], tmp_path: Path) -> None:
    await deploy(client, admin_headers, route_module(tmp_path, name=NAME, code=CODE, jobs=JOBS, routes=ROUTES))


def assert_contained(r: httpx.Response, *, download: bool) -> None:
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "sandbox"
    if download:
        assert r.headers["content-disposition"] == "attachment"
    else:
        assert r.headers.get("content-disposition") != "attachment"


async def test_html_with_a_script_is_a_sandboxed_download(mod, client, viewer_headers, settings):
    for path in ("/page", "/html-page"):  # html: true changes nothing while the operator hasn't allowed it
        r = await client.get(f"{BASE}{path}", headers=viewer_headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/html")
        assert r.text == SCRIPT  # the body is the handler's, untouched, but it can't run here
        assert_contained(r, download=True)
    # Other markup a browser renders (and case or parameters) is treated the same.
    for kind in ("image/svg+xml", "application/xhtml+xml", "TEXT/HTML; charset=utf-8", "text/xml", "", "weird"):
        r = await client.get(f"{BASE}/html-page", params={"type": kind}, headers=viewer_headers)
        assert r.status_code == 200, (kind, r.text)
        assert_contained(r, download=True)


async def test_inline_html_needs_the_route_and_the_operator(mod, client, viewer_headers, settings):
    settings.module_routes_allow_html = True
    r = await client.get(f"{BASE}/html-page", headers=viewer_headers)
    assert r.status_code == 200 and r.text == SCRIPT
    assert_contained(r, download=False)  # shown, still sandboxed: an opaque origin, no script runs
    assert r.headers["content-disposition"] == "inline"  # the handler's own, kept
    # The route without html: true stays a download; so does SVG on the html route.
    assert_contained(await client.get(f"{BASE}/page", headers=viewer_headers), download=True)
    r = await client.get(f"{BASE}/html-page", params={"type": "image/svg+xml"}, headers=viewer_headers)
    assert_contained(r, download=True)


async def test_json_and_other_types(mod, client, viewer_headers):
    r = await client.get(f"{BASE}/data", headers=viewer_headers)
    assert r.status_code == 200 and r.json() == {"html": SCRIPT}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "content-disposition" not in r.headers
    r = await client.get(f"{BASE}/rows.csv", headers=viewer_headers)
    assert r.text == "a,b\n1,2\n" and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-security-policy"] == "sandbox" and r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-disposition"] == 'attachment; filename="rows.csv"'  # the handler's own is kept
    # JSON error answers are nosniff too.
    r = await client.get(f"{BASE}/nope", headers=viewer_headers)
    assert r.status_code == 404 and r.headers["x-content-type-options"] == "nosniff"


async def test_html_is_a_manifest_boolean(client, admin_headers):
    manifest = {
        "name": "bad-html",
        "version": "1.0.0",
        "displayName": "x",
        "description": "x",
        "author": "x",
        "jobs": [{"name": "a", "description": "a", "handler": "m:a"}],
        "routes": [{"method": "GET", "path": "/", "job": "a", "html": "yes"}],
    }
    r = await client.post("/api/v1/modules/validate", json=manifest, headers=admin_headers)
    assert r.json()["valid"] is False
    assert r.json()["errors"][0]["path"] == "/routes/0/html"
