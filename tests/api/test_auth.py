"""Authentication: login, token verification, refresh rotation and reuse, logout, password change,
rate limiting, inactive users and self-registration."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from sqlalchemy import update

from registry.db import unit_of_work
from registry.models import User

PASSWORD = "correct-horse-battery-staple"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"
PASSWORD_URL = "/api/v1/auth/me/password"
REGISTER = "/api/v1/auth/register"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def craft(
    secret: str,
    *,
    sub: str,
    token_type: str = "access",
    exp_in: int = 900,
    algorithm: str = "HS256",
    **overrides: Any,
) -> str:
    """A token built outside the platform, correct in every respect unless overridden."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": sub,
        "type": token_type,
        "jti": str(uuid.uuid4()),
        "iat": now - 5,
        "nbf": now - 5,
        "exp": now + exp_in,
        "iss": "autoplat",
        "aud": "autoplat-api",
    }
    payload.update(overrides)
    return jwt.encode(payload, secret, algorithm=algorithm)


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def live_family(login: Any, user: Any) -> str:
    """The session (refresh family) id of a fresh login of ``user``."""
    tokens = await login(user.email)
    return str(jwt.decode(tokens["access_token"], options={"verify_signature": False})["fam"])


async def set_user(sessions: Any, user_id: str, **values: Any) -> None:
    async with unit_of_work(sessions) as s:
        await s.execute(update(User).where(User.id == user_id).values(**values))


# --- login -----------------------------------------------------------------------------------------------


async def test_login_by_email_returns_token_pair(client, make_user):
    user = await make_user("operator")
    r = await client.post(LOGIN, json={"login": user.email.upper(), "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert body["refresh_expires_in"] == 7 * 24 * 3600
    assert body["access_token"] and body["refresh_token"] and body["access_token"] != body["refresh_token"]
    me = await client.get(ME, headers=bearer(body["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == user.id
    assert "password_hash" not in me.json()


async def test_login_by_username(client, make_user):
    user = await make_user("viewer", username=f"alice-{uuid.uuid4().hex[:6]}")
    r = await client.post(LOGIN, json={"login": user.username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    me = await client.get(ME, headers=bearer(r.json()["access_token"]))
    assert me.json()["username"] == user.username


async def test_expires_in_follows_settings(client, make_user, settings):
    settings.access_token_ttl_seconds = 120
    user = await make_user()
    r = await client.post(LOGIN, json={"login": user.email, "password": PASSWORD})
    assert r.json()["expires_in"] == 120
    claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


async def test_wrong_password_and_unknown_user_get_the_same_401(client, make_user):
    user = await make_user()
    wrong = await client.post(LOGIN, json={"login": user.email, "password": "not-the-password"})
    unknown = await client.post(LOGIN, json={"login": "nobody@example.com", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "unauthorized"


async def test_login_without_identifier_is_422(client):
    r = await client.post(LOGIN, json={"password": PASSWORD})
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["loc"] == ["body", "login"]


# --- access token verification -----------------------------------------------------------------------------


async def test_crafted_token_with_correct_claims_is_accepted(client, make_user, login, jwt_secret):
    # Proves the forgeries below fail for the reason each one names, not because crafting is wrong.
    user = await make_user()
    fam = await live_family(login, user)
    r = await client.get(ME, headers=bearer(craft(jwt_secret, sub=user.id, fam=fam)))
    assert r.status_code == 200, r.text


async def test_expired_access_token_is_401(client, make_user, login, jwt_secret):
    user = await make_user()
    fam = await live_family(login, user)
    token = craft(
        jwt_secret, sub=user.id, fam=fam, exp_in=-60, iat=int(time.time()) - 1000, nbf=int(time.time()) - 1000
    )
    r = await client.get(ME, headers=bearer(token))
    assert r.status_code == 401
    assert "expired" in r.json()["error"]["message"]
    assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_tampered_signature_is_401(client, make_user, login, jwt_secret):
    user = await make_user()
    fam = await live_family(login, user)
    header, payload, signature = craft(jwt_secret, sub=user.id, fam=fam).split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    r = await client.get(ME, headers=bearer(f"{header}.{payload}.{flipped}"))
    assert r.status_code == 401


async def test_tampered_payload_is_401(client, make_user, login, jwt_secret):
    viewer = await make_user("viewer")
    admin = await make_user("admin")
    fam = await live_family(login, viewer)
    header, _, signature = craft(jwt_secret, sub=viewer.id, fam=fam).split(".")
    forged_payload = b64url(jwt.decode(craft(jwt_secret, sub=admin.id, fam=fam), options={"verify_signature": False}))
    r = await client.get(ME, headers=bearer(f"{header}.{forged_payload}.{signature}"))
    assert r.status_code == 401


async def test_token_signed_with_another_key_is_401(client, make_user, login):
    user = await make_user()
    fam = await live_family(login, user)
    r = await client.get(ME, headers=bearer(craft("x" * 64, sub=user.id, fam=fam)))
    assert r.status_code == 401


async def test_alg_none_token_is_401(client, make_user, login):
    user = await make_user()
    fam = await live_family(login, user)
    now = int(time.time())
    claims = {
        "sub": user.id,
        "type": "access",
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "iss": "autoplat",
        "aud": "autoplat-api",
        "fam": fam,
    }
    for alg in ("none", "None", "NONE"):
        token = f"{b64url({'alg': alg, 'typ': 'JWT'})}.{b64url(claims)}."
        r = await client.get(ME, headers=bearer(token))
        assert r.status_code == 401, (alg, r.text)


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
async def test_token_with_another_hs_algorithm_is_401(client, make_user, login, jwt_secret, algorithm):
    user = await make_user()
    fam = await live_family(login, user)
    r = await client.get(ME, headers=bearer(craft(jwt_secret, sub=user.id, fam=fam, algorithm=algorithm)))
    assert r.status_code == 401


@pytest.mark.parametrize(
    "override",
    [{"iss": "someone-else"}, {"aud": "another-api"}, {"type": "id"}, {"nbf": int(time.time()) + 3600}],
    ids=["issuer", "audience", "type", "not-yet-valid"],
)
async def test_wrong_claims_are_401(client, make_user, login, jwt_secret, override):
    user = await make_user()
    fam = await live_family(login, user)
    r = await client.get(ME, headers=bearer(craft(jwt_secret, sub=user.id, fam=fam, **override)))
    assert r.status_code == 401


async def test_token_for_unknown_user_is_401(client, jwt_secret):
    r = await client.get(ME, headers=bearer(craft(jwt_secret, sub=str(uuid.uuid4()))))
    assert r.status_code == 401


@pytest.mark.parametrize("authorization", ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt"])
async def test_malformed_authorization_is_401(client, authorization):
    r = await client.get(ME, headers={"Authorization": authorization})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"


async def test_refresh_token_is_refused_as_access_token(client, make_user, login):
    tokens = await login((await make_user()).email)
    r = await client.get(ME, headers=bearer(tokens["refresh_token"]))
    assert r.status_code == 401


async def test_access_token_is_refused_as_refresh_token(client, make_user, login):
    tokens = await login((await make_user()).email)
    r = await client.post(REFRESH, json={"refresh_token": tokens["access_token"]})
    assert r.status_code == 401


# --- refresh rotation --------------------------------------------------------------------------------------


async def test_refresh_rotates_and_the_old_token_then_fails(client, make_user, login):
    tokens = await login((await make_user()).email)
    r = await client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert rotated["access_token"] != tokens["access_token"]
    assert rotated["expires_in"] == 900
    assert (await client.get(ME, headers=bearer(rotated["access_token"]))).status_code == 200

    again = await client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 401


async def test_refresh_reuse_revokes_the_whole_family(client, make_user, login):
    user = await make_user()
    stolen = await login(user.email)
    other_device = await login(user.email)
    rotated = (await client.post(REFRESH, json={"refresh_token": stolen["refresh_token"]})).json()

    replay = await client.post(REFRESH, json={"refresh_token": stolen["refresh_token"]})
    assert replay.status_code == 401
    # The legitimate holder's newer token belongs to the same family: revoked too.
    r = await client.post(REFRESH, json={"refresh_token": rotated["refresh_token"]})
    assert r.status_code == 401
    # Another login is another family and keeps working.
    r = await client.post(REFRESH, json={"refresh_token": other_device["refresh_token"]})
    assert r.status_code == 200, r.text


async def test_refresh_with_a_forged_jti_is_401(client, make_user, jwt_secret):
    user = await make_user()
    token = craft(jwt_secret, sub=user.id, token_type="refresh", fam=str(uuid.uuid4()))
    r = await client.post(REFRESH, json={"refresh_token": token})
    assert r.status_code == 401


async def test_refresh_without_any_refresh_token_is_401(client):
    r = await client.post(REFRESH, json={})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthorized"
    assert "autoplat_refresh" in r.json()["error"]["message"]


async def test_refresh_with_an_empty_refresh_token_is_422(client):
    r = await client.post(REFRESH, json={"refresh_token": ""})
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["loc"] == ["body", "refresh_token"]


# --- the console's session cookie ----------------------------------------------------------------------------


def set_cookie(response: Any) -> dict[str, str]:
    """The ``autoplat_refresh`` Set-Cookie of a response, as {attribute (lower case): value}."""
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith("autoplat_refresh=")]
    assert len(headers) == 1, response.headers
    name_value, *attributes = (part.strip() for part in headers[0].split(";"))
    parsed = {"value": name_value.partition("=")[2]}
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        parsed[key.lower()] = value
    return parsed


async def cookie_login(client: Any, email: str) -> tuple[dict[str, Any], dict[str, str]]:
    r = await client.post(LOGIN, json={"login": email, "password": PASSWORD, "session_cookie": True})
    assert r.status_code == 200, r.text
    return r.json(), set_cookie(r)


async def test_cookie_login_keeps_the_refresh_token_out_of_the_body(client, make_user, settings):
    user = await make_user()
    body, cookie = await cookie_login(client, user.email)
    assert body["refresh_token"] == ""
    assert body["access_token"] and body["expires_in"] == 900
    assert body["refresh_expires_in"] == settings.refresh_token_ttl_seconds
    assert cookie["value"] and cookie["value"] != body["access_token"]
    assert "httponly" in cookie
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/api/v1/auth"
    assert cookie["max-age"] == str(settings.refresh_token_ttl_seconds)
    assert "secure" not in cookie  # plain http: a Secure cookie would never come back
    assert (await client.get(ME, headers=bearer(body["access_token"]))).status_code == 200


async def test_cookie_is_secure_over_https(settings, app_state, make_user):
    from tests.conftest import api_client

    user = await make_user()
    async with api_client(settings, state=app_state, base_url="https://testserver") as c:
        _, cookie = await cookie_login(c, user.email)
        assert "secure" in cookie
        r = await c.post(REFRESH, json={})
        assert r.status_code == 200, r.text
        assert "secure" in set_cookie(r)


async def test_cookie_refresh_rotates_the_cookie(client, make_user):
    user = await make_user()
    _, first = await cookie_login(client, user.email)
    r = await client.post(REFRESH, json={})
    assert r.status_code == 200, r.text
    assert r.json()["refresh_token"] == ""
    second = set_cookie(r)
    assert second["value"] != first["value"]
    assert second["path"] == "/api/v1/auth" and "httponly" in second
    assert (await client.get(ME, headers=bearer(r.json()["access_token"]))).status_code == 200
    # The jar now holds the new cookie: refreshing again works.
    r = await client.post(REFRESH, json={})
    assert r.status_code == 200, r.text
    assert set_cookie(r)["value"] not in (first["value"], second["value"])


async def test_replayed_cookie_revokes_the_family(client, make_user):
    user = await make_user()
    _, first = await cookie_login(client, user.email)
    rotated = set_cookie(await client.post(REFRESH, json={}))
    client.cookies.clear()
    replay = await client.post(REFRESH, json={}, headers={"Cookie": f"autoplat_refresh={first['value']}"})
    assert replay.status_code == 401
    # The legitimate holder's newer cookie belonged to the same family: revoked too.
    r = await client.post(REFRESH, json={}, headers={"Cookie": f"autoplat_refresh={rotated['value']}"})
    assert r.status_code == 401, r.text


async def test_cookie_logout_revokes_the_session_and_clears_the_cookie(client, make_user, login):
    user = await make_user()
    body, cookie = await cookie_login(client, user.email)
    other = await login(user.email)  # another device (body tokens)
    r = await client.post(LOGOUT, json={}, headers=bearer(body["access_token"]))
    assert r.status_code == 204, r.text
    cleared = set_cookie(r)
    assert cleared["value"] in ("", '""') and cleared["max-age"] == "0" and cleared["path"] == "/api/v1/auth"
    assert "autoplat_refresh" not in client.cookies
    again = await client.post(REFRESH, json={}, headers={"Cookie": f"autoplat_refresh={cookie['value']}"})
    assert again.status_code == 401
    assert (await client.post(REFRESH, json={"refresh_token": other["refresh_token"]})).status_code == 200


async def test_logout_without_a_refresh_token_ends_the_access_tokens_session(client, make_user, login):
    user = await make_user()
    tokens = await login(user.email)
    other = await login(user.email)
    assert (await client.post(LOGOUT, json={}, headers=bearer(tokens["access_token"]))).status_code == 204
    assert (await client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})).status_code == 401
    assert (await client.post(REFRESH, json={"refresh_token": other["refresh_token"]})).status_code == 200


async def test_body_token_wins_over_the_cookie(client, make_user, login):
    user = await make_user()
    await cookie_login(client, user.email)
    tokens = await login(user.email)
    r = await client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200
    assert r.json()["refresh_token"]  # answered in the body, as for any API client
    assert not r.headers.get_list("set-cookie")


# --- logout ------------------------------------------------------------------------------------------------


async def test_logout_revokes_the_session(client, make_user, login):
    user = await make_user()
    tokens = await login(user.email)
    other = await login(user.email)
    r = await client.post(
        LOGOUT, json={"refresh_token": tokens["refresh_token"]}, headers=bearer(tokens["access_token"])
    )
    assert r.status_code == 204, r.text
    assert (await client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})).status_code == 401
    # Logout is per device: the other session survives.
    assert (await client.post(REFRESH, json={"refresh_token": other["refresh_token"]})).status_code == 200


async def test_logout_revokes_the_rotated_family(client, make_user, login):
    tokens = await login((await make_user()).email)
    rotated = (await client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})).json()
    r = await client.post(
        LOGOUT, json={"refresh_token": tokens["refresh_token"]}, headers=bearer(tokens["access_token"])
    )
    assert r.status_code == 204
    assert (await client.post(REFRESH, json={"refresh_token": rotated["refresh_token"]})).status_code == 401


async def test_logout_with_another_users_refresh_token_is_401(client, make_user, login):
    mine = await login((await make_user()).email)
    theirs = await login((await make_user()).email)
    r = await client.post(LOGOUT, json={"refresh_token": theirs["refresh_token"]}, headers=bearer(mine["access_token"]))
    assert r.status_code == 401
    assert (await client.post(REFRESH, json={"refresh_token": theirs["refresh_token"]})).status_code == 200


async def test_logout_needs_an_access_token(client, make_user, login):
    tokens = await login((await make_user()).email)
    r = await client.post(LOGOUT, json={"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401
    assert (await client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})).status_code == 200


# --- password change ---------------------------------------------------------------------------------------


async def test_password_change_revokes_other_sessions_only(client, make_user, login):
    user = await make_user()
    current = await login(user.email)
    other = await login(user.email)
    new_password = "a-brand-new-long-password"
    r = await client.put(
        PASSWORD_URL,
        json={"current_password": PASSWORD, "new_password": new_password},
        headers=bearer(current["access_token"]),
    )
    assert r.status_code == 200, r.text
    assert r.json()["revoked_sessions"] == 1

    assert (await client.post(REFRESH, json={"refresh_token": other["refresh_token"]})).status_code == 401
    assert (await client.post(REFRESH, json={"refresh_token": current["refresh_token"]})).status_code == 200

    old = await client.post(LOGIN, json={"login": user.email, "password": PASSWORD})
    assert old.status_code == 401
    assert (await client.post(LOGIN, json={"login": user.email, "password": new_password})).status_code == 200


async def test_password_change_with_wrong_current_password_is_401(client, make_user, login):
    user = await make_user()
    tokens = await login(user.email)
    other = await login(user.email)
    r = await client.put(
        PASSWORD_URL,
        json={"current_password": "wrong-password-here", "new_password": "a-brand-new-long-password"},
        headers=bearer(tokens["access_token"]),
    )
    assert r.status_code == 401
    # Nothing changed: the old password works and no session was revoked.
    assert (await client.post(REFRESH, json={"refresh_token": other["refresh_token"]})).status_code == 200
    assert (await client.post(LOGIN, json={"login": user.email, "password": PASSWORD})).status_code == 200


async def test_password_change_to_a_short_password_is_422(client, make_user, login):
    user = await make_user()
    tokens = await login(user.email)
    r = await client.put(
        PASSWORD_URL,
        json={"current_password": PASSWORD, "new_password": "short"},
        headers=bearer(tokens["access_token"]),
    )
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["loc"] == ["body", "new_password"]
    assert (await client.post(LOGIN, json={"login": user.email, "password": PASSWORD})).status_code == 200


# --- rate limiting -----------------------------------------------------------------------------------------


async def test_account_is_rate_limited_after_max_failures(client, make_user, settings):
    user = await make_user()
    assert settings.login_max_failures == 5
    for _ in range(5):
        r = await client.post(LOGIN, json={"login": user.email, "password": "wrong-password"})
        assert r.status_code == 401
    r = await client.post(LOGIN, json={"login": user.email, "password": PASSWORD})
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    retry_after = int(r.headers["Retry-After"])
    assert 0 < retry_after <= settings.login_window_seconds
    # Another account from the same address is not affected.
    other = await make_user()
    assert (await client.post(LOGIN, json={"login": other.email, "password": PASSWORD})).status_code == 200


async def test_account_limit_holds_whichever_identifier_is_used(client, make_user):
    user = await make_user(username=f"bob-{uuid.uuid4().hex[:6]}")
    for i in range(5):
        ident = user.email if i % 2 else user.username
        r = await client.post(LOGIN, json={"login": ident, "password": "wrong-password"})
        assert r.status_code == 401
    for ident in (user.email, user.username, f"  {user.email.upper()} "):
        r = await client.post(LOGIN, json={"login": ident, "password": PASSWORD})
        assert r.status_code == 429, (ident, r.text)


async def test_success_resets_the_account_counter(client, make_user):
    user = await make_user()
    for _ in range(4):
        assert (await client.post(LOGIN, json={"login": user.email, "password": "nope-nope"})).status_code == 401
    assert (await client.post(LOGIN, json={"login": user.email, "password": PASSWORD})).status_code == 200
    for _ in range(4):
        assert (await client.post(LOGIN, json={"login": user.email, "password": "nope-nope"})).status_code == 401
    assert (await client.post(LOGIN, json={"login": user.email, "password": PASSWORD})).status_code == 200


async def test_ip_is_rate_limited_across_accounts(client, make_user):
    client.app.state.autoplat.limiter.ip_max_failures = 3
    for _ in range(3):
        r = await client.post(LOGIN, json={"login": f"{uuid.uuid4().hex}@example.com", "password": "wrong"})
        assert r.status_code == 401
    user = await make_user()
    r = await client.post(LOGIN, json={"login": user.email, "password": PASSWORD})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
    assert "address" in r.json()["error"]["message"]


# --- inactive users, fresh reads ---------------------------------------------------------------------------


async def test_inactive_user_cannot_log_in(client, make_user):
    user = await make_user(is_active=False)
    r = await client.post(LOGIN, json={"login": user.email, "password": PASSWORD})
    unknown = await client.post(LOGIN, json={"login": "nobody@example.com", "password": PASSWORD})
    assert r.status_code == 401
    assert r.json()["error"]["message"] == unknown.json()["error"]["message"]


async def test_deactivated_user_loses_refresh_and_access(client, make_user, login, sessions):
    user = await make_user()
    tokens = await login(user.email)
    await set_user(sessions, user.id, is_active=False)
    assert (await client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})).status_code == 401
    assert (await client.get(ME, headers=bearer(tokens["access_token"]))).status_code == 401


async def test_a_role_change_ends_the_session_and_the_next_login_has_the_new_role(client, make_user, login):
    admin = await make_user("admin")
    user = await make_user("viewer")
    tokens = await login(user.email)
    before = (await client.get(ME, headers=bearer(tokens["access_token"]))).json()
    assert before["role"] == "viewer"
    assert "modules:write" not in before["permissions"]
    admin_tokens = await login(admin.email)
    r = await client.patch(
        f"/api/v1/users/{user.id}", json={"role": "operator"}, headers=bearer(admin_tokens["access_token"])
    )
    assert r.status_code == 200, r.text
    assert (await client.get(ME, headers=bearer(tokens["access_token"]))).status_code == 401
    assert (await client.post(REFRESH, json={"refresh_token": tokens["refresh_token"]})).status_code == 401
    after = (await client.get(ME, headers=bearer((await login(user.email))["access_token"]))).json()
    assert after["role"] == "operator"
    assert "modules:write" in after["permissions"]


async def test_demotion_takes_effect_at_once(client, make_user, login):
    user = await make_user("admin")
    other = await make_user("admin")
    tokens = await login(user.email)
    assert (await client.get("/api/v1/users", headers=bearer(tokens["access_token"]))).status_code == 200
    other_tokens = await login(other.email)
    r = await client.patch(
        f"/api/v1/users/{user.id}", json={"role": "viewer"}, headers=bearer(other_tokens["access_token"])
    )
    assert r.status_code == 200, r.text
    assert (await client.get("/api/v1/users", headers=bearer(tokens["access_token"]))).status_code == 401


# --- registration ------------------------------------------------------------------------------------------


async def test_registration_is_off_by_default(client):
    r = await client.post(REGISTER, json={"email": "new@example.com", "password": "long-enough-password"})
    assert r.status_code == 403
    assert "AUTOPLAT_ALLOW_REGISTRATION" in r.json()["error"]["message"]
    login = await client.post(LOGIN, json={"login": "new@example.com", "password": "long-enough-password"})
    assert login.status_code == 401


async def test_registration_when_enabled_creates_a_viewer(client, settings):
    settings.allow_registration = True
    r = await client.post(
        REGISTER, json={"email": "New@Example.com", "password": "long-enough-password", "username": "newbie"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["role"] == "viewer"
    assert r.json()["email"] == "new@example.com"
    tokens = await client.post(LOGIN, json={"login": "newbie", "password": "long-enough-password"})
    assert tokens.status_code == 200
    dup = await client.post(REGISTER, json={"email": "new@example.com", "password": "long-enough-password"})
    assert dup.status_code == 409


async def test_registration_cannot_choose_a_role_or_a_weak_password(client, settings):
    settings.allow_registration = True
    r = await client.post(
        REGISTER, json={"email": "x@example.com", "password": "long-enough-password", "role": "admin"}
    )
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["loc"] == ["body", "role"]
    r = await client.post(REGISTER, json={"email": "x@example.com", "password": "short"})
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["loc"] == ["body", "password"]
    assert (await client.post(LOGIN, json={"login": "x@example.com", "password": "short"})).status_code == 401


async def test_a_stale_cookie_does_not_keep_a_browser_from_signing_out(client, make_user):
    user = await make_user()
    body, _ = await cookie_login(client, user.email)
    client.cookies.clear()
    r = await client.post(LOGOUT, json={}, headers={**bearer(body["access_token"]), "Cookie": "autoplat_refresh=stale"})
    assert r.status_code == 204, r.text
    assert set_cookie(r)["max-age"] == "0"
    # The access token's own session ended instead.
    assert (await client.get(ME, headers=bearer(body["access_token"]))).status_code == 401
