"""Password guessing and what reaches the user table: forwarded addresses believed only from trusted
proxies, concurrent guesses counted one by one, the owner's pass through a throttled account, the
password change limited like a login, common and trivial passwords refused, control characters refused
in names."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.conftest import PASSWORD

LOGIN = "/api/v1/auth/login"
PASSWORD_URL = "/api/v1/auth/me/password"
USERS = "/api/v1/users"
REGISTER = "/api/v1/auth/register"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def limiter_of(client: Any) -> Any:
    return client.app.state.autoplat.limiter


async def attempt(client: Any, login: str, password: str, via: str | None = None) -> int:
    """A login; ``via`` is the address a proxy in front would report in X-Forwarded-For."""
    headers = {"X-Forwarded-For": via} if via else {}
    r = await client.post(LOGIN, json={"login": login, "password": password}, headers=headers)
    assert r.status_code in (200, 401, 429), r.text
    if r.status_code == 429:
        assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["Retry-After"]) > 0
    return r.status_code


@pytest.fixture
def behind_proxy(settings: Any) -> None:
    """The test client's peer (127.0.0.1) is a trusted proxy: X-Forwarded-For picks the client."""
    settings.trusted_proxies = ["127.0.0.0/8"]


# --- X-Forwarded-For ------------------------------------------------------------------------------------------


async def test_forwarded_for_is_ignored_without_trusted_proxies(client, make_user, settings):
    assert settings.trusted_proxies == []
    limiter_of(client).ip_max_failures = 3
    for i in range(3):
        assert await attempt(client, f"{uuid.uuid4().hex}@example.com", "wrong", via=f"198.51.100.{i}") == 401
    # Every attempt came from the peer, whatever the header claimed: the address is spent.
    user = await make_user()
    assert await attempt(client, user.email, PASSWORD, via="198.51.100.99") == 429


async def test_forwarded_for_names_the_client_behind_a_trusted_proxy(client, make_user, behind_proxy):
    limiter_of(client).ip_max_failures = 3
    for _ in range(3):
        assert await attempt(client, f"{uuid.uuid4().hex}@example.com", "wrong", via="198.51.100.7") == 401
    user = await make_user()
    assert await attempt(client, user.email, PASSWORD, via="198.51.100.7") == 429
    assert await attempt(client, user.email, PASSWORD, via="198.51.100.8") == 200


async def test_a_client_cannot_pick_its_address_by_prepending_hops(client, make_user, behind_proxy, admin_headers):
    limiter_of(client).ip_max_failures = 2
    for fake in ("10.1.1.1", "10.2.2.2"):
        # The proxy appends the real address; what the client wrote itself is further left.
        assert await attempt(client, f"{uuid.uuid4().hex}@x.org", "wrong", via=f"{fake}, 198.51.100.9") == 401
    user = await make_user()
    assert await attempt(client, user.email, PASSWORD, via="10.3.3.3, 198.51.100.9") == 429
    # A chain of trusted proxies is walked to the first untrusted hop; the audit log records it.
    assert await attempt(client, user.email, PASSWORD, via="198.51.100.10, 127.0.0.5") == 200
    audit = await client.get(
        "/api/v1/audit", params={"action": "auth.login", "actor_id": user.id}, headers=admin_headers
    )
    assert [row["ip"] for row in audit.json()["items"]] == ["198.51.100.10"]


# --- throttling -----------------------------------------------------------------------------------------------


async def test_concurrent_wrong_passwords_are_counted_one_by_one(client, make_user, settings):
    user = await make_user()
    statuses = await asyncio.gather(*(attempt(client, user.email, "wrong-password") for _ in range(30)))
    # Only the account's budget was even checked; the rest were refused before any password check.
    assert sorted(statuses) == [401] * settings.login_max_failures + [429] * (30 - settings.login_max_failures)
    key = limiter_of(client)._attempt(f"user:{user.id}", None).account_key
    assert int(await client.app.state.autoplat.redis.get(key)) == 30


async def test_the_owner_passes_a_throttled_account_from_a_known_client(client, make_user, behind_proxy, settings):
    user = await make_user()
    owner, attacker, new_place = "198.51.100.20", "203.0.113.66", "192.0.2.1"
    assert await attempt(client, user.email, PASSWORD, via=owner) == 200
    for _ in range(settings.login_max_failures):
        assert await attempt(client, user.email, "guess-guess", via=attacker) == 401
    # Throttled for the attacker, even with the right password...
    assert await attempt(client, user.email, PASSWORD, via=attacker) == 429
    assert await attempt(client, user.email, "guess-guess", via=attacker) == 429
    # ...and for a place the owner never used; the owner's known address still gets in.
    assert await attempt(client, user.email, PASSWORD, via=new_place) == 429
    assert await attempt(client, user.email, PASSWORD, via=owner) == 200
    assert await attempt(client, user.email, PASSWORD, via=attacker) == 429  # the owner's login lifted nothing
    # The known address has a budget of its own, not an unlimited one.
    for _ in range(settings.login_max_failures):
        assert await attempt(client, user.email, "typo-typo", via=owner) == 401
    assert await attempt(client, user.email, PASSWORD, via=owner) == 429


async def test_the_known_client_pass_can_be_turned_off(client, make_user):
    limiter_of(client).known_client_seconds = 0
    user = await make_user()
    assert await attempt(client, user.email, PASSWORD) == 200
    for _ in range(5):
        assert await attempt(client, user.email, "guess-guess") == 401
    assert await attempt(client, user.email, PASSWORD) == 429


async def test_password_change_is_limited_like_a_login(client, make_user, login):
    limiter_of(client).known_client_seconds = 0
    user = await make_user()
    tokens = await login(user.email)
    new = {"new_password": "a-brand-new-long-password"}
    for _ in range(5):
        r = await client.put(
            PASSWORD_URL, json={"current_password": "guess-guess", **new}, headers=bearer(tokens["access_token"])
        )
        assert r.status_code == 401, r.text
    r = await client.put(
        PASSWORD_URL, json={"current_password": PASSWORD, **new}, headers=bearer(tokens["access_token"])
    )
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) > 0
    # One budget per account: logins are throttled too, and the password did not change.
    assert await attempt(client, user.email, PASSWORD) == 429
    await client.app.state.autoplat.redis.delete(limiter_of(client)._attempt(f"user:{user.id}", None).account_key)
    assert await attempt(client, user.email, PASSWORD) == 200


async def test_a_right_current_password_resets_the_count(client, make_user, login):
    user = await make_user()
    tokens = await login(user.email)
    for _ in range(4):
        r = await client.put(
            PASSWORD_URL,
            json={"current_password": "guess-guess", "new_password": "a-brand-new-long-password"},
            headers=bearer(tokens["access_token"]),
        )
        assert r.status_code == 401
    r = await client.put(
        PASSWORD_URL,
        json={"current_password": PASSWORD, "new_password": "a-brand-new-long-password"},
        headers=bearer(tokens["access_token"]),
    )
    assert r.status_code == 200, r.text
    for _ in range(4):
        assert await attempt(client, user.email, "guess-guess") == 401
    assert await attempt(client, user.email, "a-brand-new-long-password") == 200


# --- passwords ------------------------------------------------------------------------------------------------

WEAK = [
    "password1234",  # on the list
    "Password2024!",  # a listed password padded with digits and punctuation
    "123456qwerty",
    "qwertyqwerty",  # a listed password repeated
    "abcabcabcabc",  # a short pattern repeated
    "aaaaaaaaaaaaaaaa",  # one character
    "            ",  # only whitespace
    "\t\t\t\t\t\t\t\t\t\t\t\t\t",
]


@pytest.mark.parametrize("weak", WEAK)
async def test_weak_passwords_are_refused_everywhere(client, make_user, login, admin_headers, settings, weak):
    user = await make_user()
    tokens = await login(user.email)
    r = await client.put(
        PASSWORD_URL, json={"current_password": PASSWORD, "new_password": weak}, headers=bearer(tokens["access_token"])
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"] == ["body", "new_password"]
    r = await client.post(USERS, json={"email": f"{uuid.uuid4().hex}@x.org", "password": weak}, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"] == ["body", "password"]
    settings.allow_registration = True
    r = await client.post(REGISTER, json={"email": f"{uuid.uuid4().hex}@x.org", "password": weak})
    assert r.status_code == 422, r.text
    assert await attempt(client, user.email, PASSWORD) == 200  # unchanged


def test_the_common_password_list_ships_with_the_package():
    from registry.passwords import common_passwords, password_problem

    assert len(common_passwords()) > 10_000
    assert password_problem("correct-horse-battery-staple") is None
    assert password_problem("iloveyou") is not None  # too short first
    assert "common" in (password_problem("iloveyou2024!!") or "")


# --- control characters in names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "bob\x00@example.com"),
        ("email", "bob@exa\x7fmple.com"),
        ("username", "bob\x00"),
        ("full_name", "Bob\x00"),
        ("full_name", "Bob\x1b[31m"),
        ("full_name", "Bob\nAdmin"),
    ],
)
async def test_control_characters_are_refused_in_names(client, admin_headers, field, value):
    body = {"email": f"{uuid.uuid4().hex}@example.com", "password": PASSWORD, field: value}
    r = await client.post(USERS, json=body, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert r.json()["error"]["details"][0]["loc"][:2] == ["body", field]
    listed = await client.get(USERS, params={"search": "bob"}, headers=admin_headers)
    assert listed.json()["total"] == 0


async def test_control_characters_are_refused_in_updates_and_logins(client, admin_headers, make_user):
    user = await make_user()
    r = await client.patch(f"{USERS}/{user.id}", json={"full_name": "x\x00y"}, headers=admin_headers)
    assert r.status_code == 422, r.text
    r = await client.post(LOGIN, json={"login": "admin\x00", "password": PASSWORD})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["loc"] == ["body", "login"]


async def test_services_refuse_what_the_api_would(session):
    from registry.errors import InvalidInput
    from registry.services import users

    for kwargs in ({"password": "qwertyqwerty"}, {"full_name": "a\x00"}, {"email": "a\x01@b.c"}):
        args = {"email": f"{uuid.uuid4().hex}@example.com", "password": PASSWORD, **kwargs}
        with pytest.raises(InvalidInput):
            await users.create_user(session=session, **args)


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-proxy", "untrusted-peer"])
async def test_forwarded_proto_makes_the_cookie_secure_only_from_a_trusted_proxy(client, make_user, settings, trusted):
    settings.trusted_proxies = ["127.0.0.0/8"] if trusted else []
    user = await make_user()
    r = await client.post(
        LOGIN,
        json={"login": user.email, "password": PASSWORD, "session_cookie": True},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert r.status_code == 200, r.text
    [cookie] = [h for h in r.headers.get_list("set-cookie") if h.startswith("autoplat_refresh=")]
    assert ("; secure" in cookie.lower()) is trusted


@pytest.mark.parametrize(
    ("proxies", "peer", "forwarded", "seen"),
    [
        ([], "127.0.0.1", "198.51.100.1", "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1", "198.51.100.1", "198.51.100.1"),
        (["127.0.0.1"], "127.0.0.1", None, "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1", "not-an-address", "127.0.0.1"),
        (["127.0.0.1", "10.0.0.0/8"], "127.0.0.1", "198.51.100.1, garbage, 10.1.2.3", "10.1.2.3"),
        (["127.0.0.1", "10.0.0.0/8"], "127.0.0.1", "198.51.100.1, 10.1.2.3", "198.51.100.1"),
        (["::1"], "::1", "2001:db8::7", "2001:db8::7"),
        (["10.0.0.0/8"], "127.0.0.1", "198.51.100.1", "127.0.0.1"),  # the peer is not a trusted proxy
    ],
)
def test_client_ip(settings, proxies, peer, forwarded, seen):
    from types import SimpleNamespace

    from starlette.requests import Request

    from api.deps import client_ip

    settings.trusted_proxies = proxies
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    app = SimpleNamespace(state=SimpleNamespace(autoplat=SimpleNamespace(settings=settings)))
    request = Request({"type": "http", "headers": headers, "client": (peer, 5000), "app": app})
    assert client_ip(request) == seen
