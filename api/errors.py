"""One error body for every 4xx/5xx: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from registry import errors as e
from registry.db import is_unavailable

log = logging.getLogger("autoplat.api")

STATUS_BY_ERROR: list[tuple[type[e.DomainError], int]] = [
    (e.NotFound, 404),
    (e.InvalidTransition, 409),
    (e.Conflict, 409),
    (e.InvalidManifest, 422),
    (e.InvalidInput, 422),
    (e.AuthenticationFailed, 401),
    (e.PermissionDenied, 403),
    (e.RateLimited, 429),
    (e.PayloadTooLarge, 413),
    (e.ServiceUnavailable, 503),
    (e.UpstreamTimeout, 504),
]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
    504: "timeout",
}


#: What a 503 asks clients to wait before trying again (seconds).
RETRY_AFTER_SECONDS = 5


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    # nosniff: the message may quote input; a browser must never read the body as anything but JSON.
    return JSONResponse(
        error_body(code, message, details),
        status_code=status,
        headers={**(headers or {}), "X-Content-Type-Options": "nosniff"},
    )


def status_for(exc: e.DomainError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 400


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(e.DomainError)
    async def _domain(request: Request, exc: e.DomainError) -> JSONResponse:
        status = status_for(exc)
        headers: dict[str, str] = {}
        if isinstance(exc, e.RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        if status == 503:
            headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return error_response(status, exc.code, exc.message, exc.details, headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
            for err in exc.errors()
        ]
        # A body that isn't JSON at all is a 400, everything else a 422.
        if any(d["type"] == "json_invalid" for d in details):
            return error_response(400, "bad_request", "request body is not valid JSON", details)
        return error_response(422, "validation_error", "request validation failed", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route for {request.method} {request.url.path}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            message = f"method {request.method} not allowed for {request.url.path}"
            # Starlette names only the methods of the first route matching the path; a path served
            # by several routes (GET and POST /modules) answers them all.
            allowed = _allowed_methods(request)
            if allowed:
                headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
                headers["Allow"] = ", ".join(sorted(allowed))
        details = getattr(exc, "details", None)  # api.limits.BodyTooLarge says which limit
        return error_response(exc.status_code, code, message, details, headers or None)

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        """The registry database down or unreachable: 503, for every request that needs it."""
        if not is_unavailable(exc):
            return await _unexpected(request, exc)
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return error_response(
            503,
            "unavailable",
            "the registry database is unavailable; try again shortly",
            None,
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    # Database errors are handled inside the middleware stack (a handler for Exception runs
    # outside it, after the middleware failed): the response is a normal one.
    for kind in (sa_exc.DBAPIError, sa_exc.DisconnectionError, sa_exc.TimeoutError):
        app.add_exception_handler(kind, _database)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The id the request middleware validated (or generated), never the raw header: the
        # middleware doesn't see this response, so echo the id here.
        request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
        log.exception("unhandled error on %s %s (request %s)", request.method, request.url.path, request_id)
        return error_response(
            500,
            "internal_error",
            "internal server error",
            {"request_id": request_id},
            {"X-Request-ID": request_id},
        )


def _allowed_methods(request: Request) -> set[str]:
    """Every method some route of the app serves on this path (module routes answer their own 405)."""
    if request.url.path.startswith("/api/v1/m/"):
        return set()
    scope = {**request.scope, "type": "http"}
    allowed: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        matched, _ = route.matches(scope)
        if matched is not Match.NONE and route.methods:
            allowed |= set(route.methods)
    return allowed
