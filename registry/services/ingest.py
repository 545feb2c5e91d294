"""Group commit of accepted events: concurrent ``POST /events`` share one transaction.

Each request checks its event (``events.fresh``) and hands it over; one flush at a time stores every
event handed over since the previous flush began, with one multi-row ``INSERT ... RETURNING``, commits,
wakes the dispatcher once and publishes them live in one Redis pipeline, then answers all their
requests. Nothing waits to fill a batch: at low load a flush holds one event and costs what the
request's own transaction did; under load the transaction, its commit, the Redis round trip and the
dispatcher's wake-up are shared by every event that arrived while the previous flush ran.

An event's request is answered only after its row is committed, as before: a 201 still means
stored. A batch the database refuses (a statement error, not an outage) is stored again one event
per transaction, so one bad event fails alone; an outage fails every event of the batch (the API
answers 503): none of them was stored, unless the connection broke while the COMMIT itself was on
its way, when the outcome is unknown, as it was for a single event. Clients that retry send an
``id`` (an idempotent retry never stores a second event).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry import metrics
from registry.db import is_unavailable, unit_of_work
from registry.errors import ServiceUnavailable
from registry.models import Event
from registry.services import events

log = logging.getLogger(__name__)

#: Most events one flush stores (one INSERT statement's rows).
MAX_BATCH_EVENTS = 256
#: Most payload bytes one flush stores: a batch of large payloads is split (one event always fits).
MAX_BATCH_BYTES = 4 * 1024 * 1024
#: How long :meth:`EventIngest.close` waits for a flush in progress.
CLOSE_GRACE_SECONDS = 5.0


@dataclass
class _Pending:
    event: Event
    size: int
    done: asyncio.Future[None]
    #: Committed: whatever happens next (a cancelled publish), its request answers success.
    stored: bool = False


class EventIngest:
    """Stores new events in shared transactions (see the module's docstring). One per API process.

    ``publish`` gets the stored events as the API shows them, after the commit (it must not raise:
    the live stream is best effort); ``notify`` wakes the dispatcher.
    """

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        publish: Callable[[list[dict[str, Any]]], Awaitable[None]],
        notify: Callable[[], None],
    ) -> None:
        self.sessions = sessions
        self.publish = publish
        self.notify = notify
        self._queue: deque[_Pending] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        #: Flushes so far and the most events one of them stored (tests and diagnosis).
        self.flushes = 0
        self.largest = 0

    async def store(self, event: Event, size: int) -> None:
        """Store ``event`` (a fresh one from ``events.fresh``; ``size``: its payload's bytes):
        returns once it is committed and published, with its ``seq`` set. Raises what storing it
        raised (an outage: every event of its batch; a refused statement: this event's own)."""
        if self._closed:
            raise ServiceUnavailable("the API is shutting down; try again shortly")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(event, size, done))
        if self._flusher is None or self._flusher.done():
            # A context of its own: the flush serves many requests, not the one that started it.
            self._flusher = asyncio.create_task(
                self._flush_all(), name="autoplat-event-ingest", context=contextvars.Context()
            )
        await done

    async def close(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Refuse new events (503) and wait at most ``grace`` seconds for the flushes in progress:
        their requests are answered. A flush still running then is cancelled (its requests answer
        503; its transaction rolls back) and waited for briefly, so the engine is not disposed under it."""
        self._closed = True
        task = self._flusher
        if task is None or task.done():
            return
        _, pending = await asyncio.wait({task}, timeout=grace)
        if pending:
            log.warning("event ingest still flushing after %.0f s: cancelled", grace)
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    async def _flush_all(self) -> None:
        while self._queue:
            batch = self._take()
            try:
                await self._store(batch)
            except BaseException:  # cancelled (shutdown): no request is left hanging
                stopped = ServiceUnavailable("the API is shutting down; try again shortly")
                for pending in [*batch, *self._queue]:
                    _settle(pending, None if pending.stored else stopped)
                self._queue.clear()
                raise

    def _take(self) -> list[_Pending]:
        batch = [self._queue.popleft()]
        size = batch[0].size
        while self._queue and len(batch) < MAX_BATCH_EVENTS and size + self._queue[0].size <= MAX_BATCH_BYTES:
            size += self._queue[0].size
            batch.append(self._queue.popleft())
        return batch

    async def _store(self, batch: list[_Pending]) -> None:
        failure = await self._insert(batch)
        if failure is not None and len(batch) > 1 and not is_unavailable(failure):
            # Refused: find the event it was about by storing each on its own (until an outage,
            # which fails the rest at once rather than one connection attempt each).
            log.warning("a batch of %d events was refused (%s); storing them one by one", len(batch), failure)
            for n, pending in enumerate(batch):
                alone = await self._insert([pending])
                if alone is not None and is_unavailable(alone):
                    for rest in batch[n:]:
                        _settle(rest, alone)
                    return
                _settle(pending, alone)
            return
        for pending in batch:
            _settle(pending, failure)

    async def _insert(self, batch: list[_Pending]) -> Exception | None:
        """Store ``batch`` in one transaction; then wake the dispatcher and publish it. Returns what
        storing it raised, if anything (publishing and waking never fail a stored event)."""
        try:
            async with unit_of_work(self.sessions) as session:
                await events.insert_fresh(session, [p.event for p in batch])
        except Exception as exc:  # noqa: BLE001 - handed to each request, which answers it
            return exc
        for pending in batch:
            pending.stored = True
        self.flushes += 1
        self.largest = max(self.largest, len(batch))
        metrics.EVENT_INGEST_BATCH.observe(len(batch))
        try:
            self.notify()
            await self.publish([events.as_dict(p.event) for p in batch])
        except Exception:  # noqa: BLE001 - the events are stored: the live stream is best effort
            log.exception("could not hand on %d stored events", len(batch))
        return None


def _settle(pending: _Pending, exc: BaseException | None) -> None:
    if pending.done.done():  # its request was cancelled meanwhile
        return
    if exc is None:
        pending.done.set_result(None)
    elif isinstance(exc, asyncio.CancelledError):
        pending.done.cancel()
    else:
        pending.done.set_exception(exc)
