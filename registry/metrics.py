"""The platform's Prometheus metrics (docs/observability.md lists each one and what it means).

One place defines every metric, so names, labels and buckets stay consistent between the API and the
workers, and label values stay bounded: module and job type names (registered by admins), trigger
and status enumerations, route *templates* (never raw paths), and at most ``MAX_HOSTS`` distinct
HTTP hosts per process (the rest count as ``other``). No execution, job or event id is ever a label.

Metrics live in prometheus-client's default registry. With ``PROMETHEUS_MULTIPROC_DIR`` set (what
``autoplat api --workers N`` does), counters and histograms are shared through files by every API
process and a scrape of any process sees their sums; the gauges read at scrape time (DB pool,
handler processes, the event outbox) describe the process that answers.

Run metrics are recorded only once the transaction that moved the execution row has committed
(:func:`on_commit`), so a rolled-back write counts nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

#: Distinct HTTP hosts (``ctx.http``) labelled per process; later ones count as ``other``.
MAX_HOSTS = 200
#: Distinct module names labelled per process (modules are registered by admins; this is a backstop).
MAX_MODULES = 500

_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

_JOB = ("module", "job_type")

RUNS_STARTED = Counter("autoplat_runs_started", "Runs whose handler started (moved to RUNNING).", [*_JOB, "trigger"])
RUNS_FINISHED = Counter("autoplat_runs_finished", "Runs that reached a final status.", [*_JOB, "trigger", "status"])
RUN_DURATION = Histogram(
    "autoplat_run_duration_seconds",
    "Run duration, RUNNING to final status (runs that started).",
    [*_JOB, "status"],
    buckets=_DURATION_BUCKETS,
)
RUN_START_LAG = Histogram(
    "autoplat_run_start_lag_seconds",
    "Trigger to handler start: request / event receipt / nominal schedule time to RUNNING.",
    [*_JOB, "trigger"],
    buckets=_LAG_BUCKETS,
)
SCHEDULE_LAG = Histogram(
    "autoplat_schedule_lag_seconds",
    "Nominal fire time of a schedule to the run's start.",
    list(_JOB),
    buckets=_LAG_BUCKETS,
)
SCHEDULE_SLOTS = Counter(
    "autoplat_schedule_slots",
    "Schedule slots settled in the ledger, by outcome (ran, skipped, missed).",
    ["module", "outcome"],
)
STEPS = Counter("autoplat_steps", "Step attempts that ran a handler, by outcome.", [*_JOB, "outcome"])
STEP_RETRIES = Counter("autoplat_step_retries", "Step attempts that were retries of a failed attempt.", list(_JOB))
EVENTS_DISPATCHED = Counter(
    "autoplat_events_dispatched",
    "Stored events the dispatcher settled (dispatched) or will retry (retry).",
    ["outcome"],
)
EVENT_RUNS_STARTED = Counter("autoplat_event_runs_started", "Workflow starts of event-triggered runs.")
EVENT_DISPATCH_LAG = Histogram(
    "autoplat_event_dispatch_lag_seconds",
    "Event received to its run's workflow started.",
    buckets=_LAG_BUCKETS,
)
EVENT_INGEST_BATCH = Histogram(
    "autoplat_event_ingest_batch_events",
    "Events stored by one transaction of POST /events (concurrent requests share one).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
EVENTS_PENDING = Gauge(
    "autoplat_events_pending",
    "Events in the outbox not yet dispatched (read at scrape time by the API).",
    multiprocess_mode="mostrecent",
)
EVENTS_OLDEST_PENDING = Gauge(
    "autoplat_events_oldest_pending_age_seconds",
    "Age of the oldest undispatched event (0: none pending).",
    multiprocess_mode="mostrecent",
)
ROUTE_CALLS = Counter("autoplat_route_calls", "Module route calls by answered status.", ["module", "status"])
ROUTE_CALL_DURATION = Histogram(
    "autoplat_route_call_duration_seconds",
    "Module route call latency, request to answer.",
    ["module"],
    buckets=_REQUEST_BUCKETS,
)
HTTP_CLIENT_REQUESTS = Counter(
    "autoplat_http_client_requests",
    "Requests sent by ctx.http and the autoplat.http activity (each attempt), by host and status "
    "(``error``: no answer).",
    ["host", "status"],
)
HTTP_CLIENT_DURATION = Histogram(
    "autoplat_http_client_request_duration_seconds",
    "Latency of requests sent by ctx.http (each attempt).",
    ["host"],
    buckets=_REQUEST_BUCKETS,
)
NOTIFICATIONS = Counter(
    "autoplat_notifications", "Notifications delivered or failed, by channel type.", ["channel", "outcome"]
)
API_REQUESTS = Counter(
    "autoplat_api_requests", "API requests by route template, method and status.", ["route", "method", "status"]
)
API_REQUEST_DURATION = Histogram(
    "autoplat_api_request_duration_seconds",
    "API request latency by route template and method (streams: until the stream ends).",
    ["route", "method"],
    buckets=_REQUEST_BUCKETS,
)


# --- bounded labels ------------------------------------------------------------------------------
class _Bounded:
    """At most ``limit`` distinct values of a label; later ones become ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        value = value or "unknown"
        if value in self.seen:
            return value
        with self.lock:
            if len(self.seen) >= self.limit:
                return "other"
            self.seen.add(value)
        return value


host_label = _Bounded(MAX_HOSTS)
module_label = _Bounded(MAX_MODULES)


# --- run metrics ---------------------------------------------------------------------------------
def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    if later.tzinfo is None:
        later = later.replace(tzinfo=UTC)
    if earlier.tzinfo is None:
        earlier = earlier.replace(tzinfo=UTC)
    return max((later - earlier).total_seconds(), 0.0)


def _at_or_after(moment: datetime | None, since: datetime) -> bool:
    if moment is None:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment >= since


def nominal_time(workflow_id: str) -> datetime | None:
    """The nominal fire time of a scheduled run: Temporal appends it to the schedule's workflow id
    (``sched-<job id>-2026-12-03T07:52:00Z``)."""
    stamp = workflow_id[-20:]
    if len(workflow_id) <= 20 or workflow_id[-21] != "-":
        return None
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def run_started(
    *,
    module: str,
    job_type: str,
    trigger: str,
    created_at: datetime | None,
    started_at: datetime | None,
    workflow_id: str = "",
    nominal_at: datetime | None = None,
) -> None:
    """A run moved to RUNNING: its trigger→start lag (schedules: from the nominal fire time, the
    row's ``nominal_at`` or, for a row without it, the one in the workflow id)."""
    labels = (module_label(module), job_type, trigger)
    RUNS_STARTED.labels(*labels).inc()
    origin = created_at
    if trigger == "schedule":
        nominal = nominal_at or nominal_time(workflow_id)
        if nominal is not None:
            origin = nominal
            lag = _seconds(started_at, nominal)
            if lag is not None:
                SCHEDULE_LAG.labels(labels[0], job_type).observe(lag)
    lag = _seconds(started_at, origin)
    if lag is not None:
        RUN_START_LAG.labels(*labels).observe(lag)


def run_finished(*, module: str, job_type: str, trigger: str, status: str, duration_ms: int | None) -> None:
    RUNS_FINISHED.labels(module_label(module), job_type, trigger, status).inc()
    if duration_ms is not None:
        RUN_DURATION.labels(module_label(module), job_type, status).observe(duration_ms / 1000)


def step_ended(*, module: str, job_type: str, outcome: str, attempt: int) -> None:
    STEPS.labels(module_label(module), job_type, outcome).inc()
    if attempt > 1:
        STEP_RETRIES.labels(module_label(module), job_type).inc()


def count_start(session: Any, execution: Any, *, since: datetime, workflow_id: str) -> None:
    """After ``runs.start_run`` / ``runs.mark_started``: count the run as started (or skipped) if
    this call is what moved it (``since``: taken before the call), once the transaction commits."""
    module, job_type, trigger = execution.module_name, execution.job_type, execution.trigger
    started_at, finished_at = execution.started_at, execution.finished_at
    if execution.status == "RUNNING" and _at_or_after(started_at, since):
        created_at = execution.created_at
        nominal_at = getattr(execution, "nominal_at", None)
        on_commit(
            session,
            lambda: run_started(
                module=module,
                job_type=job_type,
                trigger=trigger,
                created_at=created_at,
                started_at=started_at,
                workflow_id=workflow_id,
                nominal_at=nominal_at,
            ),
        )
    elif execution.status == "SKIPPED" and _at_or_after(finished_at, since):
        count_end(session, run_labels(execution, "SKIPPED"))


def run_labels(execution: Any, status: str) -> dict[str, Any]:
    return {
        "module": execution.module_name,
        "job_type": execution.job_type,
        "trigger": execution.trigger,
        "status": status,
        "duration_ms": execution.duration_ms,
    }


def count_slots(session: Any, module: str, outcomes: dict[str, int]) -> None:
    """Slots the ledger settled (``registry/services/slots.py``), counted once the transaction commits."""

    def add() -> None:
        for outcome, n in outcomes.items():
            SCHEDULE_SLOTS.labels(module_label(module), outcome).inc(n)

    if outcomes:
        on_commit(session, add)


def count_end(session: Any, payload: dict[str, Any]) -> None:
    """Count a run's end (the payload of its ``job.*`` event) once the transaction commits."""
    on_commit(
        session,
        lambda: run_finished(
            module=str(payload.get("module")),
            job_type=str(payload.get("job_type")),
            trigger=str(payload.get("trigger")),
            status=str(payload.get("status")),
            duration_ms=payload.get("duration_ms"),
        ),
    )


def on_commit(session: Any, record: Callable[[], None]) -> None:
    """Call ``record`` once the session's transaction commits (never when it rolls back)."""
    from sqlalchemy import event

    def fire(_session: Any) -> None:
        try:
            record()
        except Exception:  # noqa: BLE001 - a metric must never fail a write that succeeded
            log.exception("recording a metric failed")

    event.listen(getattr(session, "sync_session", session), "after_commit", fire, once=True)


# --- gauges read at scrape time ------------------------------------------------------------------
class _Sampled:
    """Gauges read from live objects at scrape time (DB pools, handler processes), summed per label."""

    def __init__(self) -> None:
        self.sources: weakref.WeakKeyDictionary[Any, Callable[[Any], Iterable[tuple[str, str, float]]]] = (
            weakref.WeakKeyDictionary()
        )

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        docs = {
            "autoplat_db_pool_in_use": "DB connections checked out of this process's pools.",
            "autoplat_db_pool_waiting": "Tasks of this process waiting for a pooled DB connection.",
            "autoplat_handler_processes_in_use": "Handler processes of this worker running a step.",
            "autoplat_handler_processes_limit": "Handler processes this worker may run at once.",
        }
        values: dict[tuple[str, str], float] = {}
        for owner, read in list(self.sources.items()):
            try:
                for name, role, value in read(owner):
                    values[(name, role)] = values.get((name, role), 0.0) + value
            except Exception:  # noqa: BLE001 - a closed pool reads as nothing
                continue
        for name, doc in docs.items():
            family = GaugeMetricFamily(name, doc, labels=["role"])
            for (metric, role), value in sorted(values.items()):
                if metric == name:
                    family.add_metric([role], value)
            yield family


_sampled = _Sampled()
REGISTRY.register(_sampled)


def _pool_waiting(pool: Any) -> int:
    queue = getattr(getattr(pool, "_pool", None), "_queue", None)  # asyncio.Queue of AsyncAdaptedQueue
    return len(getattr(queue, "_getters", ()) or ())


def watch_engine(engine: Any, role: str) -> None:
    """Report ``engine``'s pool (in use, waiting) as long as the engine lives."""

    def read(eng: Any) -> Iterable[tuple[str, str, float]]:
        pool = eng.sync_engine.pool if hasattr(eng, "sync_engine") else eng.pool
        checked_out = getattr(pool, "checkedout", None)
        yield "autoplat_db_pool_in_use", role, float(checked_out() if checked_out else 0)
        yield "autoplat_db_pool_waiting", role, float(_pool_waiting(pool))

    _sampled.sources[engine] = read


def watch_handler_pool(pool: Any) -> None:
    """Report a worker's handler processes (``activities.handlers.HandlerPool``)."""

    def read(p: Any) -> Iterable[tuple[str, str, float]]:
        if getattr(p, "_closed", False):
            return
        limit = float(p.settings.handler_max_processes)
        yield "autoplat_handler_processes_in_use", "worker", float(getattr(p, "_busy", 0))
        yield "autoplat_handler_processes_limit", "worker", limit

    _sampled.sources[pool] = read


# --- Temporal SDK metrics ------------------------------------------------------------------------
class TemporalMetrics:
    """Re-exports the Temporal SDK runtime's Prometheus metrics (served by the SDK on a loopback port
    of its own) through the platform's registry, so one scrape of the worker's port has both."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as answer:  # noqa: S310 - loopback only
                text = answer.read().decode("utf-8")
        except OSError as exc:
            log.debug("Temporal SDK metrics unavailable: %s", exc)
            return
        yield from text_string_to_metric_families(text)


_temporal_ports: set[int] = set()


def temporal_runtime(port: int) -> Any:
    """A Temporal runtime exporting the SDK's metrics on ``127.0.0.1:port``, re-exported here. Give
    it to the worker's client (``Client.connect(runtime=...)``) or make it the default."""
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=f"127.0.0.1:{port}",
                counters_total_suffix=True,
                unit_suffix=True,
                durations_as_seconds=True,
            )
        )
    )
    if port not in _temporal_ports:
        _temporal_ports.add(port)
        REGISTRY.register(TemporalMetrics(port))
    return runtime


def install_temporal_runtime(port: int) -> None:
    """Make the process's default Temporal runtime the one of :func:`temporal_runtime`. Call before
    the first Temporal client connects."""
    from temporalio.runtime import Runtime

    Runtime.set_default(temporal_runtime(port), error_if_already_set=False)


# --- exposition ----------------------------------------------------------------------------------
def scrape_registry() -> CollectorRegistry:
    """What a scrape of this process shows: the default registry, or with multiprocess mode the sum
    of every process's files plus this process's scrape-time gauges."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(_sampled)
    return registry


def render(accept: str | None) -> tuple[bytes, str]:
    """The exposition (OpenMetrics when the scraper asks for it, else Prometheus text)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(scrape_registry()), content_type


def serve(port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (workers); returns the HTTP server
    (``server_address`` holds the bound port, ``shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=scrape_registry())
    return server


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def monotonic() -> float:
    return time.perf_counter()


# --- outgoing HTTP -------------------------------------------------------------------------------
def counting_transport(inner: Any) -> Any:
    """Wrap an httpx async transport so every request it sends (each retry too) is counted by host
    and status, with its latency."""
    import httpx

    class CountingTransport(httpx.AsyncBaseTransport):
        def __init__(self, wrapped: httpx.AsyncBaseTransport) -> None:
            self.wrapped = wrapped

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            host = host_label(request.url.host)
            started = time.perf_counter()
            status = "error"
            try:
                response = await self.wrapped.handle_async_request(request)
                status = str(response.status_code)
                return response
            finally:
                HTTP_CLIENT_REQUESTS.labels(host, status).inc()
                HTTP_CLIENT_DURATION.labels(host).observe(time.perf_counter() - started)

        async def aclose(self) -> None:
            await self.wrapped.aclose()

    return CountingTransport(inner)


def http_log_counter(sink: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], None]:
    """A step's log sink that also counts its ``ctx.http`` requests: ``ctx.http`` logs one entry per
    attempt with ``extra.http`` = method, url (masked), status, duration_ms; the entries reach the
    worker whether the handler runs in a handler process or inline, so this counts both alike."""
    from urllib.parse import urlsplit

    def record(entry: dict[str, Any]) -> None:
        extra = entry.get("extra")
        http = extra.get("http") if isinstance(extra, dict) else None
        if isinstance(http, dict) and isinstance(http.get("url"), str):
            try:
                host = urlsplit(http["url"]).hostname
            except ValueError:
                host = None
            status = http.get("status")
            label = host_label(host)
            HTTP_CLIENT_REQUESTS.labels(label, str(status) if isinstance(status, int) else "error").inc()
            duration = http.get("duration_ms")
            if isinstance(duration, int | float):
                HTTP_CLIENT_DURATION.labels(label).observe(max(float(duration), 0.0) / 1000)
        if sink is not None:
            sink(entry)

    return record
