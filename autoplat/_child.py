"""A handler process: runs module handlers for a worker, one at a time, confined.

Started by the worker's pool (``python -I -B -m autoplat._child --fd N``) with a scrubbed
environment. The first message (``init``) says how to confine the process (:mod:`autoplat._confine`);
after that, every ``run`` message loads a handler from its code folder and calls it with a
:class:`JobContext` whose services are answered by the worker over the same socket:

* ``ctx.http`` runs here (an :class:`autoplat.http.HttpClient` with the manifest's hosts and the
  worker's address policy, which the worker sends);
* ``ctx.storage``, ``ctx.state``, ``ctx.series``, ``ctx.notify``, ``ctx.browser``, ``ctx.alerts``,
  ``ctx.vault`` and ``ctx.emit`` are calls answered by the worker, which checks them as it checks
  in-process calls (the vault's key stays in the worker: this process only sends values and tokens);
* log lines (``ctx.logger``, and ``print``) are sent to the worker as they happen, so they are
  kept even when this process dies.

The worker ends the process after a failure, a limit breach, N runs or a memory ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import socket
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from autoplat import _confine
from autoplat._sync import loop_runner
from autoplat._wire import FrameTooLarge, dumps, frame
from autoplat.context import ExecutionInfo, HttpRequest, JobContext, LogBuffer
from autoplat.errors import Cancelled, JobError
from autoplat.series import Bucket, Point, SeriesBase, SeriesError
from autoplat.storage import Document, JobStateBase, StateConflict, StateSnapshot, StorageBase, StorageError
from autoplat.vault import VaultBase, VaultError

#: Largest message the worker sends (a run's config, previous result and event are in it).
MAX_INBOUND = 64 * 1024 * 1024
#: Exceptions of the worker's services re-raised here as the SDK's own classes.
_KNOWN: dict[str, type[Exception]] = {
    "JobError": JobError,
    "StorageError": StorageError,
    "SeriesError": SeriesError,
    "VaultError": VaultError,
    "Cancelled": Cancelled,
}
#: Largest ``write_many`` call sent to the worker (its messages are capped by the output limit).
MAX_SERIES_CALL_BYTES = 4 * 1024 * 1024


class ServiceError(Exception):
    """A service call the worker refused or that failed there (the name is the worker's)."""


def _remote_exception(error: Mapping[str, Any]) -> Exception:
    name = str(error.get("type") or "ServiceError")
    message = str(error.get("message") or "")
    if name == "StateConflict":
        return StateConflict(message, current_version=int(error.get("current_version") or 0))
    if error.get("job_error"):
        cls = _KNOWN.get(name)
        if cls is None:
            cls = type(name, (JobError,), {})
        return cls(message, details=error.get("details")) if issubclass(cls, JobError) else cls(message)
    cls = _KNOWN.get(name) or type(name, (ServiceError,), {})
    return cls(message)


class _Runtime:
    def __init__(self, child: Child) -> None:
        self._child = child

    def heartbeat(self, *details: Any) -> None:
        self._child.send({"op": "heartbeat", "details": list(details)})

    def is_cancelled(self) -> bool:
        return self._child.cancelled

    async def emit(self, name: str, payload: dict[str, Any]) -> str:
        return str(await self._child.call("emit", "emit", [name, payload], {}))

    def run_coroutine(self, coro: Awaitable[Any]) -> Any:
        return self._child.runner(coro)


class _Remote:
    """A service whose methods the worker answers: awaitable in the handler's event loop,
    blocking in a sync handler's thread (as the in-process services behave)."""

    def __init__(self, child: Child, name: str) -> None:
        self._child = child
        self._name = name

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            coro = self._child.call(self._name, method, list(args), kwargs)
            if self._child.on_loop():
                return coro
            return self._child.runner(coro)

        return call

    def __bool__(self) -> bool:
        return True


def _ttl_seconds(ttl: float | timedelta | None) -> float | None:
    return ttl.total_seconds() if isinstance(ttl, timedelta) else ttl


def _document(data: Mapping[str, Any]) -> Document:
    def when(value: Any) -> datetime | None:
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    return Document(
        key=data["key"],
        value=data.get("value"),
        expires_at=when(data.get("expires_at")),
        updated_at=when(data.get("updated_at")),
    )


class _RemoteStorage(StorageBase):
    """``ctx.storage`` answered by the worker (which validates every call again)."""

    def __init__(self, child: Child) -> None:
        super().__init__(runner=child.runner)
        self._child = child

    async def put(self, key: str, value: Any, *, ttl: float | timedelta | None = None) -> None:
        await self._child.call("storage", "put", [key, value], {"ttl": _ttl_seconds(ttl)})

    async def put_many(self, items: Any, *, ttl: float | timedelta | None = None) -> int:
        pairs = list(items.items()) if isinstance(items, Mapping) else [list(p) for p in items]
        return int(await self._child.call("storage", "put_many", [pairs], {"ttl": _ttl_seconds(ttl)}))

    async def get(self, key: str, default: Any = None) -> Any:
        document = await self.get_document(key)
        return default if document is None else document.value

    async def get_document(self, key: str) -> Document | None:
        data = await self._child.call("storage", "get_document", [key], {})
        return None if data is None else _document(data)

    async def delete(self, key: str) -> bool:
        return bool(await self._child.call("storage", "delete", [key], {}))

    async def query(
        self, prefix: str = "", *, where: Mapping[str, Any] | None = None, limit: int = 100
    ) -> list[Document]:
        found = await self._child.call("storage", "query", [prefix], {"where": where, "limit": limit})
        return [_document(d) for d in found]


class _RemoteState(JobStateBase):
    """``ctx.state`` answered by the worker; :meth:`update` runs its function here."""

    def __init__(self, child: Child) -> None:
        super().__init__(runner=child.runner)
        self._child = child

    async def _read(self) -> StateSnapshot:
        data = await self._child.call("state", "get", [], {})
        return StateSnapshot(value=dict(data.get("value") or {}), version=int(data.get("version") or 0))

    async def set(self, value: Mapping[str, Any], *, expected_version: int | None = None) -> int:
        if not isinstance(value, Mapping):
            raise StorageError("the job state is a JSON object (a dict)")
        return int(await self._child.call("state", "set", [dict(value)], {"expected_version": expected_version}))


class _RemoteSeries(SeriesBase):
    """``ctx.series`` answered by the worker, which knows the module and checks every call."""

    def __init__(self, child: Child) -> None:
        super().__init__(runner=child.runner)
        self._child = child

    async def write_many(self, series: str, points: Any) -> int:
        if isinstance(points, str | bytes | Mapping):
            raise SeriesError("points must be a list of points")
        items = list(points)
        if len(items) > self.max_batch:
            raise SeriesError(
                f"{len(items)} points in one call: at most {self.max_batch} per call; split the batch "
                "(writes are idempotent, a retried step writes no duplicates)",
                details={"limit": self.max_batch, "count": len(items)},
            )
        message = dumps(items)
        if len(message) > MAX_SERIES_CALL_BYTES:
            raise SeriesError(
                f"the batch is {len(message)} bytes of JSON: at most {MAX_SERIES_CALL_BYTES} per call; split it",
                details={"limit_bytes": MAX_SERIES_CALL_BYTES},
            )
        return int(await self._child.call("series", "write_many", [series, items], {}))

    async def range(self, series: str, start: Any, end: Any, **kwargs: Any) -> list[Point]:
        found = await self._child.call("series", "range", [series, _iso(start), _iso(end)], kwargs)
        return [_point(p) for p in found]

    async def rollup(self, series: str, start: Any, end: Any, **kwargs: Any) -> list[Bucket]:
        found = await self._child.call("series", "rollup", [series, _iso(start), _iso(end)], kwargs)
        return [Bucket(ts=datetime.fromisoformat(b["ts"]), labels=b["labels"], values=b["values"]) for b in found]

    async def latest(self, series: str, **kwargs: Any) -> list[Point]:
        return [_point(p) for p in await self._child.call("series", "latest", [series], kwargs)]


class _RemoteVault(VaultBase):
    """``ctx.vault`` answered by the worker, which holds the module's key (this process never does)."""

    def __init__(self, child: Child) -> None:
        super().__init__(runner=child.runner)
        self._child = child

    async def _seal(self, value: Any) -> str:
        return str(await self._child.call("vault", "seal", [value], {}))

    async def _open(self, token: str) -> Any:
        return await self._child.call("vault", "open", [token], {})


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _point(data: Mapping[str, Any]) -> Point:
    return Point(ts=datetime.fromisoformat(data["ts"]), labels=data["labels"], values=data["values"])


class _Output(io.TextIOBase):
    """``print`` from a handler, kept in the execution log line by line."""

    def __init__(self, child: Child, level: str) -> None:
        self._child = child
        self._level = level
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            self._child.print_line(line, self._level)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            line, self._pending = self._pending, ""
            self._child.print_line(line, self._level)


class Child:
    """The process's side of the wire. Messages go out with blocking writes under a lock, from
    whichever thread produces them, so a log line is on the wire before the handler's next line
    runs (nothing is lost when the handler then kills its process); messages come in on a reader
    thread and are handled on the event loop."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.loop = loop
        self.runner = loop_runner(loop)
        self.cancelled = False
        self.buffer: LogBuffer | None = None
        self.info: ExecutionInfo | None = None
        self._lock = threading.Lock()
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._task: asyncio.Task[Any] | None = None
        self._transports: dict[str, Any] = {}

    # --- messages ------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        self.send_bytes(frame(message))

    def send_bytes(self, data: bytes) -> None:
        with self._lock:
            self.sock.sendall(data)

    def on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    async def call(self, service: str, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        self._next_id += 1
        call_id = self._next_id
        future: asyncio.Future[Any] = self.loop.create_future()
        self._calls[call_id] = future
        try:
            self.send(
                {"op": "call", "id": call_id, "service": service, "method": method, "args": args, "kwargs": kwargs}
            )
            return await future
        finally:
            self._calls.pop(call_id, None)

    def _reply(self, message: Mapping[str, Any]) -> None:
        future = self._calls.get(int(message.get("id") or 0))
        if future is None or future.done():
            return
        if message.get("ok"):
            future.set_result(message.get("value"))
        else:
            future.set_exception(_remote_exception(message.get("error") or {}))

    def log_sink(self, entry: dict[str, Any]) -> None:
        self.send({"op": "log", "entry": entry})

    def print_line(self, line: str, level: str) -> None:
        if self.buffer is None or not line.strip():
            return
        entry: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "message": line,
            "source": "stdout" if level == "INFO" else "stderr",
        }
        if self.info is not None and self.info.step:
            entry["step"] = self.info.step
        self.buffer.add(entry)

    # --- the loop ------------------------------------------------------------------------------
    def read_forever(self) -> None:
        """The reader thread: each message is handled on the loop; the end of input ends the process."""
        try:
            while (message := _read(self.sock)) is not None and message.get("op") != "stop":
                self.loop.call_soon_threadsafe(self._handle, message)
        finally:
            # Told to stop, or the worker is gone (nobody could receive a result): end now, whatever
            # the handler is doing.
            os._exit(0)

    def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "run":
            self.cancelled = False
            self._task = asyncio.ensure_future(self._run(message))
        elif op == "cancel":
            self.cancelled = True
            if self._task is not None and not self._task.done():
                self._task.cancel()
        elif op == "reply":
            self._reply(message)

    async def serve(self) -> None:
        threading.Thread(target=self.read_forever, name="wire-reader", daemon=True).start()
        await asyncio.Event().wait()  # the reader thread ends the process

    async def _run(self, message: dict[str, Any]) -> None:
        from autoplat._invoke import invoke
        from autoplat._loader import HandlerNotFound, load_handler

        limits = message.get("limits") or {}
        try:
            _confine.set_memory_limit(limits.get("memory_bytes"))
            _confine.set_cpu_limit(limits.get("cpu_seconds"))
            fn = load_handler(message["code_root"], message["handler"], key=message["key"])
            ctx = self._context(message)
            value = await invoke(fn, ctx)
            sys.stdout.flush()
            sys.stderr.flush()
            response = {"status": ctx.response.status, "headers": ctx.response.headers}
            try:
                data = frame({"op": "done", "ok": True, "value": value, "response": response})
            except (TypeError, ValueError) as exc:
                # The handler's work is done and its value can never be stored: retrying would only
                # repeat it (the worker fails the step once, for good).
                error = {
                    "kind": "application",
                    "type": "ResultNotSerializable",
                    "message": f"the step's result cannot be stored: {exc}",
                    "non_retryable": True,
                }
                data = frame({"op": "done", "ok": False, "error": error})
        except HandlerNotFound as exc:
            data = self._failure("not_found", exc)
        except MemoryError as exc:
            data = self._failure(
                "limit", exc, message=f"memory limit {limits.get('memory_bytes', 0) // (1024 * 1024)} MiB exceeded"
            )
        except (Cancelled, asyncio.CancelledError) as exc:
            data = self._failure("cancelled", exc)
        except JobError as exc:
            data = self._failure("job", exc)
        except BaseException as exc:  # noqa: BLE001 - every handler failure is reported to the worker
            data = self._failure("exception", exc)
        finally:
            _confine.set_memory_limit(None)
        self.buffer = None
        self.send_bytes(data)

    def _failure(self, kind: str, exc: BaseException, *, message: str | None = None) -> bytes:
        error: dict[str, Any] = {"kind": kind, "type": type(exc).__name__, "message": message or str(exc)}
        if isinstance(exc, JobError):
            error["message"] = exc.message
            error["details"] = exc.details
        temporal_type = getattr(exc, "type", None)
        if type(exc).__name__ == "ApplicationError":
            error["kind"] = "application"
            error["type"] = temporal_type or "ApplicationError"
            error["message"] = getattr(exc, "message", str(exc))
            error["non_retryable"] = bool(getattr(exc, "non_retryable", False))
        if kind in ("exception", "limit"):
            error["traceback"] = "".join(traceback.format_exception(exc, limit=20))[-8000:]
        try:
            return frame({"op": "done", "ok": False, "error": error})
        except TypeError:
            error["details"] = None
            return frame({"op": "done", "ok": False, "error": error})

    def _context(self, message: dict[str, Any]) -> JobContext:
        info = ExecutionInfo(**message["info"])
        self.info = info
        self.buffer = LogBuffer(int(message.get("log_limit") or 512 * 1024), self.log_sink)
        provided = set(message.get("services") or [])
        remote = ("notify", "browser", "alerts")
        services: dict[str, Any] = {name: _Remote(self, name) for name in remote if name in provided}
        if "storage" in provided:
            services["storage"] = _RemoteStorage(self)
        if "state" in provided:
            services["state"] = _RemoteState(self)
        if "series" in provided:
            services["series"] = _RemoteSeries(self)
        if "vault" in provided:
            services["vault"] = _RemoteVault(self)
        ctx = JobContext(
            info=info,
            config=message.get("config"),
            secrets=message.get("secrets"),
            module_config=message.get("module_config"),
            runtime=_Runtime(self),
            log_buffer=self.buffer,
            previous=message.get("previous"),
            item=message.get("item"),
            event=message.get("event"),
            request=HttpRequest(**message["request"]) if message.get("request") else None,
            services=services,
        )
        http = message.get("http")
        if http is not None:
            ctx.http = self._http(http, ctx)
        return ctx

    def _http(self, spec: Mapping[str, Any], ctx: JobContext) -> Any:
        from autoplat.http import AddressPolicy, GuardedTransport, HostNotAllowed, HttpClient

        refusal = spec.get("refusal")
        policy = str(spec.get("allow_private", "off"))
        if policy not in self._transports:
            # One connection pool (and TLS context, costly to build) per process, as in the worker.
            self._transports[policy] = GuardedTransport(AddressPolicy(policy))  # type: ignore[arg-type]

        def hosts() -> list[str]:
            if refusal:
                raise HostNotAllowed(str(refusal))
            return list(spec.get("hosts") or [])

        transport: Any = self._transports[policy]
        if isinstance(spec.get("traceparent"), str):
            # The platform traces runs: each request joins the step's trace (docs/observability.md).
            transport = _WithTraceparent(transport, spec["traceparent"])
        return HttpClient(
            hosts=hosts if refusal or spec.get("hosts") is not None else None,
            transport=transport,
            logger=ctx.logger,
            runner=self.runner,
            timeout=float(spec.get("timeout", 30.0)),
            retries=int(spec.get("retries", 3)),
            max_backoff=float(spec.get("max_backoff", 30.0)),
            max_response_bytes=int(spec.get("max_response_bytes", 10 * 1024 * 1024)),
            max_download_bytes=int(spec.get("max_download_bytes", 100 * 1024 * 1024)),
            secrets=[str(s) for s in spec.get("secrets") or []],
        )


class _WithTraceparent:
    """An httpx transport adding the step's ``traceparent`` to each request (the shared pool stays
    open: it belongs to the process)."""

    def __init__(self, transport: Any, traceparent: str) -> None:
        self.transport = transport
        self.traceparent = traceparent

    async def handle_async_request(self, request: Any) -> Any:
        request.headers["traceparent"] = self.traceparent
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        return None


def _read(sock: socket.socket) -> dict[str, Any] | None:
    """The next message (blocking), or ``None`` at the end of input."""
    header = _read_exactly(sock, 4)
    if header is None:
        return None
    size = int.from_bytes(header, "big")
    if size > MAX_INBOUND:
        raise FrameTooLarge(size, MAX_INBOUND)
    data = _read_exactly(sock, size)
    if data is None:
        return None
    message = json.loads(data)
    return message if isinstance(message, dict) else None


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1024 * 1024))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


async def _serve(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    init = _read(sock)
    if init is None or init.get("op") != "init":
        return 2
    report = _confine.confine(
        read=_confine.without(
            _confine.allowed_reads(list(init.get("code_dirs") or [])), list(init.get("forbidden") or [])
        ),
        write=_confine.without(list(init.get("write") or []), list(init.get("forbidden") or [])),
        limits=_confine.Limits(memory_bytes=init.get("memory_cap_bytes"), open_files=init.get("open_files")),
        user=init.get("user"),
        group=init.get("group"),
    )
    child = Child(sock, asyncio.get_running_loop())
    sys.stdout = _Output(child, "INFO")
    sys.stderr = _Output(child, "WARNING")
    child.send({"op": "ready", "pid": os.getpid(), "confinement": report.__dict__})
    await child.serve()
    return 0


def _check(args: argparse.Namespace) -> int:
    """The registration-time import check: import every handler, print ``{ref: error}`` as JSON."""
    import importlib

    _confine.confine(
        read=_confine.without(_confine.allowed_reads([args.code_root]), args.forbid or []),
        write=list(args.write or []),
        limits=_confine.Limits(memory_bytes=args.memory_bytes, open_files=args.open_files),
    )
    if args.cpu_seconds:
        _confine.set_cpu_limit(args.cpu_seconds)
    refs = json.loads(args.refs)
    sys.path.insert(0, args.code_root)
    failures: dict[str, str] = {}
    with contextlib.redirect_stdout(sys.stderr):
        for ref in refs:
            module_name, _, attr = ref.partition(":")
            try:
                target = getattr(importlib.import_module(module_name), attr)
            except MemoryError:
                failures[ref] = f"memory limit {args.memory_bytes // (1024 * 1024)} MiB exceeded while importing"
                continue
            except BaseException as exc:  # noqa: BLE001 - reported as the handler's import error
                failures[ref] = traceback.format_exception_only(type(exc), exc)[-1].strip()
                continue
            if not callable(target):
                failures[ref] = f"{attr} is not callable (a {type(target).__name__})"
    os.write(1, dumps(failures))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoplat._child")
    parser.add_argument("--fd", type=int)
    parser.add_argument("--check", dest="code_root")
    parser.add_argument("--refs", default="[]")
    parser.add_argument("--forbid", action="append")
    parser.add_argument("--write", action="append")
    parser.add_argument("--memory-bytes", type=int)
    parser.add_argument("--open-files", type=int)
    parser.add_argument("--cpu-seconds", type=int)
    args = parser.parse_args(argv)
    if args.code_root:
        return _check(args)
    if args.fd is None:
        parser.error("--fd or --check is required")
    return asyncio.run(_serve(args.fd))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
