"""A sync handler blocked in ``ctx.http.get_sync`` is still stopped by the step's timeout."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually
from tests.jobs.helpers import put_module, write_module

CODE = """
from pathlib import Path

def hang(ctx):
    try:
        ctx.http.get_sync(ctx.config["url"], timeout=300, retries=0)
    finally:
        Path(ctx.config["marker"]).write_text("stopped")
"""
CONFIG = {"type": "object", "properties": {"url": {"type": "string"}, "marker": {"type": "string"}}}


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts requests and never answers until the test ends."""
    release = threading.Event()

    class Silent(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            release.wait(60)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow"
    release.set()
    server.shutdown()
    server.server_close()


async def test_timeout_stops_a_sync_handler_waiting_on_http(
    worker, client, sessions, settings, tmp_path: Path, silent_server, operator_headers
):
    folder = write_module(
        tmp_path,
        name="hanger",
        code=CODE,
        jobs=[{"name": "hang", "description": "waits on HTTP", "handler": "hang", "config": CONFIG}],
        extra={"permissions": {"hosts": ["127.0.0.1"], "services": ["http"]}},
    )
    await put_module(sessions, settings.state_dir, folder)
    marker = tmp_path / "marker"
    r = await client.post(
        "/api/v1/jobs",
        json={
            "module": "hanger",
            "job_type": "hang",
            "name": "hang",
            "schedule": None,
            "timeout_seconds": 2,
            "config": {"url": silent_server, "marker": str(marker)},
        },
        headers=operator_headers,
    )
    assert r.status_code == 201, r.text
    run = (await client.post(f"/api/v1/jobs/{r.json()['id']}/execute?wait=true", headers=operator_headers)).json()
    assert run["status"] == "TIMED_OUT", run

    async def stopped() -> bool:
        return marker.exists()

    await eventually(stopped, timeout=10, what="the handler's finally ran")
