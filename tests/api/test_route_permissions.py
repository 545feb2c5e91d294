"""Walk every operation of the OpenAPI schema: anonymous callers and under-privileged roles are refused,
and every route declares the permission it needs through ``api.deps.require``.

Generic on purpose: routes added by later capabilities are covered without touching this file. A new
public route must be added to ``PUBLIC`` with a reason.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from api.deps import get_principal
from registry.permissions import has_permission

#: Routes that answer without a token, by design.
PUBLIC = {
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/register"),
}
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


def test_the_walk_finds_the_known_routes(client):
    found = {(op.method, op.path) for op in operations(client.app)}
    assert PUBLIC <= found
    assert {
        ("GET", "/api/v1/auth/me"),
        ("GET", "/api/v1/users"),
        ("DELETE", "/api/v1/users/{user_id}"),
        ("GET", "/api/v1/audit"),
    } <= found
    by_key = {(op.method, op.path): op for op in operations(client.app)}
    assert by_key[("GET", "/api/v1/users")].permissions == {"users:read"}
    assert by_key[("PATCH", "/api/v1/users/{user_id}")].permissions == {"users:write"}


def test_every_route_declares_its_permission(client):
    missing = [
        str(op)
        for op in operations(client.app)
        if (op.method, op.path) not in PUBLIC and not op.path.startswith(SELF_SERVICE_PREFIX) and not op.permissions
    ]
    assert missing == [], f"routes without a require(...) permission: {missing}"


def test_every_non_public_route_needs_a_current_user(client):
    unguarded = [
        str(op) for op in operations(client.app) if (op.method, op.path) not in PUBLIC and not op.authenticated
    ]
    assert unguarded == []


def test_public_routes_need_no_permission(client):
    for op in operations(client.app):
        if (op.method, op.path) in PUBLIC:
            assert not op.permissions and not op.authenticated, str(op)


async def test_anonymous_callers_are_refused(client):
    answered = {}
    for op in operations(client.app):
        r = await call(client, op)
        answered[str(op)] = r.status_code
        if (op.method, op.path) in PUBLIC and op.path != "/api/v1/auth/refresh":
            assert r.status_code != 401, (str(op), r.text)
        else:
            assert r.status_code == 401, (str(op), r.status_code, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["WWW-Authenticate"] == "Bearer"
    assert answered["GET /health/live"] == 200
    assert answered["POST /api/v1/auth/refresh"] == 401  # neither a body token nor the cookie
    assert answered["POST /api/v1/auth/login"] == 422


async def test_garbage_tokens_are_refused_everywhere(client):
    for op in operations(client.app):
        if (op.method, op.path) in PUBLIC:
            continue
        r = await call(client, op, {"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401, (str(op), r.text)


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_roles_are_refused_what_they_lack(client, headers_for, role):
    headers = await headers_for(role)
    refused = []
    for op in operations(client.app):
        if op.permissions and not all(has_permission(role, p) for p in op.permissions):
            r = await call(client, op, headers)
            assert r.status_code == 403, (role, str(op), r.status_code, r.text)
            assert r.json()["error"]["code"] == "forbidden"
            assert any(p in r.json()["error"]["message"] for p in op.permissions)  # names what is missing
            refused.append(str(op))
    # Users and audit are admin-only: the walk can't be vacuous.
    assert "GET /api/v1/users" in refused and "GET /api/v1/audit" in refused


def test_admin_holds_every_declared_permission(client):
    for op in operations(client.app):
        assert all(has_permission("admin", p) for p in op.permissions), str(op)
