"""Route parts of the manifest (schema + semantic checks) and the pure route logic of
registry/services/routes.py: matching, roles, query conversion, webhook signatures."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import autoplat.manifest as sdk
from registry.errors import AuthenticationFailed, InvalidInput, PermissionDenied, ServiceUnavailable
from registry.manifest import validate_manifest
from registry.services import routes as r
from tests.unit.test_manifest import example

DATA_SYNC = Path(__file__).resolve().parents[2] / "example_modules" / "data_sync"


def _with_routes(*extra: dict[str, Any]) -> dict[str, Any]:
    doc = example()
    doc["routes"] = [*doc["routes"], *extra]
    return doc


def _errors(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i.code, i.path) for i in validate_manifest(doc).errors]


# --- manifest ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "code", "path"),
    [
        ({"method": "GET", "path": "/a/{x}/b/{x}", "job": "hourly-sync"}, "route.duplicate_param", "/routes/3/path"),
        (
            {"method": "GET", "path": "/open", "job": "hourly-sync", "public": True, "permission": "viewer"},
            "route.public_with_permission",
            "/routes/3/permission",
        ),
        (
            {"method": "POST", "path": "/later", "job": "hourly-sync", "mode": "async", "waitSeconds": 5},
            "route.wait_on_async",
            "/routes/3/waitSeconds",
        ),
        (
            {"method": "GET", "path": "/p", "job": "hourly-sync", "permission": "root"},
            "schema.enum",
            "/routes/3/permission",
        ),
        (
            {"method": "GET", "path": "/w", "job": "hourly-sync", "waitSeconds": 0},
            "schema.exclusiveMinimum",
            "/routes/3/waitSeconds",
        ),
    ],
)
def test_route_errors(route: dict[str, Any], code: str, path: str) -> None:
    assert (code, path) in _errors(_with_routes(route))


def test_signing_secret_must_be_a_secret_of_the_module_config() -> None:
    doc = example()
    doc["routes"][1]["auth"]["secretConfigKey"] = "apiUrl"  # a module config key, not secret
    assert ("route.auth_secret_not_secret", "/routes/1/auth/secretConfigKey") in _errors(doc)
    doc = example()
    job_keys = set(doc["jobs"][0].get("config", {}).get("properties", {}))
    assert job_keys, "the doc example's first job has config properties"
    doc["routes"][1]["auth"]["secretConfigKey"] = sorted(job_keys)[0]  # route calls have no job config
    assert ("route.auth_secret_unknown", "/routes/1/auth/secretConfigKey") in _errors(doc)


def test_the_doc_example_and_the_data_sync_manifest_are_valid() -> None:
    assert validate_manifest(example()).valid
    manifest = json.loads((DATA_SYNC / "manifest.json").read_text())
    report = validate_manifest(manifest, code_root=DATA_SYNC)
    assert report.errors == [] and report.warnings == []
    paths = {(route["method"], route["path"]) for route in manifest["routes"]}
    assert paths == {("GET", "/hello"), ("POST", "/echo"), ("GET", "/status"), ("POST", "/webhooks/source")}
    sdk.Manifest.model_validate(manifest)


def test_sdk_route_model_knows_wait_seconds_and_the_timestamp_default() -> None:
    route = sdk.Route.model_validate(
        {
            "method": "POST",
            "path": "/hook",
            "job": "x",
            "waitSeconds": 2.5,
            "auth": {"type": "hmac-sha256", "secretConfigKey": "s"},
        }
    )
    assert route.wait_seconds == 2.5
    assert route.auth is not None and route.auth.timestamp_header == "X-Timestamp"


# --- matching and roles --------------------------------------------------------------------------------


def _table(routes: list[dict[str, Any]], config: dict[str, Any] | None = None) -> r.RouteTable:
    return r.RouteTable(
        module="m", status="ENABLED", version="1.0.0", revision=1,
        routes=[r.RouteSpec.from_manifest(x) for x in routes], jobs={}, config=config or {},
    )  # fmt: skip


TABLE = _table(
    [
        {"method": "GET", "path": "/items/{id}", "job": "get"},
        {"method": "GET", "path": "/items/new", "job": "new"},
        {"method": "DELETE", "path": "/items/{id}", "job": "del", "permission": "admin"},
        {"method": "POST", "path": "/items", "job": "create"},
        {"method": "GET", "path": "/", "job": "root"},
    ]
)


def test_match_prefers_literals_and_extracts_params() -> None:
    found = TABLE.match("GET", ["items", "new"])
    assert found is not None and found.route.job == "new" and found.params == {}
    found = TABLE.match("GET", ["items", "a/b"])
    assert found is not None and found.route.job == "get" and found.params == {"id": "a/b"}
    root = TABLE.match("GET", [])
    assert root is not None and root.route.job == "root"
    assert TABLE.match("GET", ["items", "1", "x"]) is None
    assert TABLE.match("PUT", ["items", "1"]) is None
    assert TABLE.allowed_methods(["items", "1"]) == ["GET", "DELETE"]
    assert TABLE.allowed_methods(["nothing"]) == []


def test_default_roles_are_viewer_for_get_and_operator_otherwise() -> None:
    by_job = {route.job: route for route in TABLE.routes}
    assert by_job["get"].permission == "viewer" and by_job["create"].permission == "operator"
    r.check_role(by_job["get"], "viewer")
    with pytest.raises(PermissionDenied):
        r.check_role(by_job["create"], "viewer")
    r.check_role(by_job["create"], "operator")
    with pytest.raises(PermissionDenied):
        r.check_role(by_job["del"], "operator")
    r.check_role(by_job["del"], "admin")
    with pytest.raises(PermissionDenied):
        r.check_role(by_job["get"], "nobody")


# --- query, headers, responses --------------------------------------------------------------------------


def test_query_values_are_converted_by_schema_type_then_validated() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "f": {"type": "number"},
            "b": {"type": "boolean"},
            "ids": {"type": "array", "items": {"type": "integer"}},
            "s": {"type": "string"},
        },
        "additionalProperties": False,
    }
    table = _table([{"method": "GET", "path": "/q", "job": "q", "querySchema": schema}])
    route = table.routes[0]
    got = r.query_values(route, table, [("n", "3"), ("f", "1.5"), ("b", "false"), ("ids", "7"), ("s", "12")])
    assert got == {"n": 3, "f": 1.5, "b": False, "ids": [7], "s": "12"}
    with pytest.raises(InvalidInput) as err:
        r.query_values(route, table, [("n", "3.5")])
    assert err.value.details[0]["loc"] == ["query", "n"]
    with pytest.raises(InvalidInput):
        r.query_values(route, table, [("f", "nan")])
    with pytest.raises(InvalidInput):
        r.query_values(route, table, [("other", "x")])
    plain = _table([{"method": "GET", "path": "/q", "job": "q"}])
    assert r.query_values(plain.routes[0], plain, [("a", "1"), ("a", "2")]) == {"a": ["1", "2"]}


def test_handler_headers_drop_platform_credentials() -> None:
    headers = r.handler_headers([("Authorization", "Bearer x"), ("Cookie", "c"), ("X-A", "1"), ("x-a", "2")])
    assert headers == {"x-a": "1, 2"}


def test_route_response_unwraps_the_step_result() -> None:
    wrapped = {"__route_response__": True, "body": {"a": 1}, "status": 201, "headers": {"X-Y": 2}}
    assert r.route_response(wrapped) == ({"a": 1}, 201, {"X-Y": "2"})
    assert r.route_response({"plain": True}) == ({"plain": True}, 200, {})


# --- signatures -----------------------------------------------------------------------------------------

AUTH = {"type": "hmac-sha256", "secretConfigKey": "hook_secret", "toleranceSeconds": 60}


def _hook(config: dict[str, Any]) -> tuple[r.RouteSpec, r.RouteTable]:
    table = _table([{"method": "POST", "path": "/hook", "job": "h", "public": True, "auth": AUTH}], config)
    return table.routes[0], table


def _headers(stamp: str, signature: str) -> dict[str, str]:
    return {"x-timestamp": stamp, "x-signature": signature}


def test_signature_verification() -> None:
    route, table = _hook({"hook_secret": "s3"})
    body = b'{"a":1}'
    now = time.time()
    stamp, sig = r.sign("s3", body, int(now))
    assert r.verify_signature(route, table, _headers(stamp, sig), body, now=now) == sig
    assert r.verify_signature(route, table, _headers(stamp, "sha256=" + sig.upper()), body, now=now) == sig
    bad = [
        (_headers(stamp, sig), b'{"a":2}', "does not match"),
        (_headers(stamp, r.sign("other", body, int(now))[1]), body, "does not match"),
        (_headers(str(int(now) - 61), r.sign("s3", body, int(now) - 61)[1]), body, "replayed or delayed"),
        (_headers(str(int(now) + 61), r.sign("s3", body, int(now) + 61)[1]), body, "replayed or delayed"),
        ({"x-timestamp": stamp}, body, "missing signature header"),
        ({"x-signature": sig}, body, "timestamp header"),
        (_headers("12ab", sig), body, "timestamp header"),
    ]
    for headers, payload, message in bad:
        with pytest.raises(AuthenticationFailed, match=message):
            r.verify_signature(route, table, headers, payload, now=now)


def test_signature_without_a_configured_secret_is_unavailable() -> None:
    route, table = _hook({})
    with pytest.raises(ServiceUnavailable):
        r.verify_signature(route, table, _headers("1", "x"), b"", now=1.0)


async def test_a_signature_is_accepted_once() -> None:
    route, _ = _hook({"hook_secret": "s3"})
    seen: dict[str, int] = {}

    async def remember(key: str, ttl: int) -> bool:
        if key in seen:
            return False
        seen[key] = ttl
        return True

    await r.refuse_replay(route, "m", "abc", remember)
    assert seen == {"route-signature:m:abc": 121}
    with pytest.raises(AuthenticationFailed, match="replay"):
        await r.refuse_replay(route, "m", "abc", remember)


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ({"$ref": "#/$defs/nope"}, "/routes/3/bodySchema"),
        (
            {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}},
            "/routes/3/bodySchema/properties/a",
        ),
    ],
)
def test_route_schema_refs_must_be_local_and_resolve(schema, path):
    doc = _with_routes({"method": "POST", "path": "/refs", "job": "hourly-sync", "bodySchema": schema})
    assert ("route.schema_invalid", path) in _errors(doc)


def test_a_local_ref_that_resolves_is_fine():
    schema = {"$defs": {"n": {"type": "integer"}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}}
    doc = _with_routes({"method": "POST", "path": "/refs", "job": "hourly-sync", "bodySchema": schema})
    assert not [e for e in _errors(doc) if e[0] == "route.schema_invalid"]
