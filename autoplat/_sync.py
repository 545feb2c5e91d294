"""Running a service coroutine from a sync handler's thread (the ``*_sync`` twins of services), and
awaiting a write to its end whatever cancellation arrives meanwhile (:func:`to_completion`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: How often a waiting sync twin wakes up, so a cancelled handler thread is stopped promptly
#: (``autoplat._invoke`` raises ``Cancelled`` into the thread; a blocked wait would never see it).
_SLICE_SECONDS = 0.2

Runner = Callable[[Awaitable[Any]], Any]


async def _await(aw: Awaitable[T]) -> T:
    return await aw


async def to_completion(aw: Awaitable[T]) -> tuple[T, bool]:
    """Run ``aw`` to its end even if the caller is cancelled, once or repeatedly, meanwhile;
    returns its result and whether the caller was cancelled. Used for the mirror writes of a step
    (its cleanup) and of the job workflow (its local activities), where an abandoned write would
    lose logs or leave a row RUNNING. Deterministic: in a workflow it only creates a task."""
    task = asyncio.ensure_future(aw)
    interrupted = False
    while True:
        try:
            return await asyncio.shield(task), interrupted
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            interrupted = True


def loop_runner(loop: asyncio.AbstractEventLoop) -> Runner:
    """A runner executing coroutines on ``loop`` (the worker's) from another thread, and waiting."""
    owner = threading.get_ident()

    def run(aw: Awaitable[Any]) -> Any:
        if threading.get_ident() == owner or _running_on(loop):
            close = getattr(aw, "close", None)
            if close is not None:
                close()
            raise RuntimeError("the *_sync service methods are for sync handlers; in async handlers use `await`")
        future = asyncio.run_coroutine_threadsafe(_await(aw), loop)
        try:
            while True:
                try:
                    return future.result(timeout=_SLICE_SECONDS)
                except concurrent.futures.TimeoutError:
                    continue
        except BaseException:
            future.cancel()
            raise

    return run


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
