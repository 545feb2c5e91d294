"""The platform as deployed, for the benchmarks that drive it over HTTP: a Temporal dev server and a
PostgreSQL database of their own, the API (``autoplat api``) and a worker (``autoplat worker``) as
subprocesses. Everything is stopped and dropped on the way out, also on errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.jobs_throughput import DevServer, create_database, drop_database, free_ports

ROOT = Path(__file__).resolve().parents[1]
JWT_SECRET = "bench-" + uuid.uuid4().hex + uuid.uuid4().hex


@dataclass
class Stack:
    workdir: Path
    server: DevServer
    db_name: str
    settings: Any
    engine: Any
    sessions: Any
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """What ``autoplat api`` and ``autoplat worker`` get: this stack's settings."""
        s = self.settings
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AUTOPLAT_DEV_MODE": "false",
            "AUTOPLAT_DATABASE_URL": s.database_url,
            "AUTOPLAT_JWT_SECRET": s.jwt_secret.get_secret_value(),
            "AUTOPLAT_STATE_DIR": str(s.state_dir),
            "AUTOPLAT_TEMPORAL_ADDRESS": s.temporal_address,
            "AUTOPLAT_TASK_QUEUE": s.task_queue,
            "AUTOPLAT_REDIS_PREFIX": s.redis_prefix,
            "AUTOPLAT_MAINTENANCE_SCHEDULE": "false",
            "AUTOPLAT_HANDLER_ISOLATION": s.handler_isolation,
        }

    def spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        with (self.workdir / log).open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "autoplat.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    async def start_api(self, workers: int = 1) -> tuple[str, subprocess.Popen[bytes]]:
        """The API on a free port, ready; answers its base URL and process."""
        (port,) = free_ports(1)
        log = f"api-{port}.log"
        proc = self.spawn("api", "--port", str(port), "--workers", str(workers), log=log)
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, proc, self.workdir / log)
        return base, proc

    def start_worker(self) -> subprocess.Popen[bytes]:
        return self.spawn("worker", log=f"worker-{len(self.procs)}.log")


@asynccontextmanager
async def platform_stack(
    prefix: str, *, server: DevServer | None = None, isolation: str = "process"
) -> AsyncIterator[Stack]:
    """A migrated database, settings for it and a Temporal dev server (``server``: one already
    running, left running). Processes started through the stack are stopped on the way out."""
    from registry.db import create_engine, create_session_factory
    from registry.migrate import upgrade
    from registry.settings import Settings
    from workflows.client import ensure_search_attributes

    workdir = Path(tempfile.mkdtemp(prefix=f"autoplat-{prefix}-"))
    own_server = server is None
    if server is None:
        server = DevServer(workdir)
        server.start()
    db_name, db_url = create_database()
    stack: Stack | None = None
    try:
        client = await server.connect()
        await ensure_search_attributes(client, "default")
        settings = Settings(
            dev_mode=False,
            database_url=db_url,
            jwt_secret=JWT_SECRET,
            state_dir=workdir / "state",
            task_queue=f"{prefix}-{uuid.uuid4().hex[:8]}",
            temporal_address=server.address,
            redis_prefix=f"{prefix}-{uuid.uuid4().hex[:8]}",
            maintenance_schedule=False,
            handler_isolation=isolation,
        )
        await upgrade(settings.effective_database_url)
        engine = create_engine(settings.effective_database_url)
        stack = Stack(workdir, server, db_name, settings, engine, create_session_factory(engine))
        yield stack
    finally:
        if stack is not None:
            stop(stack.procs)
            await stack.engine.dispose()
        if own_server:
            server.stop()
        drop_database(db_name)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"API exited: {log.read_text()[-2000:]}")
            try:
                if (await http.get(f"{base}/health/ready")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"API not ready after {timeout}s: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.2)


async def register_module(
    sessions: Any, state_dir: Path, root: Path, *, manifest: dict[str, Any], files: dict[str, str]
) -> None:
    """Write a module (``files``: path in its folder → text) and register it ENABLED straight in the
    database, as the registry's install would."""
    from registry import codestore
    from registry.db import unit_of_work
    from registry.models import Module, ModuleStatus, ModuleVersion

    name, version = manifest["name"], manifest["version"]
    folder = root / f"{name}-{version}"
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    data, sha = codestore.pack_folder(folder)
    path = codestore.materialize(state_dir, name, version, sha, data)
    async with unit_of_work(sessions) as session:
        module = Module(
            name=name,
            display_name=manifest.get("displayName", name),
            version=version,
            manifest=manifest,
            status=ModuleStatus.ENABLED.value,
            code_path=str(path),
            bundle_sha256=sha,
        )
        session.add(module)
        await session.flush()
        session.add(
            ModuleVersion(
                module_id=module.id,
                version=version,
                manifest=manifest,
                code_path=str(path),
                bundle_sha256=sha,
                bundle=data,
                bundle_size=len(data),
            )
        )


async def session_tokens(sessions: Any, settings: Any, email: str = "bench@example.com") -> tuple[str, str]:
    """An operator's access and refresh tokens, minted in the database."""
    from registry.db import unit_of_work
    from registry.models import Role
    from registry.services import users
    from registry.services.auth import _issue
    from registry.services.common import Actor

    async with unit_of_work(sessions) as session:
        user = await users.create_user(session=session, email=email, password=uuid.uuid4().hex, role=Role.operator)
        pair = await _issue(
            session=session, settings=settings, user=user, family_id=str(uuid.uuid4()), actor=Actor.system("bench")
        )
    return pair.access_token, pair.refresh_token
