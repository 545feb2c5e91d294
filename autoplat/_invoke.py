"""Calling a handler: async in the running loop, sync in a thread that can really be stopped."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

from autoplat.context import JobContext
from autoplat.errors import Cancelled

#: How long a stopped sync handler gets to unwind (its finally blocks) before the step moves on.
STOP_GRACE_SECONDS = 5.0


def resolve_handler(ref: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (the code root must already be importable)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ValueError(f"handler reference {ref!r} is not 'package.module:function'")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise AttributeError(f"{ref}: {attr} is not a callable in {module_name}")
    return fn  # type: ignore[no-any-return]


def _arguments(fn: Callable[..., Any], ctx: JobContext) -> tuple[Any, ...]:
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return (ctx,)
    if varargs or len(params) >= 2:
        return (ctx, ctx.previous)
    return (ctx,)


async def invoke(fn: Callable[..., Any], ctx: JobContext) -> Any:
    """Run ``fn(ctx)`` (or ``fn(ctx, previous)``). Cancelling this coroutine stops the handler.

    Async handlers are cancelled at their next ``await``. Sync handlers run in a dedicated thread;
    on cancellation :class:`Cancelled` is raised inside that thread (at its next Python bytecode),
    so a timed-out or cancelled step really stops instead of running on unseen.
    """
    args = _arguments(fn, ctx)
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = asyncio.run_coroutine_threadsafe(_await(result), loop).result()
            loop.call_soon_threadsafe(settle, True, result)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, False, exc)

    thread = threading.Thread(target=target, name=f"handler-{ctx.execution_id[:8]}", daemon=True)
    thread.start()
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        _raise_in_thread(thread, Cancelled)
        # Give the handler a moment to run its ``finally`` blocks (and log) before we go on.
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(future), timeout=STOP_GRACE_SECONDS)
        raise


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _raise_in_thread(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    if thread.ident is None or not thread.is_alive():
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))
