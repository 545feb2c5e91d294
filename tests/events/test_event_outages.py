"""Real outages: a Temporal dev server stopped and restarted while events arrive, a Redis server
stopped and restarted, and two API processes dispatching the same outbox."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEMPORAL_BIN, api_client, eventually, free_port
from tests.events.helpers import add_job, executions_for, get_event, listening_module


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


class Process:
    """A server process that can be stopped and started again with the same arguments."""

    def __init__(
        self,
        argv: list[str],
        port: int,
        log: Path,
        env: dict[str, str] | None = None,
        ready: Callable[[int], Awaitable[bool]] | None = None,
    ) -> None:
        self.argv, self.port, self.log, self.env = argv, port, log, env
        #: Beyond a listening port: Temporal's frontend answers "not healthy yet" for a while.
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)

        async def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited: {self.log.read_text()[-2000:]}")
            return await port_open(self.port) and (self.ready is None or await self.ready(self.port))

        await eventually(up, timeout=60, what=f"{Path(self.argv[0]).name} ready on {self.port}")

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)
        self.proc = None


@pytest.fixture
async def headers(make_user: Any, sessions: Any, settings: Any) -> dict[str, str]:
    """An operator's token, minted without the ``client`` fixture: that fixture runs an API app
    whose background dispatcher would compete with the ones these tests start."""
    from registry.db import unit_of_work
    from registry.services.auth import _issue
    from registry.services.common import Actor

    user = await make_user("operator")
    async with unit_of_work(sessions) as session:
        pair = await _issue(
            session=session, settings=settings, user=user, family_id=str(uuid.uuid4()), actor=Actor.system("test")
        )
    return {"Authorization": f"Bearer {pair.access_token}"}


async def temporal_ready(port: int) -> bool:
    """The dev server's frontend takes clients (a listening port is not enough)."""
    from temporalio.client import Client

    try:
        await Client.connect(f"127.0.0.1:{port}")
    except RuntimeError:  # "Frontend is not healthy yet", or not listening
        return False
    return True


@pytest.fixture
async def own_temporal(tmp_path: Path) -> AsyncIterator[Process]:
    """A Temporal dev server of this test alone, with its history in a file that survives a restart."""
    port = free_port()
    argv = [
        str(TEMPORAL_BIN),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--headless",
        "--db-filename",
        str(tmp_path / "temporal.db"),
        "--log-level",
        "error",
        "--dynamic-config-value",
        "matching.numTaskqueueReadPartitions=1",
        "--dynamic-config-value",
        "matching.numTaskqueueWritePartitions=1",
    ]
    server = Process(argv, port, tmp_path / "temporal.log", ready=temporal_ready)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[Process]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = Process(argv, port, tmp_path / "redis.log")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def serve(settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The API app with its lifespan (so its background event dispatcher runs)."""
    async with api_client(settings) as http:
        yield http


async def one_completed_run_per_event(sessions: Any, event_ids: list[str], job_id: str) -> bool:
    for event_id in event_ids:
        rows = await executions_for(sessions, event_id)
        if len(rows) > 1:
            raise AssertionError(f"event {event_id} started {len(rows)} runs")
        if not rows or rows[0].status != "COMPLETED" or rows[0].job_id != job_id:
            return False
        if (await get_event(sessions, event_id)).dispatch_status != "DISPATCHED":
            return False
    return True


async def test_temporal_stopped_while_events_arrive_then_restarted(own_temporal, settings, sessions, tmp_path, headers):
    from temporalio.client import Client

    from workflows.client import DATA_CONVERTER, ensure_search_attributes
    from workflows.worker import WorkerDeps, build_worker

    settings.temporal_address = f"127.0.0.1:{own_temporal.port}"
    settings.task_queue = f"autoplat-outage-{uuid.uuid4().hex[:8]}"
    settings.heartbeat_timeout_seconds = 2
    temporal = await Client.connect(settings.temporal_address, data_converter=DATA_CONVERTER)
    await ensure_search_attributes(temporal, settings.temporal_namespace)
    module = await listening_module(sessions, settings.state_dir, tmp_path)
    job = await add_job(sessions, module, "audit", event_triggers=["health.*"])
    deps = WorkerDeps.open(settings)
    worker = build_worker(temporal, deps, graceful_shutdown_seconds=5)
    worker_task = asyncio.create_task(worker.run())
    api = serve(settings)
    http = await anext(api)
    try:
        await own_temporal.stop()
        event_ids = []
        for n in range(3):
            r = await http.post("/api/v1/events", json={"name": "health.alert", "payload": {"n": n}}, headers=headers)
            assert r.status_code == 201, r.text  # stored while Temporal is down
            event_ids.append(r.json()["id"])

        async def all_failed_once() -> bool:
            events = [await get_event(sessions, e) for e in event_ids]
            return all(e.dispatch_status == "PENDING" and e.dispatch_attempts >= 1 for e in events)

        await eventually(all_failed_once, timeout=30, what="dispatch attempts failing while Temporal is down")
        for event_id in event_ids:
            assert await executions_for(sessions, event_id) == []

        await own_temporal.start()

        async def delivered() -> bool:
            return await one_completed_run_per_event(sessions, event_ids, job.id)

        # The dispatcher's backoff (1 s, 2 s, 4 s ...) decides when it tries again.
        await eventually(delivered, timeout=60, what="each event delivered once after Temporal came back")
        # Exactly once on Temporal's side too: one workflow per (event, job).
        seen = [w async for w in temporal.list_workflows(f"TaskQueue = '{settings.task_queue}'")]
        assert len(seen) == len({w.id for w in seen}) == len(event_ids)
    finally:
        await api.aclose()
        worker_task.cancel()
        await asyncio.gather(worker_task, return_exceptions=True)
        await deps.close()


async def test_redis_stopped_events_still_trigger_then_the_stream_resumes(
    own_redis, worker, settings, sessions, tmp_path, headers
):
    settings.redis_url = f"redis://127.0.0.1:{own_redis.port}/0"
    module = await listening_module(sessions, settings.state_dir, tmp_path)
    job = await add_job(sessions, module, "audit", event_triggers=["health.*"])
    api = serve(settings)
    http = await anext(api)
    try:
        assert (await http.get("/health/ready")).json()["checks"]["redis"] == "ok"
        await own_redis.stop()
        r = await http.post("/api/v1/events", json={"name": "health.alert", "payload": {}}, headers=headers)
        assert r.status_code == 201, r.text
        event_id = r.json()["id"]

        async def delivered() -> bool:
            return await one_completed_run_per_event(sessions, [event_id], job.id)

        await eventually(delivered, timeout=30, what="event triggered its job without Redis")
        ready = await http.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
        assert (await http.get("/api/v1/events/stream", headers=headers)).status_code == 503

        await own_redis.start()

        async def recovered() -> bool:
            body = (await http.get("/health/ready")).json()
            return body["status"] == "ok"

        await eventually(recovered, timeout=30, what="readiness back to ok after Redis restarted")
    finally:
        await api.aclose()


def api_process(settings: Any, port: int, log: Path) -> Process:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "AUTOPLAT_DEV_MODE": "false",
        "AUTOPLAT_DATABASE_URL": settings.effective_database_url,
        "AUTOPLAT_REDIS_URL": settings.redis_url,
        "AUTOPLAT_REDIS_PREFIX": settings.redis_prefix,
        "AUTOPLAT_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "AUTOPLAT_STATE_DIR": str(settings.state_dir),
        "AUTOPLAT_TEMPORAL_ADDRESS": settings.temporal_address,
        "AUTOPLAT_TASK_QUEUE": settings.task_queue,
    }
    argv = [sys.executable, "-m", "autoplat.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    return Process(argv, port, log, env=env)


@pytest.fixture
def two_api_ports() -> Iterator[tuple[int, int]]:
    yield free_port(), free_port()


async def test_two_api_processes_start_each_event_job_pair_once(
    worker, temporal_settings, sessions, tmp_path, headers, two_api_ports
):
    module = await listening_module(sessions, temporal_settings.state_dir, tmp_path)
    # Two jobs of a type that does not listen to job.* events, so the runs trigger nothing else.
    first = await add_job(sessions, module, "refresh", name="first", event_triggers=["data.**"])
    second = await add_job(sessions, module, "refresh", name="second", event_triggers=["data.**"])
    apis = [api_process(temporal_settings, port, tmp_path / f"api-{port}.log") for port in two_api_ports]
    await asyncio.gather(*(a.start() for a in apis))
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            # Every event is posted to both processes at once, with the same id.
            ids = [f"dup-{uuid.uuid4().hex[:8]}-{n}" for n in range(8)]
            posts = [
                http.post(
                    f"http://127.0.0.1:{port}/api/v1/events",
                    json={"id": event_id, "name": "data.synced", "payload": {"n": event_id}},
                    headers=headers,
                )
                for event_id in ids
                for port in two_api_ports
            ]
            responses = await asyncio.gather(*posts)
            assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]

        async def delivered() -> bool:
            for event_id in ids:
                rows = await executions_for(sessions, event_id)
                if len(rows) > 2 or len({r.job_id for r in rows}) != len(rows):
                    raise AssertionError(f"event {event_id}: {[(r.job_id, r.workflow_id) for r in rows]}")
                if sorted(r.job_id for r in rows if r.status == "COMPLETED") != sorted([first.id, second.id]):
                    return False
            return True

        await eventually(delivered, timeout=60, what="every (event, job) pair ran once")
    finally:
        await asyncio.gather(*(a.stop() for a in apis))
