"""Group commit of accepted events: concurrent ``POST /events`` share one transaction.

Each request checks its event (``events.fresh``) and hands it over; one flush at a time stores every
event handed over since the previous flush began, with one multi-row ``INSERT ... RETURNING``, commits,
publishes them live in one Redis pipeline and wakes the dispatcher once, then answers all their
requests. Nothing waits to fill a batch: at low load a flush holds one event and costs what the
request's own transaction did; under load the transaction, its commit, the Redis round trip and the
dispatcher's wake-up are shared by every event that arrived while the previous flush ran.

An event's request is answered only after its row is committed (and published), as before: a 201
still means stored. A batch the database refuses (a statement error, not an outage) is stored again
one event per transaction, so one bad event fails alone; an outage fails every event of the batch
(the API answers 503 and none of them was stored).
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
        #: Flushes so far and the most events one of them stored (tests and diagnosis).
        self.flushes = 0
        self.largest = 0

    async def store(self, event: Event, size: int) -> None:
        """Store ``event`` (a fresh one from ``events.fresh``; ``size``: its payload's bytes):
        returns once it is committed and published, with its ``seq`` set. Raises what storing it
        raised (an outage: every event of its batch; a refused statement: this event's own)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(event, size, done))
        if self._flusher is None or self._flusher.done():
            # A context of its own: the flush serves many requests, not the one that started it.
            self._flusher = asyncio.create_task(
                self._flush_all(), name="autoplat-event-ingest", context=contextvars.Context()
            )
        await done

    async def close(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Wait (at most ``grace`` seconds) for the flush in progress: its requests are answered."""
        task = self._flusher
        if task is not None and not task.done():
            _, pending = await asyncio.wait({task}, timeout=grace)
            if pending:
                task.cancel()

    async def _flush_all(self) -> None:
        while self._queue:
            batch = self._take()
            try:
                await self._store(batch)
            except BaseException as exc:  # cancelled (shutdown): no request is left hanging
                for pending in [*batch, *self._queue]:
                    _settle(pending, exc)
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
        try:
            async with unit_of_work(self.sessions) as session:
                await events.insert_fresh(session, [p.event for p in batch])
        except Exception as exc:  # noqa: BLE001 - handed to each request, which answers it
            if len(batch) > 1 and not is_unavailable(exc):
                # Refused: find the event it was about by storing each on its own.
                log.warning("a batch of %d events was refused (%s); storing them one by one", len(batch), exc)
                for pending in batch:
                    await self._store([pending])
                return
            for pending in batch:
                _settle(pending, exc)
            return
        self.flushes += 1
        self.largest = max(self.largest, len(batch))
        metrics.EVENT_INGEST_BATCH.observe(len(batch))
        await self.publish([events.as_dict(p.event) for p in batch])
        self.notify()
        for pending in batch:
            _settle(pending, None)


def _settle(pending: _Pending, exc: BaseException | None) -> None:
    if pending.done.done():  # its request was cancelled meanwhile
        return
    if exc is None:
        pending.done.set_result(None)
    elif isinstance(exc, asyncio.CancelledError):
        pending.done.cancel()
    else:
        pending.done.set_exception(exc)
