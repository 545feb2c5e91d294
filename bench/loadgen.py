"""A light HTTP/1.1 load generator for the benchmarks' loaded phases.

The benchmarks run the load and the platform on one 2-core box: what the load generator spends is
taken from the server. httpx spent ~2.2 ms of CPU per ``POST /events`` here, as much as the API
spent answering it, so a loaded phase measured the two together. This client keeps ``connections``
HTTP/1.1 keep-alive connections on plain asyncio streams, one request in flight on each (as wrk
or hey do), and parses only the status line, ``Content-Length`` and the body: ~0.1 ms of CPU per
request here, about a twentieth of httpx's. Everything else in the benchmarks (set-up, checks,
low-load phases) still uses httpx.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class LoadError(RuntimeError):
    """A request answered something other than what the benchmark expects (or the connection broke)."""


@dataclass
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{self.host}:{self.port}", **headers}.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: Any = None) -> Reply:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = f"{method} {path} HTTP/1.1\r\n{self.fixed}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + data)
        status_line = await self.reader.readline()
        if not status_line:
            await self.close()
            raise LoadError(f"{method} {path}: the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
            elif key == b"transfer-encoding":
                raise LoadError(f"{method} {path}: chunked answers are not supported by this client")
        reply = Reply(status, await self.reader.readexactly(length))
        if close:
            await self.close()
        return reply

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


@dataclass
class Load:
    """What a loaded phase measured: each request's round trip (ms) and whatever ``check`` kept."""

    latencies_ms: list[float] = field(default_factory=list)
    kept: list[Any] = field(default_factory=list)
    seconds: float = 0.0


async def drive(
    base_url: str,
    headers: dict[str, str],
    requests: list[tuple[str, str, Any]],
    *,
    connections: int,
    check: Callable[[Reply], Any],
) -> Load:
    """Send ``requests`` (method, path, JSON body) over ``connections`` keep-alive connections, each
    taking the next request as soon as its previous answer arrived. ``check`` gets every answer
    and returns what to keep (raising :class:`LoadError` ends the run)."""
    load = Load()
    queue = iter(enumerate(requests))
    kept: dict[int, Any] = {}

    async def one_connection() -> None:
        conn = Connection(base_url, headers)
        try:
            for index, (method, path, body) in queue:
                started = time.time()
                t0 = time.perf_counter()
                reply = await conn.request(method, path, body)
                load.latencies_ms.append((time.perf_counter() - t0) * 1000)
                kept[index] = (check(reply), started)
        finally:
            await conn.close()

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(connections):
            group.create_task(one_connection())
    load.seconds = time.perf_counter() - t0
    load.kept = [kept[i] for i in range(len(requests))]
    return load
