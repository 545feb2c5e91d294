"""Module HTTP routes: ``/api/v1/m/{module}/{path}`` invokes a job type as a function (docs/routes.md).

Each call: find the module's route table (re-read when the module row changed, so every API
process follows enable / disable / upgrade at once), match method and path (404, 405 with
``Allow``), authenticate (a platform token and the route's role, or the HMAC signature of a public
route), validate query and body (422), seal the body values its schema marks ``"secret": true``
with the module's vault key (so Temporal history and the execution row hold only tokens; the
worker opens them for the handler), then start one execution with trigger ``http``. A sync route
waits for the handler and answers its return value (status and headers from ``ctx.response``); an
async route answers 202 with the execution id and a ``Location`` to poll.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from activities.types import INFRA_ATTEMPTS
from api.deps import client_ip, principal_for, read_body
from api.errors import error_response
from api.state import AppState
from autoplat.vault import KeyVault
from registry import crypto, metrics
from registry.errors import AuthenticationFailed, NotFound, ServiceUnavailable, UpstreamTimeout
from registry.models import Execution, ExecutionStatus, Module
from registry.security import decode_token
from registry.services import modules as module_service
from registry.services import routes, runs
from registry.services.common import Actor

log = logging.getLogger(__name__)

router = APIRouter(prefix="/m", tags=["module routes"])

#: Largest request body a route accepts (it travels through Temporal history, limit 2 MB).
MAX_BODY_BYTES = 1024 * 1024
#: Response headers a handler may not set (the server computes them).
_RESERVED_RESPONSE_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "content-encoding",
        "location",
        "x-execution-id",
        "set-cookie",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")


def _valid_header(name: object, value: object) -> bool:
    """An RFC 7230 token name and a latin-1 value without control characters (no CR/LF injection)."""
    if not isinstance(name, str) or not isinstance(value, str) or not _HEADER_NAME.fullmatch(name):
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return len(value) <= 8192 and not any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value)


def _cache(request: Request, state: AppState) -> routes.RouteCache:
    """One cache per API process (per app), built on first use."""
    cache: routes.RouteCache | None = getattr(request.app.state, "route_cache", None)
    if cache is None:
        secret_key = state.settings.encryption_key()

        def load_config(module: Module) -> dict[str, Any]:
            return module_service.resolved_config(module=module, secret_key=secret_key)

        cache = routes.RouteCache(config_loader=load_config)
        request.app.state.route_cache = cache
    return cache


def _vault(request: Request, state: AppState, module: str) -> KeyVault:
    """The module's vault (its key derived once per API process)."""
    vaults: dict[str, KeyVault] | None = getattr(request.app.state, "route_vaults", None)
    if vaults is None:
        vaults = request.app.state.route_vaults = {}
    vault = vaults.get(module)
    if vault is None:
        vault = vaults[module] = crypto.module_vault(state.settings.encryption_key(), module)
    return vault


async def _caller(request: Request, session: AsyncSession, state: AppState) -> Actor:
    """The platform user behind the bearer token (401 without a valid one)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("missing bearer token")
    claims = decode_token(state.settings, token.strip(), expected_type="access")
    # The token's session must be alive, as on every other route (logout, revocation, role change).
    principal = await principal_for(state, claims)
    actor = Actor(
        user_id=principal.user_id,
        email=principal.email,
        role=principal.role,
        ip=client_ip(request),
        request_id=request.state.request_id,
    )
    request.state.actor = actor
    return actor


def _json(request: Request, raw: bytes) -> Any:
    if not raw.strip():
        return None
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "module routes accept application/json bodies")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "request body is not valid JSON") from exc


def run_timeout(definition: dict[str, Any], module: str, job_type: str) -> timedelta:
    """Bound of a whole route call: every attempt of every step under the job type's policy, plus slack."""
    retries = definition.get("retries") or {}
    attempts = int(retries.get("maxAttempts") or 1) + INFRA_ATTEMPTS
    default = int(definition.get("timeoutSeconds") or 300)
    max_interval = float(retries.get("maximumIntervalSeconds") or 100 * float(retries.get("initialIntervalSeconds", 1)))
    total = 0.0
    for step in runs.steps_of(definition, module, job_type):
        n = int(step["retries"]) + 1 + INFRA_ATTEMPTS if step["retries"] is not None else attempts
        total += (int(step["timeout_seconds"] or default) + 5 + max_interval) * n
    return timedelta(seconds=int(total + 300))


def _location(execution_id: str) -> str:
    return f"/api/v1/executions/{execution_id}"


def _answer(row: Execution, *, route: routes.RouteSpec, html_allowed: bool, wait: float) -> Response:
    """The HTTP answer of a sync call, from the execution as it is after the wait."""
    public = route.public
    location = _location(row.id)
    headers = {"X-Execution-ID": row.id}
    if row.status in (ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value):
        return error_response(
            504,
            UpstreamTimeout.code,
            f"execution {row.id} is still {row.status} after {wait:g}s; it keeps running: poll its Location",
            {"execution_id": row.id, "status": row.status, "location": location},
            {**headers, "Location": location},
        )
    if row.status == ExecutionStatus.COMPLETED.value:
        body, code, extra = routes.route_response(row.result)
        if not 200 <= code <= 599:
            return error_response(
                502, "bad_handler_response", f"the handler set an invalid status {code}", {"execution_id": row.id}
            )
        content_type: str | None = None
        for name, value in extra.items():
            if not _valid_header(name, value):
                return error_response(
                    502,
                    "bad_handler_response",
                    f"the handler set an invalid response header {name[:100]!r}",
                    {"execution_id": row.id},
                )
            lname = name.lower()
            if lname == "content-type":
                content_type = value
            elif lname not in _RESERVED_RESPONSE_HEADERS and lname not in routes.SECURITY_HEADERS:
                headers[name] = value
        safety = routes.safety_headers(route, content_type, html_allowed=html_allowed)
        if "Content-Disposition" in safety:
            headers = {k: v for k, v in headers.items() if k.lower() != "content-disposition"}
        headers.update(safety)
        if code == 204 or code == 304:
            return Response(status_code=code, headers=headers)
        if routes.is_json(routes.media_type(content_type)):
            return JSONResponse(body, status_code=code, headers=headers, media_type=content_type or "application/json")
        # Text the handler returned is sent as is (HTML, CSV, ...); anything else as JSON text.
        raw = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        return Response(raw.encode("utf-8", "replace"), status_code=code, headers=headers, media_type=content_type)
    details: dict[str, Any] = {"execution_id": row.id, "status": row.status, "location": location}
    if not public and row.error:
        # Authenticated callers could read it from the execution anyway; anonymous webhook senders can't.
        details["error"] = {"type": row.error.get("type"), "message": row.error.get("message")}
    headers["Location"] = location
    if row.status == ExecutionStatus.TIMED_OUT.value:
        return error_response(504, "timeout", f"execution {row.id} timed out", details, headers)
    if row.status == ExecutionStatus.SKIPPED.value:
        return error_response(
            503, "unavailable", f"execution {row.id} was skipped: {row.status_reason}", details, headers
        )
    return error_response(502, "execution_failed", f"execution {row.id} ended {row.status}", details, headers)


async def _serve(request: Request, module: str) -> Response:
    state: AppState = request.app.state.autoplat
    method = request.method.upper()
    # Segments from the raw path, so an encoded "/" (%2F) stays inside its parameter.
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    skip = len(routes.split_path(request.scope.get("root_path", ""))) + 4  # [root path], api, v1, m, <module>
    all_parts = [p for p in raw_path.decode("latin-1").split("/") if p]
    if [unquote(p) for p in all_parts[skip - 4 : skip]] != ["api", "v1", "m", module] or any(
        "/" in unquote(p) for p in all_parts[:skip]
    ):
        # The module was taken from the decoded path: an encoded "/" before the route path
        # (/api/v1/m/data-sync%2Fx/admin) must not shift which segments form the route.
        raise NotFound(f"module {module} has no route {raw_path.decode('latin-1')[:200]}")
    raw_parts = all_parts[skip:]
    parts = [unquote(p) for p in raw_parts]
    path = "/" + "/".join(raw_parts)  # as received (percent-encoded): ctx.request.path
    async with state.sessions() as session:
        table = await _cache(request, state).table(session=session, module=module)
        if table is None:
            raise NotFound(f"module {module} is not registered")
        if not table.serving:
            raise ServiceUnavailable(
                f"module {module} is {table.status}; its routes are served only while it is ENABLED",
                details={"module": module, "status": table.status},
            )
        found = table.match(method, parts)
        if found is None:
            allowed = table.allowed_methods(parts)
            if allowed:
                raise HTTPException(status.HTTP_405_METHOD_NOT_ALLOWED, headers={"Allow": ", ".join(allowed)})
            raise NotFound(f"module {module} has no route {path}")
        route = found.route
        if not route.public:
            actor = await _caller(request, session, state)
            routes.check_role(route, actor.role or "")
    raw = await read_body(request, MAX_BODY_BYTES, f"{MAX_BODY_BYTES // 1024} KiB")
    if route.auth is not None:
        signature = routes.verify_signature(route, table, request.headers, raw)
        await routes.refuse_replay(route, module, signature, _remember(state))
    query = routes.query_values(route, table, request.query_params.multi_items())
    body = _json(request, raw)
    routes.check_body(route, table, body)
    body, secret_fields = routes.seal_body(route, body, _vault(request, state, module).seal_now)

    definition = table.jobs.get(route.job) or {}
    runner = await state.runner()
    try:
        execution = await runner.invoke(
            module=module,
            job_type=route.job,
            trigger="http",
            request={
                "method": method,
                "path": path,
                "params": found.params,
                "query": query,
                "headers": routes.handler_headers(request.headers.items()),
                "body": body,
                # Only when there are some: a worker of an earlier version knows no such field.
                **({"secret_fields": secret_fields} if secret_fields else {}),
            },
            timeout=run_timeout(definition, module, route.job),
            plan=table.plan(route.job, heartbeat_timeout_seconds=state.settings.heartbeat_timeout_seconds),
        )
    except Exception:
        if route.auth is not None:
            # Not started (Temporal unreachable, ...): the sender may deliver the same signed request
            # again, and that retry must not be refused as a replay.
            await _forget(state)(f"route-signature:{module}:{signature}")
        raise
    if route.mode == "async":
        location = _location(execution.id)
        return JSONResponse(
            {"execution_id": execution.id, "status": execution.status, "location": location},
            status_code=status.HTTP_202_ACCEPTED,
            headers={"Location": location, "X-Execution-ID": execution.id, "X-Content-Type-Options": "nosniff"},
        )
    wait = route.wait_seconds or state.settings.execute_wait_timeout_seconds
    row = await runner.wait(execution, wait)
    return _answer(row, route=route, html_allowed=state.settings.module_routes_allow_html, wait=wait)


def _forget(state: AppState) -> Any:
    async def forget(key: str) -> None:
        try:
            await state.redis.delete(f"{state.settings.redis_prefix}:{key}")
        except (RedisError, OSError) as exc:
            log.warning("could not forget a route signature, Redis unavailable: %s", exc)

    return forget


def _remember(state: AppState) -> Any:
    async def remember(key: str, ttl: int) -> bool:
        try:
            return bool(await state.redis.set(f"{state.settings.redis_prefix}:{key}", "1", nx=True, ex=ttl))
        except (RedisError, OSError) as exc:
            # The timestamp window still bounds replays; refusing every webhook while Redis is down would not.
            log.warning("route replay check skipped, Redis unavailable: %s", exc)
            return True

    return remember


_METHODS = list(routes.METHODS)


@router.api_route("/{module}", methods=_METHODS, include_in_schema=False)
async def serve_root(request: Request, module: str) -> Response:
    return await _counted(request, module)


@router.api_route("/{module}/{path:path}", methods=_METHODS, include_in_schema=False)
async def serve(request: Request, module: str, path: str) -> Response:
    """Call a module route; see docs/routes.md."""
    del path  # re-read from the raw path, undecoded
    return await _counted(request, module)


async def _counted(request: Request, module: str) -> Response:
    """:func:`_serve` with the route call metrics (an unknown module counts as ``unknown``: the
    label must not take any name a caller sends)."""
    started = metrics.monotonic()
    code = 500
    try:
        response = await _serve(request, module)
        code = response.status_code
        return response
    except Exception as exc:
        from api.errors import status_for
        from registry.errors import DomainError

        code = status_for(exc) if isinstance(exc, DomainError) else getattr(exc, "status_code", 500)
        raise
    finally:
        label = "unknown" if code == 404 else metrics.module_label(module)
        metrics.ROUTE_CALLS.labels(label, str(code)).inc()
        metrics.ROUTE_CALL_DURATION.labels(label).observe(metrics.monotonic() - started)
