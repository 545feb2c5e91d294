"""A registry database outage: a PostgreSQL of this test alone, stopped and started again while runs
are queued, a step ends and clients call the API.

One end-to-end test checks the three promises (docs/deployment.md, "When the database is down"):
runs that start during the outage wait for the database and then run (platform-side failures retry,
apart from the job's attempts, for as long as the run's timeout allows); a step that ends during the
outage keeps its logs and its COMPLETED status; the API answers every request that needs the
database with 503 ``unavailable`` and ``Retry-After``, never a 500 or a dropped connection.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import eventually, free_port
from tests.jobs.helpers import put_module, write_module

CODE = """
from pathlib import Path


def gated(ctx):
    marker = Path(ctx.config["marker"])
    ctx.logger.info("waiting for the marker")
    import time
    while not marker.exists():  # the handler's own wait for the test's marker, not the test's
        time.sleep(0.05)
    ctx.logger.info("released during the outage")
    return {"released": True}


def quick(ctx):
    ctx.logger.info("quick ran")
    return {"n": ctx.config.get("n")}
"""
CONFIG = {"type": "object", "properties": {"marker": {"type": "string"}, "n": {"type": "integer"}}}
JOBS = [
    {"name": "gated", "description": "waits for a marker", "handler": "gated", "config": CONFIG},
    {"name": "quick", "description": "logs and returns", "handler": "quick", "config": CONFIG},
]
#: Faster than the default backoff, and well past its 3.5 s at four attempts: before platform-side
#: failures were retried for the run's whole timeout, a run starting in this outage failed.
RETRY = {"initial_interval_seconds": 0.5, "backoff_coefficient": 2, "maximum_interval_seconds": 2}
OUTAGE_SECONDS = 8
QUEUED_RUNS = 4


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        pytest.fail("PostgreSQL server binaries missing (apt-get install -y postgresql)")
    return Path(found[-1]).parent


class Postgres:
    """A PostgreSQL server of its own (trust auth, no fsync) that can be stopped and started again."""

    def __init__(self, root: Path, port: int) -> None:
        self.bin = _pg_bin()
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = port
        # initdb and postgres refuse to run as root: run them as the postgres user then.
        self.user = "postgres" if os.geteuid() == 0 else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.root = root

    def _run(self, *argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, user=self.user, timeout=60)

    def init(self) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.root}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "synchronous_commit=off",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                user=self.user,
            )

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"postgres exited: {self.log.read_text()[-2000:]}")
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn("postgres"), connect_timeout=2)
            except psycopg.OperationalError:
                return False
            await conn.close()
            return True

        await eventually(ready, timeout=30, what=f"postgres accepting connections on {self.port}")

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # fast shutdown: connections are closed
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)
        self.proc = None

    def dsn(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"


@pytest.fixture
async def postgres() -> AsyncIterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="autoplat-pg-"))
    server = Postgres(root, free_port())
    try:
        await asyncio.to_thread(server.init)
        await server.start()
        async with await psycopg.AsyncConnection.connect(server.dsn("postgres"), autocommit=True) as conn:
            await conn.execute("CREATE DATABASE registry")
        yield server
    finally:
        await server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def platform(postgres: Postgres, temporal_settings: Any, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Migrations, a module, an operator's token and the API under uvicorn, all on ``postgres``."""
    import uvicorn

    from api.app import close_state, create_app, open_state
    from registry.db import create_engine, create_session_factory, unit_of_work
    from registry.migrate import upgrade
    from registry.models import Role
    from registry.services import users
    from registry.services.auth import _issue
    from registry.services.common import Actor

    settings = temporal_settings
    settings.database_url = postgres.dsn("registry").replace("postgresql://", "postgresql+psycopg://", 1)
    # A copy of the session's settings carries their cached ``effective_database_url`` (the shared
    # test database, once any test before this one used it): drop it, or API and worker use that.
    settings.__dict__.pop("effective_database_url", None)
    assert settings.effective_database_url.endswith(f":{postgres.port}/registry")
    settings.heartbeat_timeout_seconds = 2
    settings.redis_prefix = f"{settings.redis_prefix}-{uuid.uuid4().hex[:6]}"
    await upgrade(settings.effective_database_url)
    engine = create_engine(settings.effective_database_url)
    sessions = create_session_factory(engine)
    await put_module(sessions, settings.state_dir, write_module(tmp_path, name="outage", code=CODE, jobs=JOBS))
    async with unit_of_work(sessions) as session:
        user = await users.create_user(
            session=session, email="op@example.com", password="correct-horse-battery", role=Role.operator
        )
        pair = await _issue(
            session=session, settings=settings, user=user, family_id=str(uuid.uuid4()), actor=Actor.system("test")
        )
    state = open_state(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, state=state), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: asyncio.sleep(0, server.started), what="uvicorn started")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield {
                "settings": settings,
                "http": http,
                "headers": {"Authorization": f"Bearer {pair.access_token}"},
            }
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)
        await close_state(state)
        await engine.dispose()


async def _job(http: httpx.AsyncClient, headers: dict[str, str], job_type: str, config: dict[str, Any]) -> str:
    body = {
        "module": "outage",
        "job_type": job_type,
        "name": job_type,
        "schedule": None,
        "timeout_seconds": 60,
        "retry_backoff": RETRY,
        "config": config,
    }
    r = await http.post("/api/v1/jobs", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_a_database_outage_delays_runs_keeps_step_ends_and_answers_503(
    postgres: Postgres, platform: dict[str, Any], temporal_env: Any, tmp_path: Path
) -> None:
    from tests.conftest import running_worker
    from workflows.client import connect
    from workflows.worker import WorkerDeps, build_worker

    http, headers, settings = platform["http"], platform["headers"], platform["settings"]
    marker = tmp_path / "release"
    gated = await _job(http, headers, "gated", {"marker": str(marker)})
    quick = await _job(http, headers, "quick", {"n": 1})

    # A worker that runs one step at a time: the gated step holds it, so the quick runs' steps wait
    # in Temporal's queue and start only once the outage has begun, on a second worker.
    deps = WorkerDeps.open(settings)
    first = build_worker(temporal_env.client, deps, max_concurrent_activities=1, graceful_shutdown_seconds=5)
    first_task = asyncio.create_task(first.run())
    try:
        run = (await http.post(f"/api/v1/jobs/{gated}/execute", headers=headers)).json()

        async def gated_running() -> bool:
            row = (await http.get(f"/api/v1/executions/{run['id']}", headers=headers)).json()
            return bool(row["steps"]) and row["steps"][0]["status"] == "RUNNING"

        await eventually(gated_running, timeout=30, what="the gated step running")
        queued = []
        for _ in range(QUEUED_RUNS):
            r = await http.post(f"/api/v1/jobs/{quick}/execute", headers=headers)
            assert r.status_code == 202, r.text
            queued.append(r.json()["id"])

        await postgres.stop()
        started = asyncio.get_running_loop().time()
        # A second worker needs its own client connection (one worker per client and task queue).
        async with running_worker(settings, await connect(settings)):
            marker.write_text("go")  # the gated step ends while the database is down

            # Every request that needs the database: 503 unavailable with Retry-After, none dropped.
            calls = [
                ("GET", "/api/v1/executions", None),
                ("GET", f"/api/v1/executions/{run['id']}", None),
                ("GET", f"/api/v1/executions/{run['id']}/logs", None),
                ("GET", "/api/v1/jobs", None),
                ("GET", f"/api/v1/jobs/{quick}", None),
                ("POST", f"/api/v1/jobs/{quick}/execute", None),
                ("POST", "/api/v1/events", {"name": "outage.tested", "payload": {}}),
                ("GET", "/api/v1/events", None),
                ("GET", "/api/v1/modules", None),
                ("POST", "/api/v1/auth/login", {"login": "op@example.com", "password": "correct-horse-battery"}),
            ]
            for method, path, body in calls:
                r = await http.request(method, path, json=body, headers=headers)
                assert r.status_code == 503, (method, path, r.status_code, r.text)
                assert r.json()["error"]["code"] == "unavailable", r.text
                assert int(r.headers["Retry-After"]) > 0, (path, r.headers)
            ready = await http.get("/health/ready")
            assert ready.status_code == 503, ready.text

            # Keep the database away long enough that the old bounded retries would have given up.
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (asyncio.get_running_loop().time() - started)))
            await postgres.start()

            async def all_final() -> list[dict[str, Any]] | None:
                rows = []
                for execution_id in [run["id"], *queued]:
                    r = await http.get(f"/api/v1/executions/{execution_id}", headers=headers)
                    if r.status_code != 200:
                        return None
                    row = r.json()
                    if row["status"] in ("PENDING", "RUNNING"):
                        return None
                    rows.append(row)
                return rows

            rows = await eventually(all_final, timeout=40, what="every run ended after the outage")
    finally:
        await first.shutdown()
        await asyncio.gather(first_task, return_exceptions=True)
        await deps.close()

    ended, *quick_rows = rows
    assert ended["status"] == "COMPLETED", ended
    assert [(s["status"], s["attempts"]) for s in ended["steps"]] == [("COMPLETED", 1)], ended["steps"]
    messages = [e["message"] for e in ended["logs"]]
    assert "waiting for the marker" in messages and "released during the outage" in messages, messages
    for row in quick_rows:
        assert row["status"] == "COMPLETED", row
        assert row["result"] == {"n": 1}
        assert [(s["status"], s["attempts"]) for s in row["steps"]] == [("COMPLETED", 1)], row["steps"]
        assert "quick ran" in [e["message"] for e in row["logs"]]
    # And the API serves again.
    assert (await http.get("/api/v1/executions", headers=headers)).status_code == 200
