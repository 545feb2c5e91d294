"""User administration: admin-only CRUD, pagination, session revocation and the last-admin guard."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import update

from registry.db import unit_of_work
from registry.models import User

PASSWORD = "correct-horse-battery-staple"
USERS = "/api/v1/users"


async def me(client, headers) -> dict:
    r = await client.get("/api/v1/auth/me", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def test_list_paginates(client, admin_headers, make_user):
    created = [await make_user("viewer") for _ in range(4)]
    r = await client.get(USERS, params={"page": 1, "limit": 2}, headers=admin_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"items", "total", "page", "limit", "total_exact", "has_more"}
    assert (body["total"], body["page"], body["limit"], len(body["items"])) == (5, 1, 2, 2)
    assert body["total_exact"] is True and body["has_more"] is True

    seen = [u["id"] for u in body["items"]]
    for page, expected in ((2, 2), (3, 1), (4, 0)):
        r = await client.get(USERS, params={"page": page, "limit": 2}, headers=admin_headers)
        assert r.json()["total"] == 5 and r.json()["page"] == page
        assert len(r.json()["items"]) == expected
        assert r.json()["has_more"] is (page == 2)
        seen += [u["id"] for u in r.json()["items"]]
    assert len(seen) == len(set(seen)) == 5
    assert {u.id for u in created} <= set(seen)


async def test_list_defaults_and_filters(client, admin_headers, make_user):
    await make_user("operator", email="findme-op@example.com")
    await make_user("viewer", email="other@example.com")
    r = await client.get(USERS, headers=admin_headers)
    assert (r.json()["page"], r.json()["limit"], r.json()["total"]) == (1, 50, 3)
    r = await client.get(USERS, params={"search": "FINDME"}, headers=admin_headers)
    assert [u["email"] for u in r.json()["items"]] == ["findme-op@example.com"]
    r = await client.get(USERS, params={"role": "viewer"}, headers=admin_headers)
    assert [u["email"] for u in r.json()["items"]] == ["other@example.com"]
    r = await client.get(USERS, params={"search": "%"}, headers=admin_headers)
    assert r.json()["total"] == 0


@pytest.mark.parametrize("params", [{"limit": 201}, {"limit": 1001}, {"limit": 0}, {"page": 0}, {"role": "superuser"}])
async def test_bad_list_parameters_are_422(client, admin_headers, params):
    r = await client.get(USERS, params=params, headers=admin_headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] in ("validation_error", "invalid_input")
    assert error["details"][0]["loc"] == ["query", next(iter(params))]


async def test_limit_at_the_maximum_is_accepted(client, admin_headers, settings):
    r = await client.get(USERS, params={"limit": settings.page_max_limit}, headers=admin_headers)
    assert r.status_code == 200
    assert r.json()["limit"] == 200


async def test_create_get_update_delete(client, admin_headers, login):
    r = await client.post(
        USERS,
        json={"email": "Op@Example.com", "password": PASSWORD, "role": "operator", "full_name": "Op One"},
        headers=admin_headers,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["email"] == "op@example.com"
    assert created["role"] == "operator" and created["is_active"] is True
    assert "password" not in created and "password_hash" not in created
    assert "modules:execute" in created["permissions"]

    r = await client.get(f"{USERS}/{created['id']}", headers=admin_headers)
    assert r.status_code == 200
    assert r.json()["full_name"] == "Op One"
    assert (await login("op@example.com"))["access_token"]

    r = await client.patch(f"{USERS}/{created['id']}", json={"role": "viewer"}, headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "viewer"
    assert r.json()["full_name"] == "Op One"

    r = await client.delete(f"{USERS}/{created['id']}", headers=admin_headers)
    assert r.status_code == 204
    assert r.content == b""
    assert (await client.get(f"{USERS}/{created['id']}", headers=admin_headers)).status_code == 404
    assert (await client.delete(f"{USERS}/{created['id']}", headers=admin_headers)).status_code == 404


async def test_create_defaults_to_viewer(client, admin_headers):
    r = await client.post(USERS, json={"email": "v@example.com", "password": PASSWORD}, headers=admin_headers)
    assert r.status_code == 201
    assert r.json()["role"] == "viewer"


async def test_duplicate_email_or_username_is_409(client, admin_headers):
    first = {"email": "dup@example.com", "password": PASSWORD, "username": "dupe"}
    assert (await client.post(USERS, json=first, headers=admin_headers)).status_code == 201
    r = await client.post(USERS, json={"email": "DUP@example.com", "password": PASSWORD}, headers=admin_headers)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "conflict"
    r = await client.post(
        USERS, json={"email": "other@example.com", "password": PASSWORD, "username": "dupe"}, headers=admin_headers
    )
    assert r.status_code == 409


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"email": "not-an-email", "password": PASSWORD}, ["body", "email"]),
        ({"email": "a@example.com", "password": "short"}, ["body", "password"]),
        ({"email": "a@example.com", "password": PASSWORD, "role": "root"}, ["body", "role"]),
        ({"email": "a@example.com", "password": PASSWORD, "is_admin": True}, ["body", "is_admin"]),
    ],
    ids=["email", "weak-password", "role", "unknown-field"],
)
async def test_create_rejects_bad_input(client, admin_headers, body, loc):
    r = await client.post(USERS, json=body, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"] == loc


async def test_unknown_user_is_404(client, admin_headers):
    missing = str(uuid.uuid4())
    for method, path, body in (
        ("GET", f"{USERS}/{missing}", None),
        ("PATCH", f"{USERS}/{missing}", {"role": "viewer"}),
        ("DELETE", f"{USERS}/{missing}", None),
        ("POST", f"{USERS}/{missing}/revoke-sessions", None),
    ):
        r = await client.request(method, path, json=body, headers=admin_headers)
        assert r.status_code == 404, (method, path, r.text)
        assert missing in r.json()["error"]["message"]


async def test_deactivation_blocks_login_and_revokes_sessions(client, admin_headers, make_user, login):
    user = await make_user("operator")
    tokens = await login(user.email)
    r = await client.patch(f"{USERS}/{user.id}", json={"is_active": False}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["is_active"] is False
    assert (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    ).status_code == 401
    r = await client.post("/api/v1/auth/login", json={"login": user.email, "password": PASSWORD})
    assert r.status_code == 401

    r = await client.patch(f"{USERS}/{user.id}", json={"is_active": True}, headers=admin_headers)
    assert r.json()["is_active"] is True
    assert (await login(user.email))["access_token"]


async def test_revoke_sessions(client, admin_headers, make_user, login):
    user = await make_user()
    first, second = await login(user.email), await login(user.email)
    r = await client.post(f"{USERS}/{user.id}/revoke-sessions", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"revoked_sessions": 2}
    for tokens in (first, second):
        r = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert r.status_code == 401
    r = await client.post(f"{USERS}/{user.id}/revoke-sessions", headers=admin_headers)
    assert r.json() == {"revoked_sessions": 0}


async def test_deleting_a_user_ends_their_access(client, admin_headers, make_user, login):
    user = await make_user("operator")
    tokens = await login(user.email)
    assert (await client.delete(f"{USERS}/{user.id}", headers=admin_headers)).status_code == 204
    assert (
        await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    ).status_code == 401
    assert (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    ).status_code == 401


async def test_the_last_admin_cannot_be_demoted_deactivated_or_deleted(client, admin_headers):
    admin_id = (await me(client, admin_headers))["id"]
    for method, body in (("PATCH", {"role": "operator"}), ("PATCH", {"is_active": False}), ("DELETE", None)):
        r = await client.request(method, f"{USERS}/{admin_id}", json=body, headers=admin_headers)
        assert r.status_code == 409, (method, body, r.text)
        assert r.json()["error"]["code"] == "conflict"
    still = await me(client, admin_headers)
    assert (still["role"], still["is_active"]) == ("admin", True)


async def test_an_inactive_admin_does_not_count(client, admin_headers, make_user):
    await make_user("admin", is_active=False)
    admin_id = (await me(client, admin_headers))["id"]
    r = await client.patch(f"{USERS}/{admin_id}", json={"role": "viewer"}, headers=admin_headers)
    assert r.status_code == 409


async def test_an_admin_can_be_demoted_when_another_remains(client, admin_headers, make_user):
    other = await make_user("admin")
    r = await client.patch(f"{USERS}/{other.id}", json={"role": "operator"}, headers=admin_headers)
    assert r.status_code == 200
    assert r.json()["role"] == "operator"
    # Now the caller is the last admin again.
    admin_id = (await me(client, admin_headers))["id"]
    assert (await client.delete(f"{USERS}/{admin_id}", headers=admin_headers)).status_code == 409


@pytest.mark.parametrize(
    "changes",
    [({"role": "viewer"}, {"role": "operator"}), ({"is_active": False}, {"role": "viewer"}), (None, None)],
    ids=["demote-both", "deactivate-and-demote", "delete-both"],
)
async def test_two_admins_removing_each_other_at_once_leave_one(client, make_user, login, sessions, changes):
    method = "DELETE" if changes[0] is None else "PATCH"
    for _ in range(2):  # the race doesn't always overlap; two rounds make a regression very likely to show
        a, b = await make_user("admin"), await make_user("admin")
        async with unit_of_work(sessions) as s:  # earlier winners step aside: a and b are the only admins
            await s.execute(update(User).where(User.id.not_in([a.id, b.id])).values(role="viewer"))
        ha = {"Authorization": f"Bearer {(await login(a.email))['access_token']}"}
        hb = {"Authorization": f"Bearer {(await login(b.email))['access_token']}"}
        r1, r2 = await asyncio.gather(
            client.request(method, f"{USERS}/{b.id}", json=changes[0], headers=ha),
            client.request(method, f"{USERS}/{a.id}", json=changes[1], headers=hb),
        )
        statuses = sorted([r1.status_code, r2.status_code])
        # Exactly one wins. The other is refused by the guard (409) or, when it arrives after the winner
        # committed, no longer passes authentication (401) or authorization (403).
        assert statuses[0] < 300 and statuses[1] in (401, 403, 409), (r1.text, r2.text)
        me_now = await me(client, ha if r1.status_code < 300 else hb)
        assert (me_now["role"], me_now["is_active"]) == ("admin", True)


async def test_patch_with_no_change_is_a_no_op(client, admin_headers):
    admin_id = (await me(client, admin_headers))["id"]
    r = await client.patch(f"{USERS}/{admin_id}", json={"role": "admin", "is_active": True}, headers=admin_headers)
    assert r.status_code == 200
    assert r.json()["role"] == "admin"


def _user_routes(user_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", USERS, None),
        ("POST", USERS, {"email": "x@example.com", "password": PASSWORD}),
        ("GET", f"{USERS}/{user_id}", None),
        ("PATCH", f"{USERS}/{user_id}", {"role": "admin"}),
        ("DELETE", f"{USERS}/{user_id}", None),
        ("POST", f"{USERS}/{user_id}/revoke-sessions", None),
    ]


@pytest.mark.parametrize("role", ["operator", "viewer"])
async def test_non_admins_get_403_on_every_users_route(client, headers_for, make_user, role):
    headers = await headers_for(role)
    target = await make_user("viewer")
    for method, path, body in _user_routes(target.id):
        r = await client.request(method, path, json=body, headers=headers)
        assert r.status_code == 403, (role, method, path, r.text)
        assert r.json()["error"]["code"] == "forbidden"
    # Including on their own record: nobody promotes themselves.
    own = (await me(client, headers))["id"]
    r = await client.patch(f"{USERS}/{own}", json={"role": "admin"}, headers=headers)
    assert r.status_code == 403
    assert (await me(client, headers))["role"] == role
    assert (await client.get(f"{USERS}/{target.id}", headers={})).status_code == 401
