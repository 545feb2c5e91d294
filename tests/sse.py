"""Reading server-sent events off an open streaming httpx response (tests on a real server)."""

from __future__ import annotations

import asyncio

import httpx

TIMEOUT = 15


class Stream:
    """Reads server-sent events off an open streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self) -> dict[str, str] | None:
        """The next event's fields; None once the server ended the stream."""
        fields: dict[str, str] = {}
        async for line in self.lines:
            if not line:
                if "data" in fields:
                    return fields
                continue
            if line.startswith(":"):
                continue  # keep-alive comment
            key, _, value = line.partition(":")
            fields[key] = value[1:] if value.startswith(" ") else value
        return None

    async def take(self) -> dict[str, str]:
        event = await asyncio.wait_for(self.next(), timeout=TIMEOUT)
        assert event is not None, "stream ended"
        return event

    async def take_many(self, n: int) -> list[dict[str, str]]:
        return [await self.take() for _ in range(n)]

    async def rest(self) -> list[dict[str, str]]:
        """Every event until the server ends the stream."""
        events = []
        while (event := await asyncio.wait_for(self.next(), timeout=TIMEOUT)) is not None:
            events.append(event)
        return events
