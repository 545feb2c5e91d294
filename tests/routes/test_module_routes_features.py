"""Module routes beyond the seed: path params, query/body validation, roles, status and headers set by
the handler, async mode, sync timeout (504 naming a still-running execution), handler failures, and
routes following enable / disable / upgrade on a second API process without a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import api_client, eventually
from tests.routes.route_helpers import MODULES, deploy, route_module

NAME = "route-mod"
BASE = f"/api/v1/m/{NAME}"

CODE = """
import asyncio
from autoplat import JobError

def item(ctx):
    r = ctx.request
    return {"params": r.params, "query": r.query, "path": r.path, "method": r.method}

def new_item(ctx):
    return {"literal": True, "path": ctx.request.path}

def create(ctx):
    ctx.response.status = 201
    ctx.response.headers["X-Created"] = ctx.request.body["name"]
    ctx.response.headers["Content-Length"] = "1"  # reserved: the server computes it
    return {"created": ctx.request.body, "authorization": ctx.request.headers.get("authorization"),
            "custom": ctx.request.headers.get("x-custom")}

async def slow(ctx):
    await asyncio.sleep(float(ctx.request.query.get("seconds", 3)))
    return {"slept": True}

def boom(ctx):
    raise JobError("no luck today")

def admin_only(ctx):
    return {"deleted": ctx.request.params["item_id"]}

def background(ctx):
    return {"done": ctx.request.body}

def nothing(ctx):
    ctx.response.status = 204

def weird(ctx):
    ctx.response.status = 99
    return {}

def bad_header(ctx):
    ctx.response.headers["X-Injected"] = "a\\r\\nSet-Cookie: evil=1"
    return {}

def parse(ctx):
    return {"n": int(ctx.request.params["n"])}

def double(ctx, previous):
    ctx.response.headers["X-Step"] = "double"
    return {"doubled": previous["n"] * 2, "saw": previous}
"""

JOBS = [
    {"name": "item", "handler": "item", "timeoutSeconds": 10},
    {"name": "new-item", "handler": "new_item", "timeoutSeconds": 10},
    {"name": "create", "handler": "create", "timeoutSeconds": 10},
    {"name": "slow", "handler": "slow", "timeoutSeconds": 30},
    {"name": "boom", "handler": "boom", "timeoutSeconds": 10},
    {"name": "admin-only", "handler": "admin_only", "timeoutSeconds": 10},
    {"name": "background", "handler": "background", "timeoutSeconds": 10},
    {"name": "nothing", "handler": "nothing", "timeoutSeconds": 10},
    {"name": "weird", "handler": "weird", "timeoutSeconds": 10},
    {"name": "bad-header", "handler": "bad_header", "timeoutSeconds": 10},
    {
        "name": "pipeline",
        "timeoutSeconds": 10,
        "steps": [{"name": "parse", "handler": "parse"}, {"name": "double", "handler": "double"}],
    },
]

QUERY = {
    "type": "object",
    "properties": {
        "limit": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
        "verbose": {"type": "boolean"},
    },
}

ROUTES = [
    {"method": "GET", "path": "/", "job": "new-item"},
    {"method": "GET", "path": "/items/{item_id}/notes/{note}", "job": "item", "querySchema": QUERY},
    {"method": "GET", "path": "/items/new", "job": "new-item"},
    {"method": "GET", "path": "/items/{item_id}", "job": "item"},
    {"method": "DELETE", "path": "/items/{item_id}", "job": "admin-only", "permission": "admin"},
    {
        "method": "POST",
        "path": "/items",
        "job": "create",
        "bodySchema": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}},
        },
    },
    # 2 s: the step must have started (RUNNING) when the wait ends, also on a loaded box.
    {"method": "GET", "path": "/slow", "job": "slow", "waitSeconds": 2},
    {"method": "GET", "path": "/boom", "job": "boom"},
    {"method": "POST", "path": "/jobs", "job": "background", "mode": "async"},
    {"method": "GET", "path": "/nothing", "job": "nothing"},
    {"method": "GET", "path": "/weird", "job": "weird"},
    {"method": "GET", "path": "/double/{n}", "job": "pipeline"},
    {"method": "GET", "path": "/bad-header", "job": "bad-header"},
]


@pytest.fixture
async def mod(worker: Any, client: httpx.AsyncClient, admin_headers: dict[str, str], tmp_path: Path) -> None:
    await deploy(client, admin_headers, route_module(tmp_path, name=NAME, code=CODE, jobs=JOBS, routes=ROUTES))


async def _final(client: httpx.AsyncClient, headers: dict[str, str], execution_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        row: dict[str, Any] = (await client.get(f"/api/v1/executions/{execution_id}", headers=headers)).json()
        return row if row["status"] not in ("PENDING", "RUNNING") else None

    return await eventually(probe, what=f"execution {execution_id} to end")


async def test_path_params_and_typed_query_reach_the_handler(mod, client, viewer_headers):
    r = await client.get(
        f"{BASE}/items/a%2Fb/notes/x%20y?limit=5&tags=red&tags=blue&verbose=true", headers=viewer_headers
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "params": {"item_id": "a/b", "note": "x y"},
        "query": {"limit": 5, "tags": ["red", "blue"], "verbose": True},
        "path": "/items/a%2Fb/notes/x%20y",
        "method": "GET",
    }


async def test_a_literal_segment_wins_over_a_parameter(mod, client, viewer_headers):
    assert (await client.get(f"{BASE}/items/new", headers=viewer_headers)).json()["literal"] is True
    assert (await client.get(f"{BASE}/items/42", headers=viewer_headers)).json()["params"] == {"item_id": "42"}
    root = await client.get(BASE, headers=viewer_headers)
    assert root.status_code == 200 and root.json() == {"literal": True, "path": "/"}


async def test_query_and_body_validation(mod, client, operator_headers):
    for bad in ("limit=0", "limit=abc"):
        r = await client.get(f"{BASE}/items/1/notes/2?{bad}", headers=operator_headers)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"
        assert r.json()["error"]["details"][0]["loc"] == ["query", "limit"]
    r = await client.post(f"{BASE}/items", json={"other": 1}, headers=operator_headers)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["loc"] == ["body"] and "name" in r.json()["error"]["details"][0]["msg"]
    r = await client.post(f"{BASE}/items", json={"name": ""}, headers=operator_headers)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == ["body", "name"]
    r = await client.post(f"{BASE}/items", headers=operator_headers)
    assert r.status_code == 422  # no body at all: null is not an object
    r = await client.post(
        f"{BASE}/items", content=b"{not json", headers={**operator_headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    r = await client.post(
        f"{BASE}/items", content=b"name=x", headers={**operator_headers, "Content-Type": "text/plain"}
    )
    assert r.status_code == 415
    r = await client.post(
        f"{BASE}/items",
        content=b'{"name": "' + b"x" * (1024 * 1024) + b'"}',
        headers={**operator_headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 413


async def test_handler_sets_status_and_headers_and_never_sees_the_token(mod, client, operator_headers):
    r = await client.post(f"{BASE}/items", json={"name": "widget"}, headers={**operator_headers, "X-Custom": "yes"})
    assert r.status_code == 201, r.text
    assert r.headers["X-Created"] == "widget"
    assert r.headers["Content-Length"] == str(len(r.content))
    assert r.json() == {"created": {"name": "widget"}, "authorization": None, "custom": "yes"}
    r = await client.get(f"{BASE}/nothing", headers=operator_headers)
    assert r.status_code == 204 and r.content == b""


async def test_per_route_permissions(mod, client, viewer_headers, operator_headers, admin_headers):
    assert (await client.get(f"{BASE}/items/1", headers=viewer_headers)).status_code == 200
    r = await client.post(f"{BASE}/items", json={"name": "x"}, headers=viewer_headers)
    assert r.status_code == 403
    r = await client.delete(f"{BASE}/items/1", headers=operator_headers)
    assert r.status_code == 403 and r.json()["error"]["details"] == {"required_role": "admin"}
    r = await client.delete(f"{BASE}/items/7", headers=admin_headers)
    assert r.status_code == 200 and r.json() == {"deleted": "7"}
    r = await client.put(f"{BASE}/items/7", headers=admin_headers)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, DELETE"


async def test_async_route_answers_202_and_the_execution_can_be_polled(mod, client, operator_headers):
    r = await client.post(f"{BASE}/jobs", json={"n": 1}, headers=operator_headers)
    assert r.status_code == 202, r.text
    call = r.json()
    assert call["status"] == "PENDING" and r.headers["Location"] == call["location"]
    row = await _final(client, operator_headers, call["execution_id"])
    assert row["status"] == "COMPLETED" and row["trigger"] == "http"
    assert row["result"]["body"] == {"done": {"n": 1}}


async def test_sync_call_outliving_its_wait_is_a_504_naming_the_running_execution(mod, client, viewer_headers):
    r = await client.get(f"{BASE}/slow", params={"seconds": "4"}, headers=viewer_headers)
    assert r.status_code == 504, r.text
    error = r.json()["error"]
    execution_id = error["details"]["execution_id"]
    assert error["code"] == "timeout" and execution_id in error["message"]
    assert error["details"]["status"] == "RUNNING"
    assert error["details"]["location"] == r.headers["Location"] == f"/api/v1/executions/{execution_id}"
    assert r.headers["X-Execution-ID"] == execution_id
    row = await _final(client, viewer_headers, execution_id)
    assert row["status"] == "COMPLETED" and row["result"]["body"] == {"slept": True}


async def test_a_failing_handler_is_a_502_naming_the_execution(mod, client, viewer_headers):
    r = await client.get(f"{BASE}/boom", headers=viewer_headers)
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "execution_failed"
    assert error["details"]["status"] == "FAILED"
    assert error["details"]["error"] == {"type": "JobError", "message": "no luck today"}
    assert r.headers["Location"] == f"/api/v1/executions/{error['details']['execution_id']}"
    r = await client.get(f"{BASE}/weird", headers=viewer_headers)
    assert r.status_code == 502 and r.json()["error"]["code"] == "bad_handler_response"


# --- live routing across API processes ----------------------------------------------------------------

V1 = """
def common(ctx):
    return {"version": ctx.module_version}

def only_v1(ctx):
    return {"only": 1}
"""
V2 = """
def common(ctx):
    return {"version": ctx.module_version}

def only_v2(ctx):
    return {"only": 2}
"""


@pytest.fixture
async def second_api(temporal_settings: Any, engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Another API process: its own app, DB pool, Redis client and route cache."""
    async with api_client(temporal_settings, base_url="http://api-b") as c:
        yield c


async def test_routes_follow_lifecycle_changes_on_another_api_process(
    worker, client, second_api, admin_headers, viewer_headers, tmp_path
):
    name = "live-mod"
    base = f"/api/v1/m/{name}"
    jobs = [{"name": "common", "handler": "common"}, {"name": "only-v1", "handler": "only_v1"}]
    routes = [{"method": "GET", "path": "/common", "job": "common"}, {"method": "GET", "path": "/v1", "job": "only-v1"}]
    await deploy(client, admin_headers, route_module(tmp_path, name=name, code=V1, jobs=jobs, routes=routes))

    r = await second_api.get(f"{base}/common", headers=viewer_headers)  # B caches v1's routes
    assert r.status_code == 200 and r.json() == {"version": "1.0.0"}
    assert (await second_api.get(f"{base}/v2", headers=viewer_headers)).status_code == 404

    assert (await client.post(f"{MODULES}/{name}/disable", headers=admin_headers)).status_code == 200
    r = await second_api.get(f"{base}/common", headers=viewer_headers)
    assert r.status_code == 503 and r.json()["error"]["details"]["status"] == "DISABLED"

    assert (await client.post(f"{MODULES}/{name}/enable", headers=admin_headers)).status_code == 200
    assert (await second_api.get(f"{base}/v1", headers=viewer_headers)).json() == {"only": 1}

    jobs2 = [{"name": "common", "handler": "common"}, {"name": "only-v2", "handler": "only_v2"}]
    routes2 = [
        {"method": "GET", "path": "/common", "job": "common"},
        {"method": "GET", "path": "/v2", "job": "only-v2"},
    ]
    folder = route_module(tmp_path, name=name, version="2.0.0", code=V2, jobs=jobs2, routes=routes2)
    upgraded = await deploy(client, admin_headers, folder, upgrade=name)
    assert upgraded["status"] == "ENABLED" and upgraded["version"] == "2.0.0"

    assert (await second_api.get(f"{base}/v1", headers=viewer_headers)).status_code == 404
    assert (await second_api.get(f"{base}/v2", headers=viewer_headers)).json() == {"only": 2}
    assert (await second_api.get(f"{base}/common", headers=viewer_headers)).json() == {"version": "2.0.0"}

    for action in ("disable", "uninstall"):
        assert (await client.post(f"{MODULES}/{name}/{action}", headers=admin_headers)).status_code == 200
    r = await client.delete(f"{MODULES}/{name}", headers=admin_headers)
    assert r.status_code == 204, r.text
    r = await second_api.get(f"{base}/common", headers=viewer_headers)
    assert r.status_code == 404 and "not registered" in r.json()["error"]["message"]


async def test_a_multi_step_route_passes_each_step_the_previous_return_value(mod, client, viewer_headers):
    r = await client.get(f"{BASE}/double/21", headers=viewer_headers)
    assert r.status_code == 200, r.text
    # The second step saw the first step's own value, not the route-response wrapper.
    assert r.json() == {"doubled": 42, "saw": {"n": 21}}
    assert r.headers["X-Step"] == "double"


async def test_a_handler_header_with_a_line_break_is_a_502(mod, client, viewer_headers):
    r = await client.get(f"{BASE}/bad-header", headers=viewer_headers)
    assert r.status_code == 502 and r.json()["error"]["code"] == "bad_handler_response", r.text
    assert "set-cookie" not in r.headers


async def test_a_logged_out_token_is_refused_by_module_routes(mod, client, make_user, login):
    """Module routes read the bearer token themselves: its session must be alive, as everywhere."""
    user = await make_user("viewer")
    tokens = await login(user.email)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert (await client.get(f"{BASE}/items/1", headers=headers)).status_code == 200
    r = await client.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]}, headers=headers)
    assert r.status_code == 204, r.text
    r = await client.get(f"{BASE}/items/1", headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
