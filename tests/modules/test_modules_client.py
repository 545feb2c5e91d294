"""``autoplat.client.register_module`` (behind ``autoplat module register``) against a real HTTP server."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import tarfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from autoplat.client import pack_module, register_module
from registry import codestore

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def api_url(settings: Any, client: Any) -> Iterator[str]:
    """The API served by uvicorn in a thread, with its own resources (the test's DB and state folder)."""
    from api.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.025)  # the server thread has no loop we could await
    assert server.started
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


async def test_register_install_enable_then_rerun_and_upgrade(api, api_url, make_user):
    admin = await make_user("admin", password=PASSWORD)
    folder = api.folder()

    def call(**kw: Any) -> dict[str, Any]:
        return register_module(folder, api_url=api_url, user=admin.email, password=PASSWORD, **kw)

    module = await asyncio.to_thread(call, enable=True)
    assert (module["name"], module["version"], module["status"]) == ("demo-mod", "1.0.0", "ENABLED")
    # Running it again changes nothing.
    again = await asyncio.to_thread(call, enable=True)
    assert (again["status"], again["revision"]) == ("ENABLED", module["revision"])

    # A newer version in the same folder is uploaded as an upgrade; the state is kept.
    data = json.loads((folder / "manifest.json").read_text())
    data["version"] = "1.1.0"
    (folder / "manifest.json").write_text(json.dumps(data))
    upgraded = await asyncio.to_thread(call, upload=True)
    assert (upgraded["version"], upgraded["status"]) == ("1.1.0", "ENABLED")


async def test_errors_carry_the_api_message(api, api_url, make_user):
    admin = await make_user("admin", password=PASSWORD)
    with pytest.raises(RuntimeError, match="HTTP 401"):
        await asyncio.to_thread(register_module, api.folder(), api_url=api_url, user=admin.email, password="wrong")
    with pytest.raises(RuntimeError, match="token"):
        await asyncio.to_thread(register_module, api.folder(name="other-mod"), api_url=api_url)

    bad = api.folder(name="bad-mod", code="def other(ctx):\n    return 1\n")
    with pytest.raises(RuntimeError) as info:
        await asyncio.to_thread(
            register_module, bad, api_url=api_url + "/api/v1", user=admin.email, password=PASSWORD, upload=True
        )
    assert "invalid_manifest" in str(info.value)
    assert "/jobs/0/handler [handler.unresolvable]" in str(info.value)


def test_pack_module_is_deterministic_and_accepted_by_the_server(make_folder, tmp_path):
    folder = make_folder()
    (folder / "demo_mod" / "__pycache__").mkdir()
    (folder / "demo_mod" / "__pycache__" / "x.pyc").write_bytes(b"x")
    data = pack_module(folder)
    assert pack_module(folder) == data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert "demo_mod/__pycache__" not in tar.getnames()
    codestore.safe_extract(data, tmp_path / "out", max_bytes=codestore.MAX_UNPACKED_BYTES, max_files=10)
    assert (tmp_path / "out" / "manifest.json").read_bytes() == (folder / "manifest.json").read_bytes()
