"""Module handlers out of process: the worker's pool of confined handler processes.

Module code is the platform's tenant (DESIGN.md, decision 12). With ``AUTOPLAT_HANDLER_ISOLATION=
process`` (the default) each step's handler runs in a child process (``autoplat._child``) that has
a scrubbed environment, resource limits and no access to the platform's state folder; it reaches
storage, job state, notifications, the browser and events only through calls this module answers
with the step's own services, exactly as an in-process handler would call them.

A few processes are started ahead of need so a run does not wait for an interpreter. A process
serves one run at a time; it is replaced after a failure (its memory may be in any state), after
``handler_max_runs`` runs, or when its resident memory is above ``handler_recycle_rss_mb``. A run
that does not stop when cancelled (a handler stuck in C code) has its process killed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import inspect
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoplat._wire import FrameTooLarge, frame, read_frame
from autoplat.context import JobContext
from autoplat.errors import Cancelled, JobError
from registry.settings import Settings

log = logging.getLogger(__name__)

#: Service methods a handler process may call, by service; anything else is refused.
ALLOWED_CALLS: dict[str, frozenset[str]] = {
    "storage": frozenset({"put", "put_many", "get", "get_document", "delete", "query"}),
    "state": frozenset({"get", "set"}),
    "notify": frozenset({"email", "webhook", "slack", "channel", "available"}),
    "browser": frozenset({"navigate", "fill", "click", "wait_for", "text", "texts", "table", "screenshot", "pdf"}),
    "emit": frozenset({"emit"}),
    "series": frozenset({"write_many", "range", "rollup", "latest"}),
    "alerts": frozenset({"raise_", "resolve"}),
    # Sealing and opening happen here: the handler process never holds the module's vault key.
    "vault": frozenset({"seal", "open"}),
}
#: Services a handler process reaches through the worker.
_REMOTE_SERVICES = ("storage", "state", "notify", "browser", "series", "alerts", "vault")
#: How long a cancelled handler gets to stop (and send its last logs) before its process is killed.
STOP_GRACE_SECONDS = 3.0  # within activities.types.STEP_GRACE_SECONDS (10 s): the end is written before
#: A run waits this long for a busy process to be released before one is started for it.
SPAWN_AFTER_SECONDS = 0.05
#: Idle processes kept beyond ``handler_pool_size`` after a burst, and for how long.
MAX_EXTRA_IDLE = 8
EXTRA_IDLE_SECONDS = 60.0
#: How long a new handler process may take to start and confine itself.
START_TIMEOUT_SECONDS = 30.0
_MIB = 1024 * 1024
#: What a handler process's environment holds (docs/sdk.md, "Where handlers run").
_ENV_KEEP = {
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    # Fewer malloc arenas: less address space reserved per thread under the memory limit.
    "MALLOC_ARENA_MAX": "2",
}


class HandlerFailed(Exception):
    """A handler raised (in its process): carries the exception's type name and traceback."""

    def __init__(self, type_name: str, message: str, traceback_text: str | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text


class LimitExceeded(Exception):
    """The handler went over one of its limits (memory, CPU time, output): its process is replaced."""


class HandlerNotLoaded(Exception):
    """The handler reference does not resolve in the module's code."""


@dataclass
class RunLimits:
    """The limits of one run (the job type's ``limits``, capped by the platform's)."""

    memory_bytes: int
    cpu_seconds: int
    output_bytes: int

    @classmethod
    def of(cls, settings: Settings, declared: Mapping[str, Any] | None, timeout_seconds: float | None) -> RunLimits:
        declared = declared or {}
        memory_mb = min(int(declared.get("memoryMb") or settings.handler_memory_mb), settings.handler_memory_cap_mb)
        default_cpu = settings.handler_cpu_seconds or int(timeout_seconds or 0) or settings.handler_cpu_cap_seconds
        cpu = min(int(declared.get("cpuSeconds") or default_cpu), settings.handler_cpu_cap_seconds)
        return cls(
            memory_bytes=memory_mb * _MIB, cpu_seconds=max(cpu, 1), output_bytes=settings.handler_max_output_bytes
        )


@dataclass
class _Process:
    proc: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tmp: Path
    #: Where the interpreter itself writes (a fatal error); handlers' ``print`` goes to the log.
    stderr: Path
    confinement: dict[str, Any] = field(default_factory=dict)
    runs: int = 0
    idle_since: float = 0.0

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0


class HandlerPool:
    """Confined handler processes of one worker (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._idle: list[_Process] = []
        self._waiters: collections.deque[asyncio.Future[_Process]] = collections.deque()
        self._starting = 0
        self._busy = 0
        #: Runs that have waited longer than SPAWN_AFTER_SECONDS: each gets a process started.
        self._impatient = 0
        self._slots = asyncio.Semaphore(settings.handler_max_processes)
        # Interpreters start a few at a time: a burst of runs must not starve the worker's own loop
        # (its heartbeats) of CPU.
        self._spawning = asyncio.Semaphore(2)
        self._base: Path | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._user = _handler_user(settings.handler_user)
        self.confinement: dict[str, Any] | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def prewarm(self) -> None:
        """Start the idle processes in the background (when called inside a running loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refill()

    def _refill(self) -> None:
        """Keep ``handler_pool_size`` processes (idle or running), and one starting per waiting run."""
        if self._closed:
            return
        wanted = max(self.settings.handler_pool_size - len(self._idle) - self._busy, 0) + self._impatient
        for _ in range(wanted - self._starting):
            self._starting += 1
            self._background(self._start_one())

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self) -> None:
        try:
            process = await self._spawn()
        except Exception as exc:  # noqa: BLE001 - the run waiting for it fails with the reason
            log.exception("could not start a handler process")
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(exc)
                    break
            return
        finally:
            self._starting -= 1
        self._offer(process)

    def _offer(self, process: _Process) -> None:
        """Hand a ready process to the longest-waiting run, else keep it idle: up to the pool size,
        and a few more for a while after a burst (so the next burst does not start them again)."""
        while self._waiters and not self._closed:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(process)
                return
        if self._closed or len(self._idle) >= self.settings.handler_pool_size + MAX_EXTRA_IDLE:
            self._background(self._stop(process))
            return
        process.idle_since = time.monotonic()
        self._idle.append(process)
        self._reap()

    def _reap(self) -> None:
        """Stop idle processes beyond the pool size that have not been used for a while."""
        extra = len(self._idle) - self.settings.handler_pool_size
        if extra <= 0:
            return
        cutoff = time.monotonic() - EXTRA_IDLE_SECONDS
        stale = [p for p in self._idle[:extra] if p.idle_since < cutoff]  # the oldest first
        for process in stale:
            self._idle.remove(process)
            self._background(self._stop(process))

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._stop(p) for p in idle), return_exceptions=True)
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)

    # --- processes ------------------------------------------------------------------------------
    def _base_dir(self) -> Path:
        if self._base is None:
            self._base = Path(tempfile.mkdtemp(prefix="autoplat-handlers-"))
            os.chmod(self._base, 0o711)
        return self._base

    def forbidden(self) -> list[str]:
        """Folders no handler may read: the state folder (registry, secrets, keys) and artifacts."""
        paths = [str(self.settings.state_dir)]
        if self.settings.artifacts_dir is not None:
            paths.append(str(self.settings.artifacts_dir))
        return paths + list(self.settings.handler_forbidden_paths)

    async def _spawn(self) -> _Process:
        async with self._spawning:
            return await self._spawn_now()

    async def _spawn_now(self) -> _Process:
        tmp = Path(tempfile.mkdtemp(prefix="p-", dir=self._base_dir()))
        if self._user is not None:
            os.chown(tmp, self._user[0], self._user[1])
        parent_sock, child_sock = socket.socketpair()
        env = {**_ENV_KEEP, "HOME": str(tmp), "TMPDIR": str(tmp)}
        stderr = tmp.with_suffix(".stderr")
        argv = [sys.executable, "-I", "-B", "-m", "autoplat._child", "--fd", str(child_sock.fileno())]
        try:
            with open(stderr, "wb") as err:
                # Popen waits until the child has executed Python: under load that takes long
                # enough to stall the event loop (and the running steps' heartbeats), so not here.
                proc = await asyncio.to_thread(
                    subprocess.Popen,
                    argv,
                    pass_fds=(child_sock.fileno(),),
                    env=env,
                    cwd=str(tmp),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
        finally:
            child_sock.close()
        reader, writer = await asyncio.open_connection(sock=parent_sock, limit=1024 * 1024)
        process = _Process(proc=proc, reader=reader, writer=writer, tmp=tmp, stderr=stderr)
        code_root = Path(self.settings.state_dir) / "code"
        code_root.mkdir(parents=True, exist_ok=True)
        writer.write(
            frame(
                {
                    "op": "init",
                    "code_dirs": [str(code_root)],
                    "forbidden": self.forbidden(),
                    "write": [str(tmp), "/dev/null", *self.settings.handler_write_paths],
                    "memory_cap_bytes": self.settings.handler_memory_cap_mb * _MIB,
                    "open_files": self.settings.handler_open_files,
                    "user": self._user[0] if self._user else None,
                    "group": self._user[1] if self._user else None,
                }
            )
        )
        try:
            ready = await asyncio.wait_for(read_frame(reader, 1024 * 1024), START_TIMEOUT_SECONDS)
        except BaseException:
            await self._stop(process)
            raise
        if ready is None or ready.get("op") != "ready":
            await self._stop(process)
            raise RuntimeError(f"handler process did not start: {_tail(process)}")
        process.confinement = dict(ready.get("confinement") or {})
        if self.confinement is None:
            self.confinement = process.confinement
            log.info("handler processes confined: %s", process.confinement)
        return process

    async def _stop(self, process: _Process, *, kill: bool = False) -> None:
        if process.alive and not kill:
            with contextlib.suppress(Exception):
                process.writer.write(frame({"op": "stop"}))
                await process.writer.drain()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.proc.wait, 2.0)
        # The process and whatever it started (its own session) go.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.proc.wait)
        process.writer.close()
        shutil.rmtree(process.tmp, ignore_errors=True)
        process.stderr.unlink(missing_ok=True)

    async def _acquire(self) -> _Process:
        """An idle process, else the first one ready: started for this run, or released by another."""
        while self._idle:
            process = self._idle.pop()  # the most recently used: the others may be reaped
            if process.alive:
                self._busy += 1
                self._refill()
                return process
            self._background(self._stop(process))
        waiter: asyncio.Future[_Process] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            try:
                # Under a steady load another run's process is usually free in a moment: starting
                # an interpreter costs far more CPU than that wait.
                process = await asyncio.wait_for(asyncio.shield(waiter), SPAWN_AFTER_SECONDS)
            except TimeoutError:
                self._impatient += 1
                try:
                    self._refill()
                    process = await waiter
                finally:
                    self._impatient -= 1
            self._busy += 1
            return process
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._offer(waiter.result())
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            raise

    def _release(self, process: _Process, *, healthy: bool) -> None:
        self._busy -= 1
        reusable = (
            healthy
            and process.alive
            and process.runs < self.settings.handler_max_runs
            and process.rss_bytes() <= self.settings.handler_recycle_rss_mb * _MIB
        )
        if reusable:
            self._offer(process)
        else:
            self._background(self._stop(process, kill=not healthy))
            self._refill()

    # --- a run ----------------------------------------------------------------------------------
    async def run(
        self,
        *,
        code_root: Path,
        key: str,
        handler: str,
        ctx: JobContext,
        limits: RunLimits,
        http: dict[str, Any] | None,
    ) -> Any:
        """Run ``handler`` for ``ctx`` in a handler process; returns its value (as JSON), sets
        ``ctx.response`` and appends its logs to ``ctx.log_buffer``. Cancelling this coroutine
        cancels the handler (its process is killed when it does not stop in time).

        Raises:
            JobError, Cancelled: As raised by the handler.
            HandlerFailed: The handler raised anything else.
            LimitExceeded: It went over a limit, or its process died.
            HandlerNotLoaded: The reference does not resolve.
        """
        async with self._slots:
            process = await self._acquire()
            process.runs += 1
            healthy = False
            try:
                message = {
                    "op": "run",
                    "code_root": str(code_root),
                    "key": key,
                    "handler": handler,
                    "info": dataclasses.asdict(ctx.info),
                    "config": ctx.config,
                    "secrets": ctx.secrets,
                    "module_config": ctx.module_config,
                    "previous": ctx.previous,
                    "item": ctx.item,
                    "event": ctx.event,
                    "request": dataclasses.asdict(ctx.request) if ctx.request is not None else None,
                    "http": http,
                    # What this worker provides (a worker without Chromium has no browser).
                    "services": [name for name in _REMOTE_SERVICES if getattr(ctx, name)],
                    "log_limit": ctx.log_buffer.limit,
                    "limits": {"memory_bytes": limits.memory_bytes, "cpu_seconds": limits.cpu_seconds},
                }
                process.writer.write(frame(message))
                conversation = asyncio.ensure_future(self._converse(process, ctx, limits))
                try:
                    done = await asyncio.shield(conversation)
                except asyncio.CancelledError:
                    await self._cancel(process, conversation)
                    raise
                healthy = bool(done.get("ok"))
                return _outcome(done, ctx, limits)
            finally:
                self._release(process, healthy=healthy)

    async def _cancel(self, process: _Process, conversation: asyncio.Future[Any]) -> None:
        with contextlib.suppress(Exception):
            process.writer.write(frame({"op": "cancel"}))
        try:
            await asyncio.wait_for(asyncio.shield(conversation), STOP_GRACE_SECONDS)
        except BaseException:  # noqa: BLE001 - it did not stop in time (or died): kill it
            conversation.cancel()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.gather(conversation, return_exceptions=True)

    async def _converse(self, process: _Process, ctx: JobContext, limits: RunLimits) -> dict[str, Any]:
        """Answer the process's calls and keep its logs until it reports the run done."""
        calls: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    message = await read_frame(process.reader, limits.output_bytes + _MIB)
                except FrameTooLarge:
                    return _limit_failure(f"output limit {limits.output_bytes // _MIB} MiB exceeded")
                except ValueError:
                    return _limit_failure("handler process sent a malformed message")
                if message is None:
                    return await self._died(process, limits)
                op = message.get("op")
                if op == "done":
                    return message
                if op == "log":
                    _keep_log(ctx, message.get("entry"))
                elif op == "heartbeat":
                    details = message.get("details")
                    ctx.heartbeat(*(details if isinstance(details, list) else []))
                elif op == "call":
                    task = asyncio.ensure_future(self._answer(process, ctx, message))
                    calls.add(task)
                    task.add_done_callback(calls.discard)
        finally:
            for task in calls:
                task.cancel()
            await asyncio.gather(*calls, return_exceptions=True)

    async def _answer(self, process: _Process, ctx: JobContext, message: dict[str, Any]) -> None:
        call_id = message.get("id")
        try:
            value = await _dispatch(ctx, message)
            reply = frame({"op": "reply", "id": call_id, "ok": True, "value": value})
        except Exception as exc:  # noqa: BLE001 - every refusal or failure goes back to the handler
            reply = frame({"op": "reply", "id": call_id, "ok": False, "error": _error_of(exc)})
        if process.alive:
            process.writer.write(reply)
            with contextlib.suppress(ConnectionError):
                await process.writer.drain()

    async def _died(self, process: _Process, limits: RunLimits) -> dict[str, Any]:
        code = await asyncio.to_thread(process.proc.wait)
        tail = _tail(process)
        if code == -signal.SIGXCPU:
            return _limit_failure(f"CPU time limit {limits.cpu_seconds} s exceeded")
        if "MemoryError" in tail or "out of memory" in tail.lower():
            return _limit_failure(f"memory limit {limits.memory_bytes // _MIB} MiB exceeded")
        if code < 0:
            reason = f"handler process was killed by {signal.Signals(-code).name}"
        else:
            reason = f"handler process exited with code {code}"
        return _limit_failure(reason + (f": {tail}" if tail else ""))


def _limit_failure(message: str) -> dict[str, Any]:
    return {"op": "done", "ok": False, "error": {"kind": "limit", "type": "LimitExceeded", "message": message}}


def _outcome(done: Mapping[str, Any], ctx: JobContext, limits: RunLimits) -> Any:
    if done.get("ok"):
        response = done.get("response") or {}
        if isinstance(response, dict):
            ctx.response.status = int(response.get("status") or 200)
            headers = response.get("headers") or {}
            ctx.response.headers = {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {}
        return done.get("value")
    raw = done.get("error")
    error: dict[str, Any] = raw if isinstance(raw, dict) else {}
    kind = error.get("kind")
    message = str(error.get("message") or "")
    type_name = str(error.get("type") or "Exception")
    if kind == "job":
        raise JobError(message, details=error.get("details"))
    if kind == "cancelled":
        raise Cancelled(message or "cancelled")
    if kind == "limit":
        raise LimitExceeded(message)
    if kind == "not_found":
        raise HandlerNotLoaded(message)
    if kind == "application":
        from temporalio.exceptions import ApplicationError

        raise ApplicationError(message, type=type_name, non_retryable=bool(error.get("non_retryable")))
    raise HandlerFailed(type_name, message, error.get("traceback"))


def _keep_log(ctx: JobContext, entry: Any) -> None:
    if not isinstance(entry, dict):
        return
    kept = {str(k): v for k, v in entry.items()}
    kept["ts"] = str(kept.get("ts", ""))[:40]
    kept["level"] = str(kept.get("level", "INFO"))[:10]
    kept["message"] = str(kept.get("message", ""))
    ctx.log_buffer.add(kept)


async def _dispatch(ctx: JobContext, message: Mapping[str, Any]) -> Any:
    service = str(message.get("service"))
    method = str(message.get("method"))
    args = message.get("args")
    kwargs = message.get("kwargs")
    if method not in ALLOWED_CALLS.get(service, ()):
        raise PermissionError(f"ctx.{service}.{method} is not available to handlers")
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise TypeError("malformed service call")
    if service == "emit":
        return await ctx.emit(*args, **kwargs)
    value = getattr(getattr(ctx, service), method)(*args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value


def _error_of(exc: BaseException) -> dict[str, Any]:
    error: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": getattr(exc, "message", None) or str(exc),
        "job_error": isinstance(exc, JobError),
    }
    if isinstance(exc, JobError):
        error["details"] = exc.details
    current = getattr(exc, "current_version", None)
    if current is not None:
        error["current_version"] = current
    return error


def _tail(process: _Process) -> str:
    """The last line the interpreter wrote before it died (a fatal error), for the run's reason."""
    try:
        with open(process.stderr, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][-500:] if lines else ""


def _handler_user(name: str) -> tuple[int, int] | None:
    """The (uid, gid) handler processes switch to when the worker runs as root, if configured."""
    if not name or os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid
