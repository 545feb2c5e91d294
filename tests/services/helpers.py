"""Real local stand-ins for outside services: an SMTP server (aiosmtpd) and HTTP receivers."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    from tests.conftest import free_port as pick

    return pick()


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage


class _Collect:
    def __init__(self) -> None:
        self.mails: list[Mail] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 OK"


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: _Collect

    @property
    def mails(self) -> list[Mail]:
        return self.handler.mails


@contextmanager
def smtp_server() -> Iterator[SmtpServer]:
    from aiosmtpd.controller import Controller

    handler = _Collect()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        controller.stop()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    #: Statuses answered in order; the last one repeats.
    statuses: list[int] = field(default_factory=lambda: [200])
    pages: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: When set, every answer waits until this event is set (a receiver that is slow to respond).
    hold: threading.Event | None = None


@contextmanager
def http_receiver(**pages: tuple[str, str]) -> Iterator[Receiver]:
    """A threaded HTTP server recording every request; ``pages`` maps paths to (content type, body),
    or to ``("redirect", location)`` for a 302."""
    receiver = Receiver(url="")
    receiver.pages.update({f"/{k}": v for k, v in pages.items()})

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?")[0]
            receiver.requests.append(Received(self.command, self.path, dict(self.headers.items()), body))
            if receiver.hold is not None:
                receiver.hold.wait(timeout=300)
            if path in receiver.pages and receiver.pages[path][0] == "redirect":
                self.send_response(302)
                self.send_header("Location", receiver.pages[path][1])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path in receiver.pages:
                ctype, text = receiver.pages[path]
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", ctype)
            else:
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                data = b'{"ok": true}' if status < 300 else b'{"error": "no"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = _answer  # noqa: N815 - http.server API

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


async def make_execution(sessions: Any) -> str:
    """A finished execution row to attach artifacts to."""
    import uuid

    from registry.db import unit_of_work
    from registry.models import Execution

    async with unit_of_work(sessions) as session:
        row = Execution(
            module_name="m", job_type="j", workflow_id=f"wf-{uuid.uuid4().hex}", trigger="manual", status="COMPLETED"
        )
        session.add(row)
        await session.flush()
        return row.id
