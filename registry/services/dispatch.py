"""The event dispatcher: starts the jobs listening to each stored event, exactly once per (event, job).

Events are dispatched from their outbox row (``events``), never from memory, so an accepted event
survives Redis, the worker or Temporal being down: it stays ``PENDING`` and is retried with
backoff until every target job's workflow has started.

Exactly once per (event, job) rests on two keys derived from both ids:

* ``event_deliveries`` has a unique (event_id, job_id) row; its ``execution_id`` is set once the
  workflow has started, and a started delivery is never started again (even after Temporal has
  forgotten the closed workflow);
* the workflow id ``evt-<event id>-<job id>`` with REJECT_DUPLICATE / USE_EXISTING makes a start
  repeated after a crash (workflow started, commit lost) a no-op on Temporal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.types import JobInput
from registry import metrics, tracing
from registry.db import is_unavailable, unit_of_work
from registry.manifest import event_pattern_matches
from registry.models import Event, EventDelivery, Execution, Job, Module, ModuleStatus
from registry.services import events, runs

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from temporalio.client import Client

log = logging.getLogger(__name__)

#: Retry backoff of an event whose dispatch failed: 1 s, 2 s, 4 s ... capped at 5 minutes, +-20 % jitter.
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0


@dataclass
class StartRequest:
    """One workflow start the dispatcher asks for."""

    workflow_type: str
    workflow_id: str
    input: JobInput
    job: Job
    module: Module
    execution_id: str
    #: The event's trace context (tracing on): the run joins the event's trace.
    traceparent: str | None = None


#: Starts one workflow; "already started" must count as success. Raising marks the event for retry.
StartFn = Callable[[StartRequest], Awaitable[None]]
#: Relays an event (``events.as_dict``) to live subscribers; must not raise (see ``publish_live``).
PublishFn = Callable[[dict[str, Any]], Awaitable[Any]]
#: Looks at each claimed batch inside its transaction (alerting: event and job-outcome rules,
#: registry/services/alerts_eval.py). Raising puts the batch's events back for a retry.
ObserveFn = Callable[[AsyncSession, list[Event]], Awaitable[None]]


@dataclass
class Target:
    job: Job
    module: Module
    config_override: dict[str, Any] | None = None


@dataclass
class DispatchReport:
    """What one ``dispatch_pending`` call did."""

    events: int = 0
    dispatched: int = 0
    failed: int = 0
    started: int = 0
    already_started: int = 0
    errors: list[str] = field(default_factory=list)


def workflow_id_for(event_id: str, job_id: str) -> str:
    return f"evt-{event_id}-{job_id}"


#: Most links in a chain of runs triggered by events that earlier runs emitted.
MAX_EVENT_CHAIN = 10
#: Most runs one root (a posted event or a run) may cause in all through such chains.
MAX_CHAIN_RUNS = 100


class ChainTooLong(Exception):
    """The event was emitted at the end of a chain of event-triggered runs too long to be legitimate."""


async def chain_of(session: AsyncSession, event: Event) -> tuple[int, int]:
    """(links, runs) of the chain that led to ``event``, an event emitted by a run: how many
    event-triggered runs lie between it and the chain's root, and how many runs the root has caused
    so far in all (its whole tree, which fan-out makes grow faster than the depth)."""
    links = 0
    execution_id = event.execution_id
    root_execution, root_event = execution_id, None
    while execution_id is not None and links < MAX_EVENT_CHAIN:
        links += 1
        root_execution = execution_id
        parent_event = await session.scalar(select(Execution.event_id).where(Execution.id == execution_id))
        if parent_event is None:
            break
        root_execution, root_event = None, parent_event
        execution_id = await session.scalar(select(Event.execution_id).where(Event.id == parent_event))
    runs, executions = 0, [root_execution] if root_execution else []
    event_ids: list[str] = [root_event] if root_event else []
    runs += len(executions)
    for _ in range(MAX_EVENT_CHAIN + 1):
        if executions:
            event_ids = list(await session.scalars(select(Event.id).where(Event.execution_id.in_(executions))))
        if not event_ids:
            break
        executions = list(await session.scalars(select(Execution.id).where(Execution.event_id.in_(event_ids))))
        runs += len(executions)
        if not executions or runs >= MAX_CHAIN_RUNS:
            break
    return links, runs


#: How long ``Dispatcher.stop`` waits for the loop it cancelled (an API's shutdown must stay short).
STOP_GRACE_SECONDS = 3.0
#: Most dispatch loops one process runs at once (PostgreSQL; each claims a batch of up to
#: ``BATCH_SIZE`` events per transaction). A pass ends at its ``limit`` (the Dispatcher's: 100 events),
#: so a pass uses at most four.
DISPATCH_CONCURRENCY = 8


def backoff(attempts: int) -> timedelta:
    """Delay before retry number ``attempts`` (1-based): exponential, jittered, capped."""
    base = min(BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=min(BACKOFF_MAX_SECONDS, base * random.uniform(0.8, 1.2)))


_MISSING = object()


def payload_value(payload: Any, path: str) -> Any:
    """The value at a dotted path of the payload, or a sentinel when absent."""
    value = payload
    for key in path.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
    return value


def filter_matches(filter_: dict[str, Any] | None, payload: Any) -> bool:
    """Every filter path must be present in the payload and equal to the expected value."""
    return all(payload_value(payload, path) == expected for path, expected in (filter_ or {}).items())


def apply_mapping(mapping: dict[str, str] | None, payload: Any) -> dict[str, Any] | None:
    """Config key -> payload path; absent paths are left out (the job's config applies)."""
    out = {}
    for key, path in (mapping or {}).items():
        value = payload_value(payload, path)
        if value is not _MISSING:
            out[key] = value
    return out or None


@dataclass
class Listeners:
    """Enabled jobs of enabled modules: what events can start. Read once per batch of events."""

    modules: dict[str, Module]
    jobs: list[Job]


async def load_listeners(session: AsyncSession) -> Listeners:
    modules = {
        m.name: m for m in await session.scalars(select(Module).where(Module.status == ModuleStatus.ENABLED.value))
    }
    if not modules:
        return Listeners(modules={}, jobs=[])
    jobs = list(
        await session.scalars(
            select(Job).where(Job.module_name.in_(modules), Job.enabled.is_(True)).order_by(Job.created_at, Job.id)
        )
    )
    return Listeners(modules=modules, jobs=jobs)


def _matching(listeners: Listeners, event: Event) -> dict[str, Target]:
    targets: dict[str, Target] = {}
    for job in listeners.jobs:
        module = listeners.modules[job.module_name]
        for listener in ((module.manifest or {}).get("events") or {}).get("listeners") or []:
            if (
                listener.get("job") == job.job_type
                and isinstance(listener.get("pattern"), str)
                and event_pattern_matches(listener["pattern"], event.name)
                and filter_matches(listener.get("filter"), event.payload)
            ):
                mapped = apply_mapping(listener.get("mapping"), event.payload)
                target = targets.setdefault(job.id, Target(job=job, module=module))
                if mapped:
                    target.config_override = {**(target.config_override or {}), **mapped}
        if job.id not in targets and any(
            isinstance(p, str) and event_pattern_matches(p, event.name) for p in job.event_triggers or []
        ):
            targets[job.id] = Target(job=job, module=module)
    return targets


async def targets_for(*, session: AsyncSession, event: Event, listeners: Listeners | None = None) -> list[Target]:
    """Enabled jobs of enabled modules that listen to ``event`` (manifest listeners and job triggers)."""
    targets = _matching(listeners or await load_listeners(session), event)
    if not targets or not event.execution_id:
        return list(targets.values())
    # The guards below only concern events emitted by runs that someone listens to (most job.*
    # events have no listener and cost no query here).
    # Loop guard: a job.* event emitted by a run of a job never triggers that same job.
    if event.name.startswith("job."):
        excluded = await session.scalar(select(Execution.job_id).where(Execution.id == event.execution_id))
        targets.pop(excluded or "", None)
    # Chain guard: runs triggered by events emitting events (two jobs reacting to each other's
    # job.* events, a listener re-emitting what it listens to) stop after MAX_EVENT_CHAIN links.
    if targets:
        links, runs_so_far = await chain_of(session, event)
        if links >= MAX_EVENT_CHAIN:
            raise ChainTooLong(f"event chain longer than {MAX_EVENT_CHAIN} runs: not dispatched (loop guard)")
        if runs_so_far + len(targets) > MAX_CHAIN_RUNS:
            raise ChainTooLong(
                f"event chain would exceed {MAX_CHAIN_RUNS} runs caused by one root: not dispatched (loop guard)"
            )
    return list(targets.values())


def event_input(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "name": event.name,
        "payload": event.payload,
        "source": event.source,
        "occurred_at": event.occurred_at.isoformat(),
    }


async def _claim(session: AsyncSession, now: datetime, size: int) -> list[Event]:
    query = (
        select(Event)
        .where(Event.dispatch_status == "PENDING", Event.next_attempt_at <= now)
        .order_by(Event.seq)
        .limit(size)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Two API processes never work on one event at once; each takes the next free ones.
        query = query.with_for_update(skip_locked=True)
    return list(await session.scalars(query))


async def _deliveries(session: AsyncSession, wanted: dict[str, list[Job]]) -> dict[tuple[str, str], EventDelivery]:
    """The delivery rows of (event id, job id) pairs (``wanted``: event id -> its target jobs),
    created once whatever the concurrency: one read for all of them, one ``INSERT … ON CONFLICT DO
    NOTHING`` for the missing ones, then one read back."""
    pairs = {(event_id, job.id) for event_id, jobs in wanted.items() for job in jobs}
    query = select(EventDelivery).where(EventDelivery.event_id.in_(list(wanted)))

    async def read(q: Any) -> dict[tuple[str, str], EventDelivery]:
        rows = await session.scalars(q)
        return {(d.event_id, d.job_id): d for d in rows if (d.event_id, d.job_id) in pairs}

    found = await read(query)
    missing = sorted(pairs - found.keys())
    if missing:
        from sqlalchemy.dialects import postgresql, sqlite

        insert: Any = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        now = datetime.now(UTC)
        rows = [
            {"event_id": e, "job_id": j, "workflow_id": workflow_id_for(e, j), "created_at": now} for e, j in missing
        ]
        await session.execute(
            insert(EventDelivery).values(rows).on_conflict_do_nothing(index_elements=["event_id", "job_id"])
        )
        found = await read(query.execution_options(populate_existing=True))
    return found


@dataclass
class _Pending:
    """One claimed event on its way: the starts it needs, then their outcomes."""

    event: Event
    targets: list[Target]
    starts: list[tuple[EventDelivery, StartRequest]] = field(default_factory=list)


async def _prepare(
    session: AsyncSession, event: Event, listeners: Listeners, report: DispatchReport
) -> _Pending | None:
    """The starts ``event`` needs (delivery rows created); None when it is settled already."""
    try:
        targets = await targets_for(session=session, event=event, listeners=listeners)
    except ChainTooLong as exc:
        _refuse(event, exc, report)
        return None
    deliveries = await _deliveries(session, {event.id: [t.job for t in targets]}) if targets else {}
    return _pending(event, targets, deliveries, report)


async def _prepare_together(
    session: AsyncSession, batch: list[Event], listeners: Listeners, report: DispatchReport
) -> list[_Pending]:
    """:func:`_prepare` for the events of a batch that have listeners, their delivery rows read and
    created together (three statements for the batch instead of a savepoint and three each). When
    that fails for another reason than an outage, each event is prepared apart, so one bad event
    backs off alone."""
    targets: dict[str, list[Target]] = {}
    refused: dict[str, ChainTooLong] = {}
    try:
        async with session.begin_nested():
            for event in batch:
                try:
                    targets[event.id] = await targets_for(session=session, event=event, listeners=listeners)
                except ChainTooLong as exc:
                    refused[event.id] = exc
            jobs = {event_id: [t.job for t in found] for event_id, found in targets.items() if found}
            deliveries = await _deliveries(session, jobs) if jobs else {}
    except Exception as exc:  # noqa: BLE001 - any failure: find the event it was about
        if is_unavailable(exc):
            raise  # the database is gone: the whole batch waits
        log.warning("could not prepare %d events together (%s); preparing each apart", len(batch), exc)
        prepared = [await _prepare_apart(session, event, listeners, report) for event in batch]
        return [p for p in prepared if p is not None]
    out = []
    for event in batch:
        if event.id in refused:
            _refuse(event, refused[event.id], report)
        else:
            out.append(_pending(event, targets[event.id], deliveries, report))
    return out


def _refuse(event: Event, exc: ChainTooLong, report: DispatchReport) -> None:
    """Settle an event the chain guard stopped: dispatched to nobody, with the reason."""
    log.warning("event %s (%s): %s", event.id, event.name, exc)
    event.dispatch_status = "DISPATCHED"
    event.dispatched_at = datetime.now(UTC)
    event.dispatch_error = str(exc)
    report.dispatched += 1


def _pending(
    event: Event, targets: list[Target], deliveries: dict[tuple[str, str], EventDelivery], report: DispatchReport
) -> _Pending:
    """The starts ``event`` still needs: one per target whose delivery has not started yet."""
    pending = _Pending(event=event, targets=targets)
    for target in targets:
        delivery = deliveries[(event.id, target.job.id)]
        if delivery.execution_id is not None:
            report.already_started += 1
            continue
        execution_id = runs.execution_id_for(delivery.workflow_id)
        request = StartRequest(
            workflow_type=f"{target.job.module_name}.{target.job.job_type}",
            workflow_id=delivery.workflow_id,
            input=JobInput(
                job_id=target.job.id,
                trigger="event",
                execution_id=execution_id,
                event=event_input(event),
                config_override=target.config_override,
            ),
            job=target.job,
            module=target.module,
            execution_id=execution_id,
            traceparent=event.traceparent,
        )
        pending.starts.append((delivery, request))
    return pending


def _finish(pending: _Pending, outcomes: list[BaseException | None], report: DispatchReport) -> None:
    error: str | None = None
    event = pending.event
    for (delivery, request), outcome in zip(pending.starts, outcomes, strict=True):
        if outcome is not None:
            # Any start failure means "retry this event later".
            error = f"{delivery.workflow_id}: {type(outcome).__name__}: {outcome}"[:2000]
            log.warning("could not start %s for event %s: %s", delivery.workflow_id, event.id, outcome)
            continue
        delivery.execution_id = request.execution_id
        report.started += 1
        _count_started(event)
    now = datetime.now(UTC)
    metrics.EVENTS_DISPATCHED.labels("retry" if error is not None else "dispatched").inc()
    if error is None:
        event.dispatch_status = "DISPATCHED"
        event.dispatched_at = now
        event.dispatch_error = None if pending.targets else "no subscribers"
        report.dispatched += 1
    else:
        event.dispatch_attempts = (event.dispatch_attempts or 0) + 1
        event.next_attempt_at = now + backoff(event.dispatch_attempts)
        event.dispatch_error = error
        report.failed += 1
        report.errors.append(error)


def _count_started(event: Event) -> None:
    """Metrics of one event-triggered workflow start: received → started (the workflow exists)."""
    metrics.EVENT_RUNS_STARTED.inc()
    received = event.received_at
    if received is not None:
        if received.tzinfo is None:
            received = received.replace(tzinfo=UTC)
        metrics.EVENT_DISPATCH_LAG.observe(max((datetime.now(UTC) - received).total_seconds(), 0.0))


async def _prepare_apart(
    session: AsyncSession, event: Event, listeners: Listeners, report: DispatchReport
) -> _Pending | None:
    """``_prepare`` in a savepoint: an event whose preparation fails is retried later with backoff,
    alone, instead of failing (and re-claiming at once) the whole batch with it."""
    event_id, name = event.id, event.name
    try:
        async with session.begin_nested():
            return await _prepare(session, event, listeners, report)
    except Exception as exc:  # noqa: BLE001 - any failure of one event: back off that event only
        if is_unavailable(exc):
            raise  # the database is gone: the whole batch waits
        log.exception("could not prepare event %s (%s) for dispatch", event_id, name)
        await session.refresh(event)  # the savepoint's rollback expired it
        event.dispatch_attempts = (event.dispatch_attempts or 0) + 1
        event.next_attempt_at = datetime.now(UTC) + backoff(event.dispatch_attempts)
        event.dispatch_error = f"{type(exc).__name__}: {exc}"[:2000]
        report.failed += 1
        report.errors.append(event.dispatch_error)
        return None


#: Events claimed (and committed) together by one dispatch loop (PostgreSQL; one on SQLite).
BATCH_SIZE = 25
#: Workflow starts in flight at once for one batch.
STARTS_IN_FLIGHT = 16


async def _start_all(start: StartFn, requests: list[StartRequest]) -> list[BaseException | None]:
    """Every start's outcome (None = started), in order; the starts go out together, bounded."""
    gate = asyncio.Semaphore(STARTS_IN_FLIGHT)

    async def one(request: StartRequest) -> None:
        async with gate:
            await start(request)

    outcomes = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # cancellation and the like are not start failures
    return [o if isinstance(o, BaseException) else None for o in outcomes]


async def _observe(observe: ObserveFn, session: AsyncSession, batch: list[Event], report: DispatchReport) -> None:
    """Run the alerting hook on a batch; when it fails, the batch's events are retried later
    (their job deliveries are idempotent, and so are the incident signals)."""
    try:
        async with session.begin_nested():
            await observe(session, batch)
    except Exception as exc:  # noqa: BLE001 - any failure means "retry this batch later"
        log.warning("alert rules could not look at %d events: %s", len(batch), exc)
        now = datetime.now(UTC)
        for event in batch:
            event.dispatch_status = "PENDING"
            event.dispatch_attempts = (event.dispatch_attempts or 0) + 1
            event.next_attempt_at = now + backoff(event.dispatch_attempts)
            event.dispatch_error = f"alert rules: {type(exc).__name__}: {exc}"[:2000]
        report.errors.append(f"alert rules: {exc}")


async def dispatch_pending(
    *,
    sessions: async_sessionmaker[AsyncSession],
    start: StartFn,
    limit: int = 100,
    publish: PublishFn | None = None,
    concurrency: int = 1,
    observe: ObserveFn | None = None,
) -> DispatchReport:
    """Dispatch up to ``limit`` due events, oldest first, in batches of ``BATCH_SIZE`` (a transaction each).

    Safe to run concurrently (in one or several processes) and to repeat: see the module docstring.
    ``publish`` relays to live subscribers the events recorded by runs (``ctx.emit``, ``job.*``),
    which the API never saw, on their first dispatch pass, after the commit.
    """
    report = DispatchReport()

    # SQLite has one writer: a batch would hold its lock through all of the batch's workflow starts.
    bind = sessions.kw.get("bind")
    size = BATCH_SIZE if bind is not None and bind.dialect.name == "postgresql" else 1

    loops = 1  # started so far in this pass (see below)

    async def worker() -> None:
        nonlocal loops
        more = True
        while more and report.events < limit:
            live: list[dict[str, Any]] = []
            async with unit_of_work(sessions) as session:
                wanted = min(size, limit - report.events)
                batch = await _claim(session, datetime.now(UTC), wanted)
                if not batch:
                    return
                report.events += len(batch)
                # A full batch: more may be due, for another loop to claim meanwhile. A short one:
                # nothing else was free, so this loop ends after it (an event stored meanwhile
                # wakes the dispatcher again), and no loop claims an empty batch for nothing.
                more = len(batch) == wanted
                if more and loops < concurrency and report.events < limit:
                    loops += 1
                    group.create_task(worker())
                # One read of the listeners per batch; an event without any costs no query at all.
                listeners = await load_listeners(session)
                prepared = []
                listened = []
                for event in batch:
                    if publish is not None and event.execution_id is not None and not event.dispatch_attempts:
                        live.append(events.as_dict(event))
                    if not _matching(listeners, event):
                        pending = await _prepare(session, event, listeners, report)  # no query: settles it
                        if pending is not None:
                            prepared.append(pending)
                    else:
                        listened.append(event)
                if listened:
                    prepared += await _prepare_together(session, listened, listeners, report)
                # The starts of the whole batch go out together (they only talk to Temporal).
                outcomes = await _start_all(start, [request for p in prepared for _, request in p.starts])
                for pending in prepared:
                    _finish(pending, outcomes[: len(pending.starts)], report)
                    outcomes = outcomes[len(pending.starts) :]
                # --- alerting hook (observe): kept apart from job dispatch ---
                if observe is not None:
                    await _observe(observe, session, batch, report)
            if publish is not None:
                for data in live:
                    await publish(data)

    # Claims skip locked rows on PostgreSQL, so several loops (and processes) share the outbox;
    # SQLite has one writer and runs one.
    # A task group: when one loop fails, the others are cancelled with it (no orphans).
    # Loops start one at a time, each when the one before it claimed a full batch.
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(worker())
    except ExceptionGroup as failed:
        if len(failed.exceptions) == 1:
            raise failed.exceptions[0] from None
        raise
    return report


def temporal_starter(client_factory: Callable[[], Awaitable[Client]], task_queue: str) -> StartFn:
    """A StartFn on Temporal: deterministic id, duplicates rejected, "already started" is success."""
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError
    from temporalio.service import RPCError, RPCStatusCode

    from workflows.schedules import search_attributes, workflow_timeout

    async def start(request: StartRequest) -> None:
        client = await client_factory()
        definition = runs.job_type_definition(request.module.manifest, request.job.job_type) or {"handler": "x:y"}
        steps = len(runs.steps_of(definition, request.module.name, request.job.job_type))
        try:
            with tracing.continued(request.traceparent, f"dispatch {request.workflow_type}"):
                await client.start_workflow(
                    request.workflow_type,
                    request.input,
                    id=request.workflow_id,
                    task_queue=task_queue,
                    execution_timeout=workflow_timeout(request.job, steps),
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    search_attributes=search_attributes(
                        request.job.module_name, request.job.id, "event", request.execution_id
                    ),
                )
        except WorkflowAlreadyStartedError:
            pass  # started by an earlier attempt whose commit was lost
        except RPCError as exc:
            if exc.status != RPCStatusCode.ALREADY_EXISTS:
                raise

    return start


class Dispatcher:
    """Runs ``dispatch_pending`` in the background: on ``notify()`` and at least every ``interval``."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        start: StartFn,
        interval: float = 1.0,
        limit: int = 100,
        publish: PublishFn | None = None,
        observe: ObserveFn | None = None,
    ) -> None:
        self.sessions = sessions
        self.start_fn = start
        self.publish = publish
        self.observe = observe
        self.interval = interval
        self.limit = limit
        bind = sessions.kw.get("bind")
        self.concurrency = DISPATCH_CONCURRENCY if bind is not None and bind.dialect.name == "postgresql" else 1
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """Wake the loop now (called right after an event is committed)."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="autoplat-event-dispatcher")

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Cancel the loop and wait for it at most ``grace`` seconds: a batch caught in the middle
        of its statements may take a while to roll back, and nothing is lost by not waiting (its
        events stay PENDING in the outbox for the next dispatcher)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                log.warning("event dispatcher still stopping after %.0f s; left to finish on its own", grace)
            elif not task.cancelled() and task.exception() is not None:
                log.warning("event dispatcher ended with %r", task.exception())

    async def _run(self) -> None:
        task = asyncio.current_task()
        while True:
            self._wake.clear()
            try:
                report = await dispatch_pending(
                    sessions=self.sessions,
                    start=self.start_fn,
                    limit=self.limit,
                    publish=self.publish,
                    concurrency=self.concurrency,
                    observe=self.observe,
                )
                if report.events >= self.limit:
                    continue  # more are due: go on at once
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must survive a DB outage; events stay pending
                if task is not None and task.cancelling():
                    # Stopped, though an error stood in for the cancellation on its way out (a
                    # statement cut by it failing instead): a stopped dispatcher stops, or it claims
                    # events on and on after its app is gone.
                    raise asyncio.CancelledError from None
                log.exception("event dispatch failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except TimeoutError:
                pass


def channel(prefix: str) -> str:
    return f"{prefix}:events"


async def publish_live_many(redis: Redis, prefix: str, stored: list[dict[str, Any]]) -> bool:
    """:func:`publish_live` for several events, in one round trip (a pipeline, in order)."""
    if len(stored) == 1:
        return await publish_live(redis, prefix, stored[0])
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for event in stored:
                pipe.publish(channel(prefix), json.dumps(event, default=str))
            await pipe.execute()
    except Exception as exc:  # noqa: BLE001
        log.warning("could not publish %d events live: %s", len(stored), exc)
        return False
    return True


async def publish_live(redis: Redis, prefix: str, event: dict[str, Any]) -> bool:
    """Publish a stored event to live subscribers. Never raises: Redis down only degrades the stream."""
    try:
        await redis.publish(channel(prefix), json.dumps(event, default=str))
    except Exception as exc:  # noqa: BLE001
        log.warning("could not publish event %s live: %s", event.get("id"), exc)
        return False
    return True
