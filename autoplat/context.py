"""What a handler receives: the :class:`JobContext`.

The platform builds it inside a Temporal activity; :mod:`autoplat.testing` builds it for tests.
Module code never touches Temporal directly.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from autoplat.errors import Cancelled

_log = logging.getLogger("autoplat.job")

#: Default cap of the log kept on one execution.
DEFAULT_LOG_LIMIT = 512 * 1024
TRUNCATION_MARKER = "[log truncated: limit reached]"


class Runtime(Protocol):
    """What the platform (or the test harness) provides under a context."""

    def heartbeat(self, *details: Any) -> None: ...

    def is_cancelled(self) -> bool: ...

    async def emit(self, name: str, payload: dict[str, Any]) -> str: ...


@dataclass(frozen=True)
class ExecutionInfo:
    """Identity of the running execution."""

    execution_id: str
    module: str
    job_type: str
    job_id: str | None = None
    module_version: str | None = None
    step: str | None = None
    attempt: int = 1
    trigger: str = "manual"
    workflow_id: str | None = None
    run_id: str | None = None
    #: The run's OpenTelemetry trace id when the platform traces (AUTOPLAT_TRACING=on), else None.
    trace_id: str | None = None
    #: The item's position in the list of a ``forEach`` step; ``None`` in any other step.
    item_index: int | None = None


@dataclass
class HttpRequest:
    """The inbound HTTP request of a module route (``ctx.request``)."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    #: Where the body holds values its route's ``bodySchema`` marks ``"secret": true``, as paths
    #: (``["credentials", "password"]``, ``["keys", 0]``). The platform sealed them before the run
    #: started (its workflow history and execution row hold only vault tokens) and opened them for
    #: this handler: ``body`` has them in clear. Keep them out of logs and results.
    secret_fields: list[list[str | int]] = field(default_factory=list)


@dataclass
class HttpResponse:
    """What a sync route handler may set besides its return value."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class LogBuffer:
    """Thread-safe, size-bounded structured log of one execution (JSON lines)."""

    def __init__(self, limit: int = DEFAULT_LOG_LIMIT, sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.limit = limit
        self.size = 0
        self.truncated = False
        self.entries: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._sink = sink

    def add(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, default=str)
        with self._lock:
            if self.truncated:
                return
            if self.size + len(line) + 1 > self.limit:
                self.truncated = True
                entry = {"ts": entry["ts"], "level": "WARNING", "message": TRUNCATION_MARKER}
                line = json.dumps(entry)
            self.size += len(line) + 1
            self.entries.append(entry)
            self._pending.append(entry)
        if self._sink is not None:
            try:
                self._sink(entry)
            except Exception:  # noqa: BLE001 - a broken live stream must not break the job
                _log.debug("log sink failed", exc_info=True)

    def drain(self) -> list[dict[str, Any]]:
        """Entries added since the last drain (for incremental persistence)."""
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def text(self) -> str:
        with self._lock:
            return "\n".join(json.dumps(e, default=str) for e in self.entries)


class JobLogger:
    """A leveled, structured logger whose lines are kept on the execution whatever its outcome.

    ``ctx.logger.info("synced %d records", n, extra={"cursor": c})`` — arguments are formatted
    lazily like :mod:`logging`; ``extra`` fields are kept as structured data.
    """

    def __init__(self, buffer: LogBuffer, info: ExecutionInfo) -> None:
        self._buffer = buffer
        self._info = info

    def _log(self, level: int, msg: Any, args: tuple[Any, ...], extra: Mapping[str, Any] | None, exc: bool) -> None:
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = f"{msg} {args!r}"
        entry: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": logging.getLevelName(level),
            "message": text,
        }
        if self._info.step:
            entry["step"] = self._info.step
        entry["attempt"] = self._info.attempt
        if self._info.item_index is not None:
            entry["item"] = self._info.item_index
        if self._info.trace_id:
            entry["trace_id"] = self._info.trace_id  # the run's trace (AUTOPLAT_TRACING=on)
        if extra:
            entry["extra"] = dict(extra)
        if exc:
            entry["exception"] = traceback.format_exc(limit=20)
        self._buffer.add(entry)
        _log.log(
            level,
            "[%s %s] %s",
            self._info.module,
            self._info.job_type,
            text,
            extra={"execution_id": self._info.execution_id},
        )

    def debug(self, msg: Any, *args: Any, extra: Mapping[str, Any] | None = None) -> None:
        self._log(logging.DEBUG, msg, args, extra, False)

    def info(self, msg: Any, *args: Any, extra: Mapping[str, Any] | None = None) -> None:
        self._log(logging.INFO, msg, args, extra, False)

    def warning(self, msg: Any, *args: Any, extra: Mapping[str, Any] | None = None) -> None:
        self._log(logging.WARNING, msg, args, extra, False)

    warn = warning

    def error(self, msg: Any, *args: Any, extra: Mapping[str, Any] | None = None) -> None:
        self._log(logging.ERROR, msg, args, extra, False)

    def exception(self, msg: Any, *args: Any, extra: Mapping[str, Any] | None = None) -> None:
        self._log(logging.ERROR, msg, args, extra, True)


class _Unavailable:
    """Placeholder for a service the running environment does not provide."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, item: str) -> Any:
        raise RuntimeError(
            f"ctx.{self._name} is not available here (declare it in the manifest's permissions.services, "
            "and run on a worker that provides it)"
        )

    def __bool__(self) -> bool:
        return False


class JobContext:
    """Everything a handler needs, passed as its first argument.

    Attributes:
        config: The job's resolved config: job-type defaults, then the job's config, then any
            per-run override, with secret values included (they are masked on the execution).
        secrets: Only the secret values (module and job), by key.
        module_config: The module-level config (defaults applied, secrets included).
        logger: A :class:`JobLogger`; its lines are kept on the execution even on failure.
        previous: The previous step's result (``None`` for the first step); in a ``forEach`` step,
            the item (the whole list is not sent to each item).
        item: The item of a ``forEach`` step this run handles (``None`` in any other step).
        event: The triggering event (``{"id", "name", "payload", ...}``) or ``None``.
        request: The inbound :class:`HttpRequest` for module routes, else ``None``.
        response: Set ``ctx.response.status`` / ``.headers`` in a sync route handler.
        http: Outbound HTTP (:class:`autoplat.http.HttpClient`): the manifest's allowed hosts only,
            SSRF guard, retries on 429 / 5xx, each request in the execution log.
        storage: The module's private documents (:class:`autoplat.storage.StorageBase`).
        state: This job's state between runs, versioned (:class:`autoplat.storage.JobStateBase`).
        series: The module's time series (:class:`autoplat.series.SeriesBase`): ``write``,
            ``write_many``, ``range``, ``rollup``, ``latest``. See docs/series.md.
        browser: One isolated browser context for this step (Playwright on the system
            Chromium): ``navigate``, ``fill``, ``click``, ``wait_for``, ``text``, ``table``,
            ``screenshot`` / ``pdf`` saved as execution artifacts. Closed when the step ends.
            See docs/browser.md.
        notify: ``email(to, subject, text, html)``, ``webhook(url, payload, ...)``,
            ``slack(url, text)`` and ``channel(name, subject, text)``. See docs/notifications.md.
        alerts: ``raise_(key, title, message=, severity=, labels=, channels=)`` opens or refreshes
            an incident by dedup key, ``resolve(key)`` resolves it. See docs/alerting.md.
        vault: The module's own sealing (:class:`autoplat.vault.VaultBase`): ``seal(value)`` turns
            any JSON value into an opaque token to store, ``open(token)`` gives it back; only this
            module can open its tokens, and handlers never hold the key. Needs no declaration.
            See docs/services.md, "Vault".

    http, storage, state, series and vault methods have ``*_sync`` twins for sync handlers
    (docs/services.md); browser, notify and alerts methods are awaitable in ``async def`` handlers
    and blocking in plain ``def`` handlers. A service used without being declared in the manifest's
    ``permissions.services`` fails the step (no retry).
    """

    def __init__(
        self,
        *,
        info: ExecutionInfo,
        config: Mapping[str, Any] | None = None,
        secrets: Mapping[str, Any] | None = None,
        module_config: Mapping[str, Any] | None = None,
        runtime: Runtime,
        log_buffer: LogBuffer | None = None,
        previous: Any = None,
        event: Mapping[str, Any] | None = None,
        request: HttpRequest | None = None,
        services: Mapping[str, Any] | None = None,
        item: Any = None,
    ) -> None:
        self.info = info
        self.item = item
        self.config: dict[str, Any] = dict(config or {})
        self.secrets: dict[str, Any] = dict(secrets or {})
        self.module_config: dict[str, Any] = dict(module_config or {})
        self.log_buffer = log_buffer or LogBuffer()
        self.logger = JobLogger(self.log_buffer, info)
        self.previous = previous
        self.event = dict(event) if event is not None else None
        self.request = request
        self.response = HttpResponse()
        self._runtime = runtime
        services = dict(services or {})
        self.http: Any = services.get("http") or _Unavailable("http")
        self.browser: Any = services.get("browser") or _Unavailable("browser")
        self.notify: Any = services.get("notify") or _Unavailable("notify")
        self.storage: Any = services.get("storage") or _Unavailable("storage")
        self.state: Any = services.get("state") or _Unavailable("state")
        self.series: Any = services.get("series") or _Unavailable("series")
        self.alerts: Any = services.get("alerts") or _Unavailable("alerts")
        self.vault: Any = services.get("vault") or _Unavailable("vault")

    # identity -------------------------------------------------------------------------------
    @property
    def execution_id(self) -> str:
        return self.info.execution_id

    @property
    def job_id(self) -> str | None:
        return self.info.job_id

    @property
    def module(self) -> str:
        return self.info.module

    @property
    def module_version(self) -> str | None:
        return self.info.module_version

    @property
    def job_type(self) -> str:
        return self.info.job_type

    @property
    def step(self) -> str | None:
        return self.info.step

    @property
    def attempt(self) -> int:
        return self.info.attempt

    @property
    def trigger(self) -> str:
        return self.info.trigger

    @property
    def item_index(self) -> int | None:
        """The position of :attr:`item` in the list a ``forEach`` step fans out (0 for the first);
        ``None`` outside a ``forEach`` step."""
        return self.info.item_index

    @property
    def trace_id(self) -> str | None:
        """The run's trace id (32 hex digits) when the platform traces runs, else None: quote it in
        logs or to callees to find the run's trace (``ctx.http`` sends ``traceparent`` itself)."""
        return self.info.trace_id

    # control ----------------------------------------------------------------------------------
    def heartbeat(self, *details: Any) -> None:
        """Report progress; long steps call it (the platform also heartbeats on their behalf)."""
        self._runtime.heartbeat(*details)

    def is_cancelled(self) -> bool:
        """True once the execution was cancelled or timed out: stop work and return soon."""
        return self._runtime.is_cancelled()

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the execution was cancelled; call it in long loops."""
        if self._runtime.is_cancelled():
            raise Cancelled("execution cancelled")

    async def emit(self, name: str, payload: Mapping[str, Any] | None = None) -> str:
        """Publish an event (source = this module, correlated to this execution); returns its id."""
        return await self._runtime.emit(name, dict(payload or {}))

    def emit_sync(self, name: str, payload: Mapping[str, Any] | None = None) -> str:
        """:meth:`emit` for sync handlers (they run in a worker thread)."""
        runner: Callable[[Awaitable[str]], str] | None = getattr(self._runtime, "run_coroutine", None)
        if runner is None:
            raise RuntimeError("emit_sync is only available inside a sync handler")
        return runner(self._runtime.emit(name, dict(payload or {})))
