"""An access token dies with its session, on every API process at once: logout, reuse detection,
password change, role change, deactivation, deletion and an admin's revoke each refuse it on a second
API app (its own state and session cache) from the first request after the revoking call answered.
The session cache serves repeated requests without the database, and checks the database on every
request while Redis is unreachable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, api_client, eventually, free_port

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"
USERS = "/api/v1/users"
MODULES = "/api/v1/modules"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def second(settings: Any, engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Another API process: its own app, DB pool, Redis client and session cache."""
    async with api_client(settings) as c:
        yield c


async def accepted(c: httpx.AsyncClient, token: str) -> bool:
    """The token passes both kinds of guard: the auth routes' and a permission-checked route's."""
    me = await c.get(ME, headers=bearer(token))
    listed = await c.get(MODULES, headers=bearer(token))
    assert me.status_code in (200, 401), me.text
    assert listed.status_code in (200, 401), listed.text
    assert me.status_code == listed.status_code, (me.text, listed.text)
    if me.status_code == 401:
        assert me.json()["error"]["code"] == "unauthorized"
        assert "session ended" in me.json()["error"]["message"]
    return me.status_code == 200


async def sign_in(c: httpx.AsyncClient, email: str) -> dict[str, Any]:
    r = await c.post(LOGIN, json={"login": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()


def cache_of(c: httpx.AsyncClient) -> Any:
    return c.app.state.autoplat.auth  # type: ignore[attr-defined]


async def test_a_cached_session_costs_no_database_query(client, second, make_user):
    user = await make_user()
    tokens = await sign_in(client, user.email)
    assert await accepted(second, tokens["access_token"])
    checks = cache_of(second).db_checks
    for _ in range(5):
        assert await accepted(second, tokens["access_token"])
    assert cache_of(second).db_checks == checks


async def test_logout_refuses_the_access_token_everywhere(client, second, make_user):
    user = await make_user()
    tokens = await sign_in(client, user.email)
    other = await sign_in(client, user.email)
    assert await accepted(second, tokens["access_token"])
    assert await accepted(second, other["access_token"])
    r = await client.post(
        LOGOUT, json={"refresh_token": tokens["refresh_token"]}, headers=bearer(tokens["access_token"])
    )
    assert r.status_code == 204, r.text
    assert not await accepted(second, tokens["access_token"])
    assert not await accepted(client, tokens["access_token"])
    # The user's other session lives on.
    assert await accepted(second, other["access_token"])


async def test_refresh_reuse_refuses_the_familys_access_tokens(client, second, make_user):
    user = await make_user()
    stolen = await sign_in(client, user.email)
    rotated = (await client.post(REFRESH, json={"refresh_token": stolen["refresh_token"]})).json()
    assert await accepted(second, rotated["access_token"])
    assert await accepted(second, stolen["access_token"])
    replay = await client.post(REFRESH, json={"refresh_token": stolen["refresh_token"]})
    assert replay.status_code == 401
    assert not await accepted(second, rotated["access_token"])
    assert not await accepted(second, stolen["access_token"])


async def test_password_change_refuses_the_other_sessions_access_tokens(client, second, make_user):
    user = await make_user()
    current = await sign_in(client, user.email)
    other = await sign_in(client, user.email)
    assert await accepted(second, other["access_token"])
    assert await accepted(second, current["access_token"])
    r = await client.put(
        "/api/v1/auth/me/password",
        json={"current_password": PASSWORD, "new_password": "a-brand-new-long-password"},
        headers=bearer(current["access_token"]),
    )
    assert r.status_code == 200, r.text
    assert not await accepted(second, other["access_token"])
    assert await accepted(second, current["access_token"])  # the session that changed it stays


@pytest.mark.parametrize(
    "change",
    [
        ("PATCH", {"role": "operator"}),
        ("PATCH", {"is_active": False}),
        ("DELETE", None),
        ("POST", None),  # revoke-sessions
    ],
    ids=["role-change", "deactivation", "deletion", "admin-revoke"],
)
async def test_admin_changes_refuse_the_users_access_tokens(client, second, make_user, change):
    admin = await make_user("admin")
    user = await make_user("viewer")
    admin_tokens = await sign_in(client, admin.email)
    tokens = await sign_in(client, user.email)
    assert await accepted(second, tokens["access_token"])
    method, body = change
    url = f"{USERS}/{user.id}" + ("/revoke-sessions" if method == "POST" else "")
    r = await client.request(method, url, json=body, headers=bearer(admin_tokens["access_token"]))
    assert r.status_code < 300, r.text
    assert not await accepted(second, tokens["access_token"])
    assert not await accepted(client, tokens["access_token"])
    # The admin's own session was not touched.
    assert await accepted(second, admin_tokens["access_token"])
    if change == ("PATCH", {"role": "operator"}):
        again = await sign_in(second, user.email)
        assert (await second.get(ME, headers=bearer(again["access_token"]))).json()["role"] == "operator"


async def test_an_admin_changing_their_own_role_ends_their_sessions(client, second, make_user):
    await make_user("admin")  # not the last admin
    admin = await make_user("admin")
    tokens = await sign_in(client, admin.email)
    r = await client.patch(f"{USERS}/{admin.id}", json={"role": "viewer"}, headers=bearer(tokens["access_token"]))
    assert r.status_code == 200, r.text
    assert not await accepted(second, tokens["access_token"])


async def test_without_redis_every_request_checks_the_database(client, settings, engine, make_user):
    no_redis = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with api_client(no_redis) as blind:
        user = await make_user()
        tokens = await sign_in(client, user.email)
        assert await accepted(blind, tokens["access_token"])
        before = cache_of(blind).db_checks
        assert await accepted(blind, tokens["access_token"])
        assert cache_of(blind).db_checks == before + 2  # two requests, two database checks
        r = await client.post(LOGOUT, json={}, headers=bearer(tokens["access_token"]))
        assert r.status_code == 204, r.text
        assert not await accepted(blind, tokens["access_token"])
        # Revoking where Redis is down still ends the session there at once.
        other = await sign_in(client, user.email)
        assert await accepted(blind, other["access_token"])
        assert (await blind.post(LOGOUT, json={}, headers=bearer(other["access_token"]))).status_code == 204
        assert not await accepted(blind, other["access_token"])


async def test_changes_made_behind_the_platforms_back_are_seen_within_the_cache_age(
    client, second, make_user, sessions
):
    from sqlalchemy import update

    from registry.db import unit_of_work
    from registry.models import User

    cache_of(second).max_age_seconds = 0.5
    user = await make_user()
    tokens = await sign_in(client, user.email)
    assert await accepted(second, tokens["access_token"])
    async with unit_of_work(sessions) as s:  # a direct SQL edit: no stamp is replaced
        await s.execute(update(User).where(User.id == user.id).values(is_active=False))

    async def refused() -> bool:
        r = await second.get(MODULES, headers=bearer(tokens["access_token"]))
        return r.status_code == 401

    await eventually(refused, timeout=3, what="the cached check to age out")


async def test_access_token_without_a_session_claim_is_refused(client, make_user, settings):
    from registry.security import encode_token

    user = await make_user()
    token, _ = encode_token(settings, subject=user.id, token_type="access", role=user.role)
    r = await client.get(ME, headers=bearer(token))
    assert r.status_code == 401
    assert "names no session" in r.json()["error"]["message"]


async def test_a_redis_that_lost_its_stamps_sends_the_next_check_to_the_database(client, second, make_user):
    user = await make_user()
    tokens = await sign_in(client, user.email)
    assert await accepted(second, tokens["access_token"])
    checks = cache_of(second).db_checks
    assert await accepted(second, tokens["access_token"])
    assert cache_of(second).db_checks == checks
    # As after a Redis restart without persistence: the stamp is gone, a new random one is made.
    await second.app.state.autoplat.redis.delete(cache_of(second)._key(user.id))  # type: ignore[attr-defined]
    assert await accepted(second, tokens["access_token"])
    assert cache_of(second).db_checks > checks
