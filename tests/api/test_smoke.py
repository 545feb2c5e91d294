async def test_login_and_me(client, make_user, login):
    user = await make_user("operator")
    tokens = await login(user.email)
    assert tokens["expires_in"] == 900
    r = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "operator"


async def test_unknown_route_error_body(client):
    r = await client.get("/api/v1/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
