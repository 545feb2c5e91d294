"""``create_app(settings)``: the FastAPI application factory. Nothing connects at import time."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors, limits
from api.state import AppState
from registry import logformat, metrics, security, tracing
from registry.db import create_engine, create_session_factory, unit_of_work
from registry.ratelimit import LoginLimiter
from registry.services import audit
from registry.services.common import Actor
from registry.settings import Settings

log = logging.getLogger("autoplat.api")

API_PREFIX = "/api/v1"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}

#: Extra routers registered by later capabilities (modules, jobs, executions, events, ...).
RouterHook = Callable[[FastAPI], None]


def _routers() -> list[Any]:
    from api.routes import audit as audit_routes
    from api.routes import auth, users

    routers = [auth.router, users.router, audit_routes.router]
    for name in (
        "modules",
        "jobs",
        "executions",
        "artifacts",
        "events",
        "module_routes",
        "storage",
        "schedule_preview",
        "upcoming_runs",
        "series",
        "workers",
        "alerts",
        "ui",
    ):
        try:
            module = __import__(f"api.routes.{name}", fromlist=["router"])
        except ModuleNotFoundError as exc:
            if exc.name != f"api.routes.{name}":
                raise
            continue
        routers.append(module.router)
    return routers


def app_from_environment() -> FastAPI:
    """The API built from ``AUTOPLAT_*`` settings: the factory ``autoplat api --workers N`` serves."""
    return create_app(Settings())


def create_app(settings: Settings, *, state: AppState | None = None) -> FastAPI:
    """Build the API. Pass ``state`` to share already-open resources (tests, ``autoplat dev``)."""
    settings.check_secure()
    tracing.configure("autoplat-api", on=settings.tracing == "on")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = state is None
        app_state = state or open_state(settings)
        app.state.autoplat = app_state
        metrics.watch_engine(app_state.engine, "api")
        await security.warm_up()
        dispatcher = _event_dispatcher(app_state)
        # POST /events calls notify() on it right after its commit.
        app.state.event_dispatcher = dispatcher
        dispatcher.start()
        app.state.event_ingest = ingest = event_ingest_for(app, app_state)
        try:
            yield
        finally:
            await ingest.close()
            await dispatcher.stop()
            if owned:
                await close_state(app_state)

    app = FastAPI(
        title="autoplat",
        version=_version(),
        description="Self-hosted automation platform: modules, jobs on Temporal, events, HTTP triggers.",
        lifespan=lifespan,
        # /docs and /redoc are served by api.console with local assets (no CDN).
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    errors.install_error_handlers(app)
    _install_middleware(app, settings)

    from api.routes import health
    from api.routes import metrics as metrics_routes

    app.include_router(health.router)
    app.include_router(metrics_routes.router)
    for router in _routers():
        app.include_router(router, prefix=API_PREFIX)
    from api.console import install_console

    # Last: its catch-all route answers only what no API route does.
    install_console(app)
    return app


def _event_dispatcher(state: AppState) -> Any:
    """Dispatches stored events to their jobs in the background (registry/services/dispatch.py)."""
    from registry.services.dispatch import Dispatcher, publish_live, temporal_starter

    async def publish(data: dict[str, Any]) -> None:
        await publish_live(state.redis, state.settings.redis_prefix, data)

    from registry.services.alerts_eval import dispatch_observer

    return Dispatcher(
        sessions=state.sessions,
        start=temporal_starter(state.temporal, state.settings.task_queue),
        publish=publish,
        observe=dispatch_observer(state.temporal, state.settings.task_queue),
    )


def event_ingest_for(app: FastAPI, state: AppState) -> Any:
    """Stores POST /events' new events in shared transactions (registry/services/ingest.py), then
    wakes the app's dispatcher and publishes them live."""
    from registry.services.dispatch import publish_live_many
    from registry.services.ingest import EventIngest

    async def publish(stored: list[dict[str, Any]]) -> None:
        await publish_live_many(state.redis, state.settings.redis_prefix, stored)

    def notify() -> None:
        dispatcher = getattr(app.state, "event_dispatcher", None)
        if dispatcher is not None:
            dispatcher.notify()

    return EventIngest(sessions=state.sessions, publish=publish, notify=notify)


def open_state(settings: Settings) -> AppState:
    engine = create_engine(settings.effective_database_url)
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    return AppState(
        settings=settings,
        engine=engine,
        sessions=create_session_factory(engine),
        redis=redis,
        limiter=LoginLimiter(
            redis,
            max_failures=settings.login_max_failures,
            ip_max_failures=settings.login_ip_max_failures,
            window_seconds=settings.login_window_seconds,
            prefix=settings.redis_prefix,
        ),
    )


async def close_state(state: AppState) -> None:
    await state.redis.aclose()
    await state.engine.dispose()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autoplat")
    except PackageNotFoundError:
        return "0.0.0"


def _install_middleware(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(limits.BodyLimit, settings=settings)  # first: inside request_id, audit and CORS
    app.add_middleware(RequestContext)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "Location"],
        )


class RequestContext:
    """ASGI middleware: the request id (``X-Request-ID``, kept when the client sent a sane one) and
    the audit of refused mutating calls. Plain ASGI, not ``@app.middleware``: every request pays
    for it, and a ``BaseHTTPMiddleware`` costs a task and a stream per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["actor"] = None
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        started = time.perf_counter()
        bound = logformat.bind(request_id=rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logformat.unbind(bound)
            _count_request(scope, status, time.perf_counter() - started)
        # A 503 means a dependency (most often the database) is down: writing its audit row would
        # wait for the same database, once per refused call, just as it comes back.
        if scope["method"] in _MUTATING and 400 <= status != 503 and scope["path"].startswith(API_PREFIX):
            await _audit_failure(Request(scope), status)


def _count_request(scope: Scope, status: int, seconds: float) -> None:
    """API request metrics (registry/metrics.py), labelled by route template, never the raw path."""
    template = route_template(scope)
    method = scope["method"] if scope["method"] in _METHODS else "other"
    metrics.API_REQUESTS.labels(template, method, str(status or 500)).inc()
    metrics.API_REQUEST_DURATION.labels(template, method).observe(seconds)


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def route_template(scope: Scope) -> str:
    """The matched route's template (``/api/v1/jobs/{job_id}``); ``unmatched`` when none matched."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not template:
        return "unmatched"
    if scope["path"].startswith(API_PREFIX) and not template.startswith(API_PREFIX):
        template = API_PREFIX + template
    return str(template)


async def _audit_failure(request: Request, status: int) -> None:
    """Refused mutating calls are audited too, in their own transaction (the request's rolled back)."""
    state: AppState | None = getattr(request.app.state, "autoplat", None)
    if state is None or status == 404 and request.scope.get("route") is None:
        return
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    if not template.startswith(API_PREFIX):
        template = API_PREFIX + template
    actor: Actor | None = request.state.actor
    # Anonymous refusals are not audited (anyone could flood the table); failed logins are.
    if actor is None and not template.startswith(f"{API_PREFIX}/auth/"):
        return
    from api.deps import client_ip

    client = client_ip(request)
    actor = Actor(
        user_id=actor.user_id if actor else None,
        email=actor.email if actor else None,
        role=actor.role if actor else None,
        ip=client,
        request_id=request.state.request_id,
    )
    try:
        async with unit_of_work(state.sessions) as session:
            audit.record(
                session=session,
                actor=actor,
                action=f"{request.method} {template}",
                target_type="request",
                target_id=request.url.path[:200],
                outcome="failure",
                details={"status": status},
            )
    except Exception:  # noqa: BLE001 - auditing a refusal must never turn it into a 500
        log.exception("could not write failure audit row")
