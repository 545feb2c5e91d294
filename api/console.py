"""The web console and the API docs, served by the API itself from local files (design decision 13).

The console is a single-page app built from ``web/`` into ``api/console_dist/`` (shipped in the
wheel). Any GET outside the API's own prefixes answers a file of the build or, for a deep link such
as ``/executions/<id>``, ``index.html``, so the browser's router takes over. Hashed files under
``/assets/`` never change and are cached for a year; ``index.html`` is revalidated on every load so a
new build is picked up at once. ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from the same
build (copied from npm packages at build time): nothing comes from a CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Match, Route
from starlette.types import Scope

from registry.errors import NotFound

CONSOLE_DIR = Path(__file__).resolve().parent / "console_dist"

#: Paths the console never answers: they belong to the API, whatever the router says.
RESERVED = ("api", "health", "docs", "redoc", "openapi.json", "metrics")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
#: The console's own policy. ``unsafe-eval``: the form validator (ajv) compiles JSON Schemas to
#: functions; inline styles: the chart library sizes its canvas with them.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
)
NOT_BUILT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>autoplat</title></head>
<body><main><h1>The autoplat console is not built</h1>
<p>The API is running (<a href="/docs">/docs</a>, <code>/api/v1</code>). To build the console,
run <code>./run.sh</code> (it builds <code>web/</code> with Node 20 or newer), or
<code>npm --prefix web ci &amp;&amp; npm --prefix web run build</code>.</p></main></body></html>"""


def install_console(app: FastAPI, *, directory: Path = CONSOLE_DIR, openapi_url: str = "/openapi.json") -> None:
    """Add ``/docs``, ``/redoc`` and the console's catch-all route. Call after every API router."""
    root = directory.resolve()
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url="/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/favicon.svg",
            # No validator badge: it would send the spec's URL to validator.swagger.io.
            swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url="/vendor/redoc/redoc.standalone.js",
            redoc_favicon_url="/favicon.svg",
            with_google_fonts=False,
        )

    async def console(request: Request) -> Response:
        path: str = request.path_params["path"]
        first = path.split("/", 1)[0]
        index = root / "index.html"
        if path:
            candidate = (root / path).resolve()
            if candidate.is_relative_to(root) and candidate.is_file():
                cache = IMMUTABLE if path.startswith("assets/") else REVALIDATE
                return FileResponse(candidate, headers={"Cache-Control": cache})
            # A missing build file is a 404, not the app: a stale page must not get HTML as its script.
            if first in ("assets", "vendor") or "." in path.rsplit("/", 1)[-1]:
                raise NotFound(f"no file {request.url.path}")
        if not index.is_file():
            return HTMLResponse(NOT_BUILT, status_code=503, headers={"Cache-Control": REVALIDATE})
        return FileResponse(
            index,
            media_type="text/html",
            headers={"Cache-Control": REVALIDATE, "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
        )

    app.router.routes.append(_ConsoleRoute("/{path:path}", console, methods=["GET", "HEAD"], include_in_schema=False))


class _ConsoleRoute(Route):
    """Matches only what the console may answer: GET/HEAD outside the API's prefixes. Anything else
    falls through untouched, so an unknown API path stays a 404 and a wrong method a 405."""

    def matches(self, scope: Scope) -> tuple[Match, Any]:
        match, child = super().matches(scope)
        if match is Match.NONE:
            return match, child
        first = str(child.get("path_params", {}).get("path", "")).split("/", 1)[0]
        if scope.get("method") not in ("GET", "HEAD") or first in RESERVED:
            return Match.NONE, {}
        return match, child
