"""Request body caps, applied before anything parses a body.

Every route gets ``AUTOPLAT_REQUEST_MAX_BODY_BYTES`` (1 MiB by default) unless it has a cap of its
own (:func:`route_caps`): module bundle uploads, manifest validation, module routes and events,
whose handlers check their own, finer limits too. A body is refused with 413 and the one error
body when its ``Content-Length`` says it is too large (nothing is read), or, for a chunked body
without one, as soon as the bytes received pass the cap: what arrives later is never buffered.

This is a plain ASGI middleware (not ``BaseHTTPMiddleware``) so it sees the raw ``receive``
stream the route, FastAPI's body parsing or the multipart parser read from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.settings import Settings

__all__ = ["BodyLimit", "BodyTooLarge", "Cap", "route_caps"]

KiB = 1024
MiB = 1024 * KiB
#: Envelope allowed around an event payload (name, id, source, timestamps, JSON punctuation).
_EVENT_ENVELOPE = 64 * KiB


@dataclass(frozen=True)
class Cap:
    """``limit(settings)`` bytes for ``method`` (None: any) on paths matching ``path`` (full match)."""

    method: str | None
    path: re.Pattern[str]
    limit: Callable[[Settings], int]


def route_caps() -> list[Cap]:
    """The routes whose cap differs from ``AUTOPLAT_REQUEST_MAX_BODY_BYTES``, most specific first."""
    from api.routes import module_routes, modules
    from registry import codestore

    def fixed(size: int) -> Callable[[Settings], int]:
        return lambda _settings: size

    bundle = fixed(codestore.MAX_BUNDLE_BYTES + modules.MULTIPART_SLACK)
    return [
        Cap("POST", re.compile(r"/api/v1/modules/validate"), fixed(modules.MAX_JSON_BYTES)),
        Cap("POST", re.compile(r"/api/v1/modules/?"), bundle),
        Cap("POST", re.compile(r"/api/v1/modules/[^/]+/upgrade"), bundle),
        Cap(None, re.compile(r"/api/v1/m/.*"), fixed(module_routes.MAX_BODY_BYTES)),
        Cap("POST", re.compile(r"/api/v1/events/?"), lambda s: s.event_payload_max_bytes + _EVENT_ENVELOPE),
    ]


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes its cap; mapped to 413 like any HTTPException."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {_shown(limit)}")
        self.limit = limit
        self.details = {"limit": limit}


def _shown(size: int) -> str:
    if size % MiB == 0:
        return f"{size // MiB} MiB"
    if size % KiB == 0:
        return f"{size // KiB} KiB"
    return f"{size} bytes"


class BodyLimit:
    """ASGI middleware: 413 for bodies over the route's cap, declared or streamed."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.caps = route_caps()

    def limit_for(self, method: str, path: str) -> int:
        for cap in self.caps:
            if (cap.method is None or cap.method == method) and cap.path.fullmatch(path):
                return cap.limit(self.settings)
        return self.settings.request_max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        length = _content_length(scope)
        if length is not None and length > limit:
            await _refuse(send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            # Raised where nothing mapped it (outside a route, e.g. a middleware reading the body).
            if started:
                raise
            await _refuse(send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _refuse(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], limit: int) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "payload_too_large",
                "message": f"request body over {_shown(limit)}",
                "details": {"limit": limit},
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is not read: the client must not reuse the connection.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
