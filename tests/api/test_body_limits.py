"""Request bodies are capped before anything parses them: 413 with the one error body, on every
route (login included), from the declared length or, for a chunked body, from the bytes received."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

KiB = 1024
MiB = 1024 * KiB


class Chunks:
    """A chunked request body (no Content-Length) that counts what the server pulled."""

    def __init__(self, total: int, chunk: int = 64 * KiB) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # A JSON string, so a server that parsed it all would see valid JSON.
        yield b'{"email": "a@example.com", "password": "'
        while self.sent < self.total:
            self.sent += self.chunk
            yield b"x" * self.chunk
        yield b'"}'


def assert_413(r, limit: int) -> None:
    assert r.status_code == 413, r.text
    shown = f"{limit // MiB} MiB" if limit % MiB == 0 else f"{limit // KiB} KiB"
    assert r.json() == {
        "error": {"code": "payload_too_large", "message": f"request body over {shown}", "details": {"limit": limit}}
    }


async def test_login_body_over_the_cap_is_refused_before_parsing(client, settings):
    cap = settings.request_max_body_bytes
    body = json.dumps({"email": "a@example.com", "password": "x" * cap}).encode()
    r = await client.post("/api/v1/auth/login", content=body, headers={"Content-Type": "application/json"})
    assert_413(r, cap)
    # The declared length alone is enough: nothing is read.
    r = await client.post(
        "/api/v1/auth/login",
        content=b"{}",
        headers={"Content-Type": "application/json", "Content-Length": str(cap + 1)},
    )
    assert r.status_code == 413


async def test_a_chunked_body_is_cut_off_at_the_cap(client, settings):
    cap = settings.request_max_body_bytes
    body = Chunks(100 * MiB)
    r = await client.post("/api/v1/auth/login", content=body, headers={"Content-Type": "application/json"})
    assert_413(r, cap)
    # Refused at the cap, not after buffering the 100 MiB.
    assert body.sent <= cap + 2 * body.chunk


async def test_every_authenticated_route_is_capped_too(client, settings, admin_headers):
    settings.request_max_body_bytes = 64 * KiB
    big = {"config": {"x": "y" * 65 * KiB}}
    for method, url in [
        ("PUT", "/api/v1/modules/any/config"),
        ("POST", "/api/v1/jobs"),
        ("POST", "/api/v1/users"),
        ("PATCH", "/api/v1/jobs/any"),
    ]:
        r = await client.request(method, url, json=big, headers=admin_headers)
        assert_413(r, 64 * KiB)
        r = await client.request(
            method, url, content=Chunks(MiB), headers={**admin_headers, "Content-Type": "application/json"}
        )
        assert_413(r, 64 * KiB)


async def test_routes_with_larger_caps_keep_them(client, settings, admin_headers):
    settings.request_max_body_bytes = 64 * KiB
    # Manifest validation takes up to 2 MiB of JSON: a 1 MiB manifest is validated, not refused.
    manifest = {"name": "big-one", "description": "d" * MiB}
    r = await client.post("/api/v1/modules/validate", json=manifest, headers=admin_headers)
    assert r.status_code == 200, r.text
    r = await client.post("/api/v1/modules/validate", content=Chunks(3 * MiB), headers=admin_headers)
    assert_413(r, 2 * MiB)
    # Events take the payload limit plus an envelope.
    payload = {"blob": "x" * (200 * KiB)}
    r = await client.post("/api/v1/events", json={"name": "data.big", "payload": payload}, headers=admin_headers)
    assert r.status_code == 201, r.text
    r = await client.post(
        "/api/v1/events", content=Chunks(2 * MiB), headers={**admin_headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 413
    # Bundle uploads: up to 20 MiB (and the route's own, finer check).
    r = await client.post(
        "/api/v1/modules",
        files={"bundle": ("b.tar.gz", b"\x1f\x8b" + b"0" * (2 * MiB))},
        headers=admin_headers,
    )
    assert r.status_code == 422, r.text  # read and refused as a corrupt archive, not by size
    r = await client.post(
        "/api/v1/modules",
        content=b"x",
        headers={**admin_headers, "Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(30 * MiB)},
    )
    assert r.status_code == 413
