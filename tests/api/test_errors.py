"""One error body for every 4xx/5xx, request ids, and no internals leaking into responses."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

PASSWORD = "correct-horse-battery-staple"


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body["error"]


async def test_400_malformed_json(client):
    r = await client.post(
        "/api/v1/auth/login",
        content=b'{"login": "a@example.com", "password": ',
        headers={"Content-Type": "application/json"},
    )
    error = assert_error(r, 400, "bad_request")
    assert error["details"][0]["loc"][0] == "body"


async def test_401(client):
    r = await client.get("/api/v1/users")
    assert_error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_403(client, viewer_headers):
    assert_error(await client.get("/api/v1/users", headers=viewer_headers), 403, "forbidden")


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/nope", "/api/v2/users", "/api/v1/users/x/y/z"])
async def test_404_unknown_route(client, admin_headers, path):
    error = assert_error(await client.get(path, headers=admin_headers), 404, "not_found")
    assert path in error["message"]


async def test_404_unknown_route_without_token(client):
    # Unknown routes answer 404 whether or not the caller is authenticated.
    assert_error(await client.post("/api/v1/nope", json={}), 404, "not_found")


async def test_404_unknown_user(client, admin_headers):
    missing = str(uuid.uuid4())
    error = assert_error(await client.get(f"/api/v1/users/{missing}", headers=admin_headers), 404, "not_found")
    assert missing in error["message"]


async def test_405_wrong_method(client, admin_headers):
    r = await client.put("/health/live")
    assert_error(r, 405, "method_not_allowed")
    assert "GET" in r.headers["Allow"]
    r = await client.get("/api/v1/auth/login")
    error = assert_error(r, 405, "method_not_allowed")
    assert "GET" in error["message"] and "/api/v1/auth/login" in error["message"]
    assert "POST" in r.headers["Allow"]


async def test_409_duplicate_user(client, admin_headers, make_user):
    user = await make_user()
    r = await client.post("/api/v1/users", json={"email": user.email, "password": PASSWORD}, headers=admin_headers)
    assert_error(r, 409, "conflict")


async def test_422_validation_with_field_paths(client, admin_headers):
    r = await client.post(
        "/api/v1/users",
        json={"email": "not-an-email", "password": PASSWORD, "role": "root", "username": "x"},
        headers=admin_headers,
    )
    error = assert_error(r, 422, "validation_error")
    locs = {tuple(d["loc"]) for d in error["details"]}
    assert locs == {("body", "email"), ("body", "role"), ("body", "username")}
    for d in error["details"]:
        assert d["msg"] and d["type"]
        assert set(d) == {"loc", "msg", "type"}  # no echo of the input (it may hold a password)


async def test_422_never_echoes_the_password(client, admin_headers):
    secret = "hunter2-" + "x" * 2000
    r = await client.post("/api/v1/users", json={"email": "a@example.com", "password": secret}, headers=admin_headers)
    error = assert_error(r, 422, "validation_error")
    assert error["details"][0]["loc"] == ["body", "password"]
    assert "hunter2" not in r.text


async def test_422_missing_body(client):
    error = assert_error(await client.post("/api/v1/auth/refresh"), 422, "validation_error")
    assert error["details"][0]["loc"] == ["body"]


async def test_422_query_parameter(client, admin_headers):
    error = assert_error(await client.get("/api/v1/users?page=abc", headers=admin_headers), 422, "validation_error")
    assert error["details"][0]["loc"] == ["query", "page"]


async def test_429(client, make_user):
    user = await make_user()
    for _ in range(5):
        await client.post("/api/v1/auth/login", json={"login": user.email, "password": "wrong-password"})
    r = await client.post("/api/v1/auth/login", json={"login": user.email, "password": PASSWORD})
    error = assert_error(r, 429, "rate_limited")
    assert error["details"]["retry_after"] == int(r.headers["Retry-After"]) > 0


async def test_request_id_is_echoed(client):
    r = await client.get("/health/live", headers={"X-Request-ID": "my-trace.id:42"})
    assert r.headers["X-Request-ID"] == "my-trace.id:42"
    r = await client.get("/api/v1/nope", headers={"X-Request-ID": "trace-on-error"})
    assert r.status_code == 404
    assert r.headers["X-Request-ID"] == "trace-on-error"


async def test_request_id_is_generated(client):
    first = (await client.get("/health/live")).headers["X-Request-ID"]
    second = (await client.get("/api/v1/users")).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


@pytest.mark.parametrize("bad", ["has space", "x" * 65, "semi;colon", "<script>"])
async def test_unsafe_request_id_is_replaced(client, bad):
    r = await client.get("/health/live", headers={"X-Request-ID": bad})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])


async def test_500_has_the_error_body_and_no_stack_trace(client):
    async def boom() -> None:
        raise RuntimeError("secret internals: /etc/passwd at line 42")

    client.app.add_api_route("/api/v1/test-boom", boom, methods=["GET"])
    transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        r = await c.get("/api/v1/test-boom", headers={"X-Request-ID": "req-boom"})
        error = assert_error(r, 500, "internal_error")
        assert "secret internals" not in r.text and "RuntimeError" not in r.text
        assert error["details"] == {"request_id": "req-boom"}
        assert r.headers["X-Request-ID"] == "req-boom"

        r = await c.get("/api/v1/test-boom", headers={"X-Request-ID": "not a valid id"})
        error = assert_error(r, 500, "internal_error")
        # The body names the id the server used (and logged), never the raw header.
        assert error["details"]["request_id"] == r.headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])


async def test_openapi_documents_the_error_body_and_bearer_scheme(client):
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    responses = schema["paths"]["/api/v1/users"]["get"]["responses"]
    assert responses["403"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
