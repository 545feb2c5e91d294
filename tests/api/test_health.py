"""Liveness and readiness: 503 naming what is down, 200 "degraded" with Redis alone down, 200 when all answer."""

from __future__ import annotations

from redis.asyncio import Redis

from registry.db import create_engine


async def test_live(client):
    r = await client.get("/health/live")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_ready_is_503_naming_temporal_when_it_is_unreachable(client):
    # The test settings point Temporal at 127.0.0.1:1, where nothing listens.
    r = await client.get("/health/ready")
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "unavailable"
    assert "temporal" in error["message"]
    assert "redis" not in error["message"] and "database" not in error["message"]
    assert error["details"]["checks"] == {"database": "ok", "redis": "ok", "temporal": "down"}
    # Reasons (hosts, users) are logged, not shown to anonymous callers.
    assert "errors" not in error["details"] and "127.0.0.1" not in str(error)


async def test_ready_is_200_degraded_when_only_redis_is_down(client, temporal_env):
    state = client.app.state.autoplat
    state.set_temporal(temporal_env.client)
    original = state.redis
    state.redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1, socket_timeout=1)
    try:
        r = await client.get("/health/ready")
    finally:
        await state.redis.aclose()
        state.redis = original
    # Events are still stored and jobs triggered without Redis: the API stays in rotation.
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "degraded"
    assert body["checks"] == {"database": "ok", "redis": "down", "temporal": "ok"}
    assert len(body["degraded"]) == 1 and "live streams" in body["degraded"][0]


async def test_ready_is_503_naming_the_database_when_it_is_unreachable(client, temporal_env):
    state = client.app.state.autoplat
    state.set_temporal(temporal_env.client)
    original = state.engine
    state.engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    try:
        r = await client.get("/health/ready")
    finally:
        await state.engine.dispose()
        state.engine = original
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["details"]["checks"] == {"database": "down", "redis": "ok", "temporal": "ok"}
    assert "database" in error["message"]


async def test_ready_names_everything_that_is_down(client):
    state = client.app.state.autoplat
    original = state.redis
    state.redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1, socket_timeout=1)
    try:
        r = await client.get("/health/ready")
    finally:
        await state.redis.aclose()
        state.redis = original
    assert r.status_code == 503
    assert r.json()["error"]["details"]["checks"] == {"database": "ok", "redis": "down", "temporal": "down"}
    assert "redis" in r.json()["error"]["message"] and "temporal" in r.json()["error"]["message"]


async def test_ready_is_200_when_everything_answers(client, temporal_env):
    client.app.state.autoplat.set_temporal(temporal_env.client)
    r = await client.get("/health/ready")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok", "temporal": "ok"}}


async def test_ready_connects_to_temporal_from_settings(client, temporal_env, settings):
    # Without a pre-set client the API dials the configured address itself (lazily, on first use).
    settings.temporal_address = temporal_env.client.service_client.config.target_host
    r = await client.get("/health/ready")
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["temporal"] == "ok"


async def test_health_ignores_tokens(client):
    # A stale token in a probe's config must not make the probe fail.
    r = await client.get("/health/live", headers={"Authorization": "Bearer garbage"})
    assert r.status_code == 200


async def test_concurrent_health_checks_share_one_check(client, monkeypatch):
    """Public routes: 20 requests at once cost one round of dependency checks, not 20."""
    import asyncio

    from api.routes import health
    from tests.conftest import eventually

    calls = entered = 0
    gate = asyncio.Event()
    check_all = health._check_all

    async def counted(state):
        nonlocal calls
        calls += 1
        await gate.wait()
        return {"database": (None, 1.0), "redis": (None, 1.0), "temporal": (None, 1.0)}

    async def entering(state):
        nonlocal entered
        entered += 1
        return await check_all(state)

    monkeypatch.setattr(health, "_check_now", counted)
    monkeypatch.setattr(health, "_check_all", entering)
    requests = [asyncio.ensure_future(client.get(path)) for path in ["/health/ready", "/health"] * 10]

    async def all_waiting() -> bool:
        return entered == 20

    await eventually(all_waiting, timeout=10, what="20 requests waiting on the health check")
    gate.set()
    answers = await asyncio.gather(*requests)
    assert [r.status_code for r in answers] == [200] * 20 and calls == 1
    # A later request checks again (never an old answer).
    assert (await client.get("/health/ready")).status_code == 200 and calls == 2
