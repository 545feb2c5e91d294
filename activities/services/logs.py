"""Live logs: each entry a running step logs is published on Redis for
``GET /executions/{id}/logs/stream`` (the stored log on the execution stays the source of truth).

Publishing never slows or fails a step: entries go through a bounded in-process queue to one
publisher task that sends them in order, in pipelined batches; when Redis is down they are
dropped (the stream still replays them from the stored log when the step ends).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from registry.services.logstream import log_channel

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
BATCH = 200


class LogStream:
    def __init__(self, deps: Any) -> None:
        self.settings = deps.settings
        self._redis: Any = None
        self._queue: asyncio.Queue[tuple[str, str]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.published = 0
        self.dropped = 0

    def activities(self) -> list[Callable[..., Any]]:
        return []

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        from redis.asyncio import Redis

        if self._loop is not loop:
            self._redis = None  # a client is bound to the loop that created it
        self._loop, self._loop_thread = loop, threading.get_ident()
        self._queue = asyncio.Queue(QUEUE_SIZE)
        if self._redis is None:
            self._redis = Redis.from_url(self.settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        self._task = loop.create_task(self._publish_forever(self._queue), name="autoplat-log-publisher")

    def log_sink(self, execution_id: str) -> Callable[[dict[str, Any]], None]:
        """Called on the worker loop when a step starts; the sink may be called from any thread."""
        self._start()
        loop, queue = self._loop, self._queue
        assert loop is not None and queue is not None
        channel = log_channel(self.settings.redis_prefix, execution_id)

        def offer(line: str) -> None:
            try:
                queue.put_nowait((channel, line))
            except asyncio.QueueFull:
                self.dropped += 1

        def sink(entry: dict[str, Any]) -> None:
            line = json.dumps(entry, default=str)
            if threading.get_ident() == self._loop_thread:
                offer(line)
            else:
                loop.call_soon_threadsafe(offer, line)

        return sink

    async def _publish_forever(self, queue: asyncio.Queue[tuple[str, str]]) -> None:
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < BATCH:
                batch.append(queue.get_nowait())
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for channel, line in batch:
                        pipe.publish(channel, line)
                    await pipe.execute()
                self.published += len(batch)
            except Exception as exc:  # noqa: BLE001 - live logs are best effort; the stored log is kept
                self.dropped += len(batch)
                log.debug("publishing %d live log entries failed: %s", len(batch), exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()


def provider(deps: Any) -> LogStream:
    return LogStream(deps)
