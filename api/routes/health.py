"""Liveness and readiness. The only routes (with login) that need no token."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import StateDep
from api.errors import error_body

log = logging.getLogger(__name__)

router = APIRouter(prefix="/health", tags=["health"])

CHECK_TIMEOUT = 3.0

#: Dependencies the API can serve without: what stops working while they are down.
DEGRADABLE = {
    "redis": "redis is down: live streams (events, execution logs) are unavailable and login rate limits are "
    "not enforced; events are still stored and still trigger jobs",
}


@router.get("/live", summary="The process is up")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready", summary="DB, Redis and Temporal are reachable", responses={503: {"description": "Something is down"}}
)
async def ready(state: StateDep) -> Any:
    async def db() -> None:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        await state.redis.ping()

    async def temporal() -> None:
        client = await state.temporal()
        await client.workflow_service.get_system_info(
            __import__("temporalio.api.workflowservice.v1", fromlist=["GetSystemInfoRequest"]).GetSystemInfoRequest()
        )

    checks = {"database": db, "redis": redis, "temporal": temporal}

    async def run(name: str) -> tuple[str, str | None]:
        try:
            await asyncio.wait_for(checks[name](), timeout=CHECK_TIMEOUT)
            return name, None
        except Exception as exc:  # noqa: BLE001 - any failure means "down"; the reason is reported
            return name, f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__

    results = dict(await asyncio.gather(*(run(n) for n in checks)))
    body: dict[str, Any] = {
        "status": "ok",
        "checks": {n: ("ok" if err is None else "down") for n, err in results.items()},
    }
    for name, err in results.items():
        if err is not None:
            # The reasons go to the log only: they name hosts and users, and this route is public.
            log.warning("readiness: %s down: %s", name, err)
    down = [n for n, err in results.items() if err is not None and n not in DEGRADABLE]
    if down:
        return JSONResponse(
            error_body(
                "unavailable",
                f"not ready: {', '.join(n for n, err in results.items() if err is not None)} down",
                {"checks": body["checks"]},
            ),
            status_code=503,
        )
    degraded = [DEGRADABLE[n] for n, err in results.items() if err is not None]
    if degraded:
        # Still ready: events are stored and jobs triggered without Redis; only live features wait.
        body["status"] = "degraded"
        body["degraded"] = degraded
    return body
