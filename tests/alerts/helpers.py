"""A local webhook receiver, a module with a series and a module that ships alert rules, for the
alerting tests."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from registry.db import unit_of_work
from registry.models import Module, ModuleStatus

SERIES = {
    "name": "meter",
    "fields": {"energy_kwh": {"type": "counter"}, "power_w": {"type": "gauge"}},
    "labels": ["site", "meter"],
}
MANIFEST = {
    "name": "meters",
    "permissions": {"services": ["series"]},
    "series": [SERIES],
    "jobs": [{"name": "read", "handler": "meters:read"}],
}


async def add_meters_module(sessions: Any) -> None:
    async with unit_of_work(sessions) as session:
        session.add(
            Module(
                name="meters",
                version="1.0.0",
                display_name="Meters",
                manifest=MANIFEST,
                status=ModuleStatus.ENABLED.value,
            )
        )


# --- a module that ships alert rules (tests/alerts/test_module_rules.py, tests/console) ---------------
NAME = "watt-mod"

POWER = {
    "name": "power high",
    "severity": "critical",
    "source": "series",
    "message": "{{labels.endpoint}} draws {{value}} W",
    "condition": {"series": "power", "field": "power_w", "agg": "last", "window_minutes": 10, "op": "gt",
                  "threshold": 3000},
}  # fmt: skip
OFFLINE = {
    "name": "offline",
    "source": "series",
    "message": "no reading from {{labels.endpoint}}",
    "condition": {"series": "power", "field": "total_kwh", "agg": "count", "window_minutes": 15, "op": "lt",
                  "threshold": 1, "no_data_minutes": 15},
}  # fmt: skip
FAILING = {
    "name": "collect failing",
    "source": "job",
    "message": "{{job.name}} failed {{failures}} times",
    "condition": {"job": "collect", "failures": 3},
}


def rules_manifest(version: str = "1.0.0", alerts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": NAME,
        "version": version,
        "displayName": "Watts",
        "description": "A module with a series and default alert rules",
        "author": "Tests <tests@example.com>",
        "permissions": {"services": ["series"]},
        "series": [
            {
                "name": "power",
                "fields": {"total_kwh": {"type": "counter"}, "power_w": {"type": "gauge"}},
                "labels": ["endpoint"],
            }
        ],
        "jobs": [{"name": "collect", "description": "Read the meters", "handler": "watt_mod.jobs:run"}],
        "alerts": copy.deepcopy([POWER, OFFLINE, FAILING] if alerts is None else alerts),
    }


@dataclass
class Receiver:
    """What a webhook target received: one entry per request (headers, JSON body)."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: While set, the first request is held open (not answered) until ``release`` is set.
    hold_first: bool = False
    #: Requests of this transition are held open until ``release`` is set.
    hold_transition: str | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def by_transition(self, transition: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["body"]["data"].get("transition") == transition]


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    """A real HTTP server on a free loopback port that records every request and answers 200."""
    got = Receiver(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            got.requests.append({"headers": headers, "body": json.loads(body or b"{}")})
            got.arrived.set()
            transition = got.requests[-1]["body"].get("data", {}).get("transition")
            if (got.hold_first and len(got.requests) == 1) or (
                got.hold_transition and transition == got.hold_transition
            ):
                await got.release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    got.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield got
    finally:
        got.release.set()
        server.close()
        await server.wait_closed()
