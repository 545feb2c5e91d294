"""The audit log: mutating actions and refusals write rows; admins read them with filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

PASSWORD = "correct-horse-battery-staple"
AUDIT = "/api/v1/audit"


async def entries(client, headers, **params) -> list[dict]:
    r = await client.get(AUDIT, params={"limit": 200, **params}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def only(client, headers, **params) -> dict:
    rows = await entries(client, headers, **params)
    assert len(rows) == 1, rows
    return rows[0]


async def user_id(client, headers) -> str:
    return (await client.get("/api/v1/auth/me", headers=headers)).json()["id"]


async def test_user_administration_is_audited(client, admin_headers):
    admin_id = await user_id(client, admin_headers)

    r = await client.post(
        "/api/v1/users",
        json={"email": "audited@example.com", "password": PASSWORD, "role": "operator"},
        headers={**admin_headers, "X-Request-ID": "req-create-1"},
    )
    assert r.status_code == 201
    target = r.json()["id"]
    row = await only(client, admin_headers, request_id="req-create-1", action="user.create")
    assert row["actor_id"] == admin_id
    assert row["actor_email"].startswith("admin-")
    assert (row["target_type"], row["target_id"]) == ("user", target)
    assert row["outcome"] == "success"
    assert row["ip"] == "127.0.0.1"
    assert row["request_id"] == "req-create-1"
    assert row["details"] == {"role": "operator"}

    for method, path, body, action in (
        ("PATCH", f"/api/v1/users/{target}", {"role": "viewer"}, "user.update"),
        ("POST", f"/api/v1/users/{target}/revoke-sessions", None, "user.revoke_sessions"),
        ("DELETE", f"/api/v1/users/{target}", None, "user.delete"),
    ):
        rid = f"req-{action}"
        r = await client.request(method, path, json=body, headers={**admin_headers, "X-Request-ID": rid})
        assert r.status_code < 300, r.text
        row = await only(client, admin_headers, action=action)
        assert (row["actor_id"], row["target_id"], row["outcome"], row["request_id"]) == (
            admin_id,
            target,
            "success",
            rid,
        )
    assert (await only(client, admin_headers, action="user.update"))["details"] == {"role": "viewer"}


async def test_auth_actions_are_audited(client, make_user, admin_headers):
    user = await make_user()
    r = await client.post(
        "/api/v1/auth/login", json={"login": user.email, "password": PASSWORD}, headers={"X-Request-ID": "req-login"}
    )
    tokens = r.json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    row = await only(client, admin_headers, action="auth.login", actor_id=user.id)
    assert (row["target_id"], row["outcome"], row["request_id"], row["ip"]) == (
        user.id,
        "success",
        "req-login",
        "127.0.0.1",
    )

    r = await client.put(
        "/api/v1/auth/me/password",
        json={"current_password": PASSWORD, "new_password": "another-long-password"},
        headers={**headers, "X-Request-ID": "req-pw"},
    )
    assert r.status_code == 200
    row = await only(client, admin_headers, action="auth.password_change")
    assert (row["actor_id"], row["request_id"], row["outcome"]) == (user.id, "req-pw", "success")

    r = await client.post(
        "/api/v1/auth/logout",
        json={"refresh_token": tokens["refresh_token"]},
        headers={**headers, "X-Request-ID": "req-logout"},
    )
    assert r.status_code == 204
    row = await only(client, admin_headers, action="auth.logout")
    assert (row["actor_id"], row["target_id"], row["request_id"], row["ip"]) == (
        user.id,
        user.id,
        "req-logout",
        "127.0.0.1",
    )


async def test_registration_is_audited(client, settings, admin_headers):
    settings.allow_registration = True
    r = await client.post(
        "/api/v1/auth/register",
        json={"email": "self@example.com", "password": PASSWORD},
        headers={"X-Request-ID": "req-register"},
    )
    assert r.status_code == 201
    row = await only(client, admin_headers, action="auth.register")
    assert (row["target_id"], row["request_id"], row["outcome"]) == (r.json()["id"], "req-register", "success")


async def test_refresh_reuse_is_audited(client, make_user, login, admin_headers):
    user = await make_user()
    tokens = await login(user.email)
    await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    r = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}, headers={"X-Request-ID": "req-reuse"}
    )
    assert r.status_code == 401
    row = await only(client, admin_headers, action="auth.refresh_reuse")
    assert (row["target_id"], row["outcome"], row["request_id"]) == (user.id, "failure", "req-reuse")


async def test_refused_call_writes_a_failure_row(client, viewer_headers, admin_headers):
    viewer_id = await user_id(client, viewer_headers)
    r = await client.post(
        "/api/v1/users",
        json={"email": "sneaky@example.com", "password": PASSWORD, "role": "admin"},
        headers={**viewer_headers, "X-Request-ID": "req-refused"},
    )
    assert r.status_code == 403
    row = await only(client, admin_headers, request_id="req-refused")
    assert row["outcome"] == "failure"
    assert row["actor_id"] == viewer_id
    assert row["ip"] == "127.0.0.1"
    assert row["details"] == {"status": 403}
    assert "/users" in row["action"] and row["action"].startswith("POST ")
    # The refused action itself did not happen.
    assert await entries(client, admin_headers, action="user.create") == []


async def test_failed_login_writes_a_failure_row(client, make_user, admin_headers):
    user = await make_user()
    r = await client.post(
        "/api/v1/auth/login",
        json={"login": user.email, "password": "wrong-password"},
        headers={"X-Request-ID": "req-bad-login"},
    )
    assert r.status_code == 401
    row = await only(client, admin_headers, request_id="req-bad-login")
    assert row["outcome"] == "failure"
    assert row["details"] == {"status": 401}
    assert row["ip"] == "127.0.0.1"
    assert "/auth/login" in row["action"]
    # The password never reaches the audit log.
    assert "wrong-password" not in str(row)


async def test_reads_are_not_audited(client, admin_headers):
    await client.get("/api/v1/users", headers={**admin_headers, "X-Request-ID": "req-read"})
    await client.get(AUDIT, headers={**admin_headers, "X-Request-ID": "req-read"})
    assert await entries(client, admin_headers, request_id="req-read") == []


async def test_filters(client, admin_headers, viewer_headers, make_user, login):
    admin_id = await user_id(client, admin_headers)
    viewer_id = await user_id(client, viewer_headers)
    await client.post("/api/v1/users", json={"email": "f1@example.com", "password": PASSWORD}, headers=admin_headers)
    await client.post("/api/v1/users", json={"email": "f2@example.com", "password": PASSWORD}, headers=viewer_headers)

    created = await entries(client, admin_headers, action="user.create")
    assert [r["actor_id"] for r in created] == [admin_id]
    assert {r["action"] for r in await entries(client, admin_headers, action="user.*")} == {"user.create"}
    assert {r["action"] for r in await entries(client, admin_headers, action="auth.*")} == {"auth.login"}
    # LIKE wildcards in the filter are literal characters.
    assert await entries(client, admin_headers, action="%*") == []
    assert await entries(client, admin_headers, action="_ser.*") == []

    by_viewer = await entries(client, admin_headers, actor_id=viewer_id)
    assert {r["outcome"] for r in by_viewer} == {"success", "failure"}  # login, refused create
    failures = await entries(client, admin_headers, outcome="failure")
    assert len(failures) == 1 and failures[0]["actor_id"] == viewer_id
    assert all(r["outcome"] == "success" for r in await entries(client, admin_headers, outcome="success"))

    everything = await entries(client, admin_headers)
    assert len(everything) == 4  # two logins, one create, one refused create
    ids = [r["id"] for r in everything]
    assert ids == sorted(ids, reverse=True)  # newest first

    now = datetime.now(UTC)
    assert len(await entries(client, admin_headers, since=(now - timedelta(minutes=5)).isoformat())) == 4
    assert await entries(client, admin_headers, since=(now + timedelta(minutes=5)).isoformat()) == []
    assert await entries(client, admin_headers, until=(now - timedelta(minutes=5)).isoformat()) == []
    assert len(await entries(client, admin_headers, until=(now + timedelta(minutes=5)).isoformat())) == 4
    pivot = everything[2]["at"]
    newer = await entries(client, admin_headers, since=pivot)
    older = await entries(client, admin_headers, until=pivot)
    assert {r["id"] for r in newer} | {r["id"] for r in older} == set(ids)
    assert not {r["id"] for r in newer} & {r["id"] for r in older}

    r = await client.get(AUDIT, params={"limit": 2, "page": 2}, headers=admin_headers)
    assert (r.json()["total"], r.json()["page"], r.json()["limit"]) == (4, 2, 2)
    assert [e["id"] for e in r.json()["items"]] == ids[2:4]


@pytest.mark.parametrize("params", [{"outcome": "maybe"}, {"since": "yesterday"}, {"limit": 500}])
async def test_bad_filters_are_422(client, admin_headers, params):
    r = await client.get(AUDIT, params=params, headers=admin_headers)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["loc"] == ["query", next(iter(params))]


@pytest.mark.parametrize("role", ["operator", "viewer"])
async def test_audit_is_admin_only(client, headers_for, role):
    r = await client.get(AUDIT, headers=await headers_for(role))
    assert r.status_code == 403
    assert (await client.get(AUDIT)).status_code == 401
