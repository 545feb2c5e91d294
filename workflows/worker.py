"""The worker assembly: ``build_worker`` for ``autoplat worker`` and for tests alike."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.worker import Worker

from activities.jobs import JobActivities
from registry import logformat, metrics, tracing
from registry.db import create_engine, create_session_factory
from registry.settings import Settings
from workflows.job import JobWorkflow

log = logging.getLogger(__name__)

#: The longest the SDK holds back an activity's heartbeat. Its default, 80 % of the heartbeat
#: timeout, leaves the last beat a fifth of the timeout (0.4 s of a 2 s timeout, 2 s of the default
#: 10 s) to reach the server before the attempt times out and is retried, on a loaded worker a real
#: risk of running a handler twice. With this, every beat the activities send reaches the server:
#: a step's loop beats three times per timeout (``JobActivities._heartbeats``) and keeps a
#: handler's own ``ctx.heartbeat`` for its next beat, so a step costs one heartbeat RPC per third of
#: the timeout whatever its handler does.
HEARTBEAT_THROTTLE = timedelta(seconds=0.5)


@dataclass
class WorkerDeps:
    """Shared clients of one worker process, built once and closed with it."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    closers: list[Callable[[], Any]] = field(default_factory=list)

    @classmethod
    def open(cls, settings: Settings) -> WorkerDeps:
        engine = create_engine(settings.effective_database_url)
        return cls(settings=settings, engine=engine, sessions=create_session_factory(engine))

    async def close(self) -> None:
        for closer in reversed(self.closers):
            result = closer()
            if asyncio.iscoroutine(result):
                await result
        await self.engine.dispose()


def activity_providers(deps: WorkerDeps) -> list[Any]:
    """Every activity class of the platform, built with the worker's shared clients."""
    providers: list[Any] = [JobActivities(settings=deps.settings, sessions=deps.sessions)]
    for extra in _optional_providers():
        providers.append(extra(deps))
    return providers


def _optional_providers() -> list[Callable[[WorkerDeps], Any]]:
    """Activity classes contributed by later capabilities (services, events, maintenance)."""
    found: list[Callable[[WorkerDeps], Any]] = []
    for name in ("activities.services", "activities.maintenance", "activities.events", "activities.alerts"):
        try:
            module = __import__(name, fromlist=["provider"])
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        found.append(module.provider)
    return found


def workflow_classes() -> list[type]:
    classes: list[type] = [JobWorkflow]
    try:
        from workflows.maintenance import MaintenanceWorkflow

        classes.append(MaintenanceWorkflow)
    except ModuleNotFoundError:
        pass
    from workflows.incident import IncidentWorkflow  # alerting (docs/alerting.md)

    classes.append(IncidentWorkflow)
    return classes


def build_worker(client: Client, deps: WorkerDeps, *, task_queue: str | None = None, **kwargs: Any) -> Worker:
    # httpx logs every request's full URL (query strings and all) at INFO: the platform logs its own,
    # masked, lines instead (ctx.http's execution log, the notification services).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
    # A handler failure is one warning line, not a traceback (it is whole in the execution's error).
    logformat.quiet()
    providers = activity_providers(deps)
    # The job activities get the services factory / log sink of the service providers, if any.
    jobs = next(p for p in providers if isinstance(p, JobActivities))
    metrics.watch_engine(deps.engine, "worker")
    if jobs.pool is not None:
        metrics.watch_handler_pool(jobs.pool)
        deps.closers.append(jobs.pool.close)
        jobs.pool.prewarm()
    for provider in providers:
        hook = getattr(provider, "attach", None)
        if hook is not None:
            hook(jobs)
    activities = [fn for provider in providers for fn in provider.activities()]
    return Worker(
        client,
        task_queue=task_queue or deps.settings.task_queue,
        workflows=workflow_classes(),
        activities=activities,
        graceful_shutdown_timeout=timedelta(seconds=kwargs.pop("graceful_shutdown_seconds", 30)),
        max_concurrent_activities=kwargs.pop("max_concurrent_activities", 100),
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        **kwargs,
    )


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``), then shut down gracefully: running steps finish."""
    from workflows.client import ensure_search_attributes

    serve_metrics(settings)  # before the client: the Temporal runtime must export its metrics
    tracing.configure("autoplat-worker", on=settings.tracing == "on")
    client = await _connect_with_retry(settings)
    await ensure_search_attributes(client, settings.temporal_namespace)
    deps = WorkerDeps.open(settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    worker = build_worker(client, deps)
    log.info("worker polling task queue %s on %s", settings.task_queue, settings.temporal_address)
    try:
        await _maybe_start_maintenance(client, settings)
        startup = asyncio.create_task(_reconcile_at_startup(client, deps))
        async with worker:
            await stop.wait()
            log.info("shutting down: waiting for running steps")
        startup.cancel()
    finally:
        await deps.close()


def serve_metrics(settings: Settings) -> int | None:
    """The worker's ``/metrics`` (docs/observability.md): the platform's metrics and the Temporal
    SDK's (its runtime exports them on a loopback port of its own; they are re-exported here).
    Returns the bound port; None when off or when the port is taken (logged, the worker still runs)."""
    if not settings.worker_metrics_port:
        return None
    try:
        port = int(metrics.serve(settings.worker_metrics_port, settings.worker_metrics_host).server_address[1])
    except OSError as exc:
        log.warning(
            "worker metrics not served on %s:%s: %s", settings.worker_metrics_host, settings.worker_metrics_port, exc
        )
        return None
    metrics.install_temporal_runtime(metrics.free_port())
    log.info("worker metrics on http://%s:%s/metrics", settings.worker_metrics_host, port)
    return port


async def _connect_with_retry(settings: Settings, attempts: int = 60) -> Client:
    from workflows.client import connect

    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return await connect(settings)
        except Exception as exc:  # noqa: BLE001 - Temporal not up yet: keep trying with backoff
            if attempt == attempts:
                raise
            log.warning("Temporal not reachable at %s (%s); retrying", settings.temporal_address, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)
    raise RuntimeError("unreachable")


async def _maybe_start_maintenance(client: Client, settings: Settings) -> None:
    if not settings.maintenance_schedule:
        return
    try:
        from workflows.maintenance import ensure_maintenance_schedule
    except ModuleNotFoundError:
        return
    try:
        await ensure_maintenance_schedule(client, settings)
    except Exception:  # noqa: BLE001 - maintenance is repairable later; the worker must still run
        log.exception("could not ensure the maintenance schedule")


async def _reconcile_at_startup(client: Client, deps: WorkerDeps) -> None:
    from workflows.reconcile import reconcile_schedules, sweep_executions

    try:
        report = await reconcile_schedules(client=client, sessions=deps.sessions, task_queue=deps.settings.task_queue)
        await sweep_executions(client=client, sessions=deps.sessions, report=report)
        for line in report.lines():
            log.info("start-up reconcile: %s", line)
    except Exception:  # noqa: BLE001 - the periodic reconciler will try again
        log.exception("start-up reconcile failed")
