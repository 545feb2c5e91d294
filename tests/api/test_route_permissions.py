"""Who may call what: the expected policy written down as its own table (role × route → allowed), checked
with real calls for admin, operator, viewer and anonymous, apart from what each route declares.

A route that declares the wrong permission fails here (the table says otherwise), and so does a route
missing from the table: adding a route means deciding who may call it, in this file. The generic walks
below (every route declares a permission, every non-public route needs a token) stay as a second net.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from api.deps import get_principal

ADMIN_ROLE, OPERATOR_ROLE, VIEWER_ROLE = "admin", "operator", "viewer"
EVERYONE = frozenset({ADMIN_ROLE, OPERATOR_ROLE, VIEWER_ROLE})
STAFF = frozenset({ADMIN_ROLE, OPERATOR_ROLE})
ADMIN = frozenset({ADMIN_ROLE})
PUBLIC = "public"  # no token needed
ANONYMOUS = "anonymous"

#: The expected policy (DESIGN.md §9, docs/api.md "Roles and permissions", issue 13 §2: installing code is
#: admin-only; operators configure, run and disable).
POLICY: dict[tuple[str, str], frozenset[str] | str] = {
    ("GET", "/health/live"): PUBLIC,
    ("GET", "/health/ready"): PUBLIC,
    ("GET", "/health"): PUBLIC,  # for people: version, uptime, each dependency ok/down (no reasons)
    ("GET", "/api/v1"): PUBLIC,  # the API's index: version and links
    # auth: the public doors, and self-service for every signed-in user
    ("POST", "/api/v1/auth/login"): PUBLIC,
    ("POST", "/api/v1/auth/refresh"): PUBLIC,
    ("POST", "/api/v1/auth/register"): PUBLIC,
    ("POST", "/api/v1/auth/logout"): EVERYONE,
    ("GET", "/api/v1/auth/me"): EVERYONE,
    ("PUT", "/api/v1/auth/me/password"): EVERYONE,
    # users and the audit log: admins only
    ("GET", "/api/v1/users"): ADMIN,
    ("POST", "/api/v1/users"): ADMIN,
    ("GET", "/api/v1/users/{user_id}"): ADMIN,
    ("PATCH", "/api/v1/users/{user_id}"): ADMIN,
    ("DELETE", "/api/v1/users/{user_id}"): ADMIN,
    ("POST", "/api/v1/users/{user_id}/revoke-sessions"): ADMIN,
    ("GET", "/api/v1/audit"): ADMIN,
    # modules: everyone reads; operators configure and disable; only admins bring code in
    ("GET", "/api/v1/modules"): EVERYONE,
    ("GET", "/api/v1/modules/manifest-schema"): EVERYONE,
    ("POST", "/api/v1/modules/validate"): EVERYONE,  # a manifest check, no code runs
    ("GET", "/api/v1/modules/{name}"): EVERYONE,
    ("GET", "/api/v1/modules/{name}/versions"): EVERYONE,
    ("GET", "/api/v1/modules/{name}/job-types"): EVERYONE,
    ("GET", "/api/v1/modules/{name}/config"): EVERYONE,
    ("PUT", "/api/v1/modules/{name}/config"): STAFF,
    ("POST", "/api/v1/modules/{name}/disable"): STAFF,
    ("GET", "/api/v1/modules/{name}/storage"): STAFF,
    ("GET", "/api/v1/modules/{name}/storage/{key}"): STAFF,
    # time series: every role reads (series:read); modules write them from their jobs only
    ("GET", "/api/v1/series"): EVERYONE,
    ("GET", "/api/v1/series/query"): EVERYONE,
    ("GET", "/api/v1/ui/pages"): EVERYONE,
    ("GET", "/api/v1/ui/modules/{name}/pages/{page}"): EVERYONE,
    # alerting: every role reads rules and incidents (alerts:read); operators and admins write rules
    # and acknowledge / resolve / dismiss incidents (alerts:write)
    ("GET", "/api/v1/alerts/rules"): EVERYONE,
    ("POST", "/api/v1/alerts/rules"): STAFF,
    ("POST", "/api/v1/alerts/rules/preview"): EVERYONE,
    ("GET", "/api/v1/alerts/rules/{rule_id}"): EVERYONE,
    ("PATCH", "/api/v1/alerts/rules/{rule_id}"): STAFF,
    ("DELETE", "/api/v1/alerts/rules/{rule_id}"): STAFF,
    ("POST", "/api/v1/alerts/rules/{rule_id}/reset"): STAFF,
    ("GET", "/api/v1/alerts/incidents"): EVERYONE,
    ("GET", "/api/v1/alerts/incidents/counts"): EVERYONE,
    ("GET", "/api/v1/alerts/incidents/{incident_id}"): EVERYONE,
    ("POST", "/api/v1/alerts/incidents/{incident_id}/acknowledge"): STAFF,
    ("POST", "/api/v1/alerts/incidents/{incident_id}/resolve"): STAFF,
    ("POST", "/api/v1/alerts/incidents/{incident_id}/dismiss"): STAFF,
    ("POST", "/api/v1/modules"): ADMIN,
    ("POST", "/api/v1/modules/{name}/install"): ADMIN,
    ("POST", "/api/v1/modules/{name}/enable"): ADMIN,
    ("POST", "/api/v1/modules/{name}/upgrade"): ADMIN,
    ("POST", "/api/v1/modules/{name}/uninstall"): ADMIN,
    ("DELETE", "/api/v1/modules/{name}"): ADMIN,
    # jobs: everyone reads; operators change and run
    ("GET", "/api/v1/jobs"): EVERYONE,
    ("GET", "/api/v1/jobs/{job_id}"): EVERYONE,
    ("GET", "/api/v1/jobs/{job_id}/executions"): EVERYONE,
    ("GET", "/api/v1/schedule-preview"): EVERYONE,  # the console's cron preview
    ("GET", "/api/v1/upcoming-runs"): EVERYONE,  # the console's next scheduled runs
    ("POST", "/api/v1/jobs"): STAFF,
    ("PATCH", "/api/v1/jobs/{job_id}"): STAFF,
    ("DELETE", "/api/v1/jobs/{job_id}"): STAFF,
    ("POST", "/api/v1/jobs/{job_id}/enable"): STAFF,
    ("POST", "/api/v1/jobs/{job_id}/disable"): STAFF,
    ("POST", "/api/v1/jobs/{job_id}/pause"): STAFF,
    ("POST", "/api/v1/jobs/{job_id}/resume"): STAFF,
    ("GET", "/api/v1/jobs/{job_id}/slots"): EVERYONE,
    ("POST", "/api/v1/jobs/{job_id}/backfill"): STAFF,
    ("GET", "/api/v1/jobs/{job_id}/backfills/{backfill_id}"): EVERYONE,
    ("POST", "/api/v1/jobs/{job_id}/backfills/{backfill_id}/cancel"): STAFF,
    ("POST", "/api/v1/jobs/{job_id}/execute"): STAFF,
    ("GET", "/api/v1/jobs/{job_id}/state"): STAFF,  # module data, like a module's storage
    # executions: everyone reads; operators cancel and retry
    ("GET", "/api/v1/executions"): EVERYONE,
    ("GET", "/api/v1/executions/stats"): EVERYONE,
    ("GET", "/api/v1/executions/{execution_id}"): EVERYONE,
    ("GET", "/api/v1/workers"): EVERYONE,  # workers polling the task queues (issue 19)
    ("GET", "/api/v1/executions/{execution_id}/logs"): EVERYONE,
    ("GET", "/api/v1/executions/{execution_id}/logs/stream"): EVERYONE,
    ("GET", "/api/v1/executions/{execution_id}/artifacts"): EVERYONE,
    ("GET", "/api/v1/executions/{execution_id}/artifacts/{name}"): EVERYONE,
    ("POST", "/api/v1/executions/{execution_id}/cancel"): STAFF,
    ("POST", "/api/v1/executions/{execution_id}/retry"): STAFF,
    ("DELETE", "/api/v1/executions/{execution_id}"): ADMIN,  # deleting history: admins only, audited
    # events: everyone reads; operators send and prune
    ("GET", "/api/v1/events"): EVERYONE,
    ("GET", "/api/v1/events/recent"): EVERYONE,
    ("GET", "/api/v1/events/stats"): EVERYONE,
    ("GET", "/api/v1/events/stream"): EVERYONE,
    ("GET", "/api/v1/events/subscriptions"): EVERYONE,
    ("GET", "/api/v1/events/{event_id}"): EVERYONE,
    ("POST", "/api/v1/events"): STAFF,
    ("DELETE", "/api/v1/events"): STAFF,
}

#: Routes outside the OpenAPI document, and why the table's real calls leave them out.
HIDDEN: dict[tuple[str, str], str] = {
    ("GET", "/openapi.json"): "public: the API's own description",
    ("GET", "/docs"): "public: static Swagger UI page (the calls it makes carry the token)",
    ("GET", "/redoc"): "public: static ReDoc page",
    ("GET", "/api/v1/"): "public: the API's index (GET /api/v1) with a trailing slash",
    ("GET", "/{path}"): "public: the console's static files and SPA shell (tests/console)",
    ("HEAD", "/{path}"): "public: the console's static files",
    ("HEAD", "/openapi.json"): "public: the API's own description",
    ("GET", "/metrics"): "guarded by AUTOPLAT_METRICS / AUTOPLAT_METRICS_TOKEN, not user roles (tests/observability)",
    **{
        (method, path): "module routes: the role each route declares in its manifest (tests/routes)"
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        for path in ("/api/v1/m/{module}", "/api/v1/m/{module}/{path}")
    },
}

PUBLIC_ROUTES = {key for key, who in POLICY.items() if who == PUBLIC}
#: Routes that need a valid token but no permission: every user manages their own session.
SELF_SERVICE_PREFIX = "/api/v1/auth/"
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    permissions: frozenset[str]
    authenticated: bool

    def url(self) -> str:
        return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _walk(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _walk(sub)


def operations(app: FastAPI) -> list[Operation]:
    """Every (method, path) of the OpenAPI schema, with what its dependency tree requires.

    FastAPI 0.165 keeps included routers as ``_IncludedRouter`` entries in ``app.routes``;
    ``iter_route_contexts`` flattens them into the effective routes (full path, router dependencies).
    """
    routes: dict[tuple[str, str], Any] = {}
    for ctx in iter_route_contexts(app.routes):
        if isinstance(ctx.original_route, APIRoute):
            for method in ctx.methods:
                routes[(method, ctx.path_format)] = ctx
    ops = []
    for path, item in app.openapi()["paths"].items():
        for method in item.keys() & HTTP_METHODS:
            ctx = routes[(method.upper(), path)]  # a KeyError here means the walk missed a route
            calls = list(_walk(ctx.dependant))
            ops.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    permissions=frozenset(c.permission for c in calls if getattr(c, "permission", None)),
                    authenticated=get_principal in calls,
                )
            )
    return sorted(ops, key=lambda op: (op.path, op.method))


async def call(client, op: Operation, headers: dict[str, str] | None = None):
    body = {} if op.method in BODY_METHODS else None
    return await client.request(op.method, op.url(), json=body, headers=headers or {})


def hidden_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route that is not in the OpenAPI document."""
    documented = {(op.method, op.path) for op in operations(app)}
    found = set()
    for ctx in iter_route_contexts(app.routes):
        for method in getattr(ctx, "methods", None) or ():
            if (method, ctx.path_format) not in documented:
                found.add((method, ctx.path_format))
    return found


# --- the policy table ---------------------------------------------------------------------------------------


def test_every_route_is_in_the_policy_table(client):
    found = {(op.method, op.path) for op in operations(client.app)}
    missing = sorted(found - POLICY.keys())
    assert missing == [], f"routes missing from POLICY (decide who may call them): {missing}"
    stale = sorted(POLICY.keys() - found)
    assert stale == [], f"POLICY names routes the API no longer has: {stale}"
    hidden = hidden_routes(client.app)
    assert sorted(hidden - HIDDEN.keys()) == [], "undocumented routes missing from HIDDEN"
    assert sorted(HIDDEN.keys() - hidden) == [], "HIDDEN names routes the API no longer has"


def _url(path: str) -> str:
    # Ids are fresh UUIDs; other parameters a plausible name. Nothing exists: allowed calls end in 404 / 422.
    return re.sub(r"\{([^}]+)\}", lambda m: str(uuid.uuid4()) if m.group(1).endswith("id") else "policy-probe", path)


def _is_error_body(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == {"error"}
        and set(body["error"]) == {"code", "message", "details"}
        and isinstance(body["error"]["message"], str)
    )


@pytest.mark.parametrize("caller", [ADMIN_ROLE, OPERATOR_ROLE, VIEWER_ROLE, ANONYMOUS])
async def test_each_role_is_allowed_and_refused_what_the_table_says(server, client, make_user, login, caller):
    """Real calls (a real HTTP server: streams answer their status without being read to the end).

    Allowed: anything but 401/403 (most calls end in 404 or 422: nothing exists, bodies are empty).
    Refused: 401 for anonymous callers, 403 for roles, each with the standard error body.
    """
    user = await make_user(caller if caller != ANONYMOUS else VIEWER_ROLE)
    headers = {} if caller == ANONYMOUS else {"Authorization": f"Bearer {(await login(user.email))['access_token']}"}
    ops = sorted(operations(client.app), key=lambda op: op.path == "/api/v1/auth/logout")  # logout ends the session
    wrong: list[str] = []
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        for op in ops:
            rule = POLICY[(op.method, op.path)]
            allowed = rule == PUBLIC or caller in rule
            body: Any = {} if op.method in BODY_METHODS else None
            if op.path == "/api/v1/auth/refresh":
                body = {"refresh_token": (await login(user.email))["refresh_token"]}
            call_headers = dict(headers)
            if op.path.endswith("/stream"):
                call_headers["Last-Event-ID"] = "0"
            async with http.stream(op.method, _url(op.path), json=body, headers=call_headers) as r:
                status = r.status_code
                answer = None
                if status in (401, 403):
                    await r.aread()
                    answer = r.json()
            if allowed and status in (401, 403):
                wrong.append(f"{caller} refused {status} on {op}: {answer}")
            elif not allowed:
                expected = 401 if caller == ANONYMOUS else 403
                if status != expected or not _is_error_body(answer):
                    wrong.append(f"{caller} should get {expected} on {op}, got {status}: {answer}")
                elif expected == 403 and answer["error"]["code"] != "forbidden":
                    wrong.append(f"{caller} on {op}: error code {answer['error']['code']}")
                elif expected == 401 and answer["error"]["code"] != "unauthorized":
                    wrong.append(f"{caller} on {op}: error code {answer['error']['code']}")
    assert wrong == [], "\n".join(wrong)


def test_the_table_is_not_vacuous():
    by_rule = {rule if isinstance(rule, str) else tuple(sorted(rule)) for rule in POLICY.values()}
    assert {PUBLIC, (ADMIN_ROLE,), (ADMIN_ROLE, OPERATOR_ROLE), (ADMIN_ROLE, OPERATOR_ROLE, VIEWER_ROLE)} <= by_rule


# --- the generic walks: every route declares a permission and needs a token ------------------------------


def test_every_route_declares_its_permission(client):
    missing = [
        str(op)
        for op in operations(client.app)
        if (op.method, op.path) not in PUBLIC_ROUTES
        and not op.path.startswith(SELF_SERVICE_PREFIX)
        and not op.permissions
    ]
    assert missing == [], f"routes without a require(...) permission: {missing}"


def test_every_non_public_route_needs_a_session(client):
    unguarded = [
        str(op) for op in operations(client.app) if (op.method, op.path) not in PUBLIC_ROUTES and not op.authenticated
    ]
    assert unguarded == []


def test_public_routes_need_no_permission(client):
    for op in operations(client.app):
        if (op.method, op.path) in PUBLIC_ROUTES:
            assert not op.permissions and not op.authenticated, str(op)


async def test_anonymous_refusals_carry_the_bearer_challenge(client):
    for op in operations(client.app):
        if (op.method, op.path) in PUBLIC_ROUTES:
            continue
        r = await call(client, op)
        assert r.status_code == 401, (str(op), r.status_code, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_garbage_tokens_are_refused_everywhere(client):
    for op in operations(client.app):
        if (op.method, op.path) in PUBLIC_ROUTES:
            continue
        r = await call(client, op, {"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401, (str(op), r.text)
