"""Liveness, readiness, a health page for people, and the API's index: the only routes (with
login) that need no token. ``/health/live`` stays trivially cheap (no I/O): it is what probes call."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import StateDep
from api.errors import error_body

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

#: When this process started serving (``GET /health`` answers its uptime).
_STARTED = time.monotonic()

CHECK_TIMEOUT = 3.0

#: Dependencies the API can serve without: what stops working while they are down.
DEGRADABLE = {
    "redis": "redis is down: live streams (events, execution logs) are unavailable and login rate limits are "
    "not enforced; events are still stored and still trigger jobs",
}


@router.get("/health/live", summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


async def _check_all(state: Any) -> dict[str, tuple[str | None, float]]:
    """Each dependency: (None or why it is down, milliseconds taken). The routes are public: a
    flood of them must not become a flood of connections, so callers arriving while a check is in
    flight share its answer (one check at a time per process; never an older answer)."""
    flight: asyncio.Task[dict[str, tuple[str | None, float]]] | None = getattr(state, "_health_check", None)
    if flight is None or flight.done():
        flight = asyncio.ensure_future(_check_now(state))
        state._health_check = flight
    return await asyncio.shield(flight)


async def _check_now(state: Any) -> dict[str, tuple[str | None, float]]:
    """Each dependency: (None or why it is down, milliseconds taken), checked at once."""

    async def db() -> None:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        await state.redis.ping()

    async def temporal() -> None:
        from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

        client = await state.temporal()
        await client.workflow_service.get_system_info(GetSystemInfoRequest())

    checks = {"database": db, "redis": redis, "temporal": temporal}

    async def run(name: str) -> tuple[str, tuple[str | None, float]]:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(checks[name](), timeout=CHECK_TIMEOUT)
            error = None
        except Exception as exc:  # noqa: BLE001 - any failure means "down"; the reason is reported
            error = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
        return name, (error, round((time.perf_counter() - started) * 1000, 1))

    results = dict(await asyncio.gather(*(run(n) for n in checks)))
    for name, (err, _) in results.items():
        if err is not None:
            # The reasons go to the log only: they name hosts and users, and these routes are public.
            log.warning("health: %s down: %s", name, err)
    return results


@router.get(
    "/health/ready",
    summary="DB, Redis and Temporal are reachable",
    responses={503: {"description": "Something is down"}},
)
async def ready(state: StateDep) -> Any:
    results = await _check_all(state)
    body: dict[str, Any] = {
        "status": "ok",
        "checks": {n: ("ok" if err is None else "down") for n, (err, _) in results.items()},
    }
    down = [n for n, (err, _) in results.items() if err is not None and n not in DEGRADABLE]
    if down:
        return JSONResponse(
            error_body(
                "unavailable",
                f"not ready: {', '.join(n for n, (err, _) in results.items() if err is not None)} down",
                {"checks": body["checks"]},
            ),
            status_code=503,
        )
    degraded = [DEGRADABLE[n] for n, (err, _) in results.items() if err is not None]
    if degraded:
        # Still ready: events are stored and jobs triggered without Redis; only live features wait.
        body["status"] = "degraded"
        body["degraded"] = degraded
    return body


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autoplat")
    except PackageNotFoundError:
        return "0.0.0"


@router.get("/health", summary="Health for people: version, uptime and each dependency")
async def health(state: StateDep) -> dict[str, Any]:
    """Always 200 (``/health/ready`` is the probe that answers 503): ``status`` is ``ok``,
    ``degraded`` (Redis down: live streams wait) or ``down``; each dependency says ``ok`` or
    ``down`` with how long its check took. Why one is down goes to the log, not to this public page."""
    results = await _check_all(state)
    failing = {n for n, (err, _) in results.items() if err is not None}
    settings = state.settings
    return {
        "status": "down" if failing - DEGRADABLE.keys() else "degraded" if failing else "ok",
        "version": _version(),
        "uptime_seconds": round(time.monotonic() - _STARTED, 1),
        "dev_mode": settings.dev_mode,
        "dependencies": {
            name: {
                "status": "down" if err else "ok",
                "latency_ms": ms,
                **({"impact": DEGRADABLE[name]} if err and name in DEGRADABLE else {}),
            }
            for name, (err, ms) in results.items()
        },
    }


@router.get("/api/v1", summary="The API's index: version and where things are")
@router.get("/api/v1/", include_in_schema=False)
async def index() -> dict[str, Any]:
    """What the README's API link answers: the version and links to the docs, console and health."""
    return {
        "name": "autoplat",
        "version": _version(),
        "links": {
            "docs": "/docs",
            "redoc": "/redoc",
            "openapi": "/openapi.json",
            "console": "/",
            "health": "/health",
            "ready": "/health/ready",
            "login": "/api/v1/auth/login",
        },
        "resources": [
            f"/api/v1/{name}" for name in ("modules", "jobs", "executions", "events", "users", "audit", "auth/me")
        ],
    }
