"""Artifacts: DB and folder storage, replacement, validation, and the API's list / download / 404s."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from registry.db import unit_of_work
from registry.errors import InvalidInput, NotFound, PayloadTooLarge
from registry.models import Artifact
from registry.services import artifacts
from tests.services.helpers import make_execution


async def save(sessions: Any, execution_id: str, name: str, data: bytes, **kw: Any) -> Artifact:
    async with unit_of_work(sessions) as session:
        return await artifacts.save_artifact(
            session=session, execution_id=execution_id, name=name, content_type="text/plain", data=data, **kw
        )


async def test_db_storage_round_trip_and_replacement(sessions):
    eid = await make_execution(sessions)
    await save(sessions, eid, "report.txt", b"first", step="s1")
    await save(sessions, eid, "report.txt", b"second version", step="s1")  # a retried step saves again
    async with sessions() as session:
        rows = await artifacts.list_artifacts(session=session, execution_id=eid)
        assert [(r.name, r.size, r.storage, r.path) for r in rows] == [("report.txt", 14, "db", None)]
        found = await artifacts.get_artifact(session=session, execution_id=eid, name="report.txt")
    assert found.data == b"second version"
    assert found.artifact.sha256 == hashlib.sha256(b"second version").hexdigest()


async def test_folder_storage_keeps_bytes_out_of_the_db(sessions, tmp_path):
    eid = await make_execution(sessions)
    await save(sessions, eid, "shot.png", b"\x89PNG-bytes", artifacts_dir=tmp_path)
    assert (tmp_path / eid / "shot.png").read_bytes() == b"\x89PNG-bytes"
    async with sessions() as session:
        row = (await artifacts.list_artifacts(session=session, execution_id=eid))[0]
        assert (row.storage, row.path) == ("fs", f"{eid}/shot.png")
        found = await artifacts.get_artifact(session=session, execution_id=eid, name="shot.png", artifacts_dir=tmp_path)
        assert found.data == b"\x89PNG-bytes" and found.artifact.data is None
        with pytest.raises(NotFound, match="AUTOPLAT_ARTIFACTS_DIR is not set"):
            await artifacts.get_artifact(session=session, execution_id=eid, name="shot.png")
        (tmp_path / eid / "shot.png").unlink()
        with pytest.raises(NotFound, match="missing"):
            await artifacts.get_artifact(session=session, execution_id=eid, name="shot.png", artifacts_dir=tmp_path)


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b.png", ".hidden", "", "x" * 256, "a..b", "sp ace.png"])
async def test_unsafe_names_are_refused(sessions, tmp_path, name):
    eid = await make_execution(sessions)
    with pytest.raises(InvalidInput, match="invalid artifact name"):
        await save(sessions, eid, name, b"x", artifacts_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


async def test_size_cap_and_unknown_execution(sessions):
    eid = await make_execution(sessions)
    with pytest.raises(PayloadTooLarge):
        await save(sessions, eid, "big.bin", b"x" * 2048, max_bytes=1024)
    with pytest.raises(NotFound):
        await save(sessions, str(uuid.uuid4()), "a.txt", b"x")
    async with sessions() as session:
        assert await artifacts.list_artifacts(session=session, execution_id=eid) == []


async def test_api_lists_downloads_and_answers_standard_404s(client, sessions, viewer_headers):
    eid = await make_execution(sessions)
    await save(sessions, eid, "notes.txt", b"hello artifacts", step="collect")
    listing = await client.get(f"/api/v1/executions/{eid}/artifacts", headers=viewer_headers)
    assert listing.status_code == 200
    [item] = listing.json()["items"]
    assert item["name"] == "notes.txt" and item["size"] == 15 and item["content_type"] == "text/plain"
    assert item["sha256"] == hashlib.sha256(b"hello artifacts").hexdigest() and item["created_at"]
    r = await client.get(item["url"], headers=viewer_headers)
    assert r.status_code == 200 and r.content == b"hello artifacts"
    assert r.headers["content-disposition"] == 'attachment; filename="notes.txt"'

    missing = await client.get(f"/api/v1/executions/{eid}/artifacts/nope.txt", headers=viewer_headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found" and "nope.txt" in missing.json()["error"]["message"]
    for url in (f"/api/v1/executions/{uuid.uuid4()}/artifacts", f"/api/v1/executions/{uuid.uuid4()}/artifacts/a"):
        r = await client.get(url, headers=viewer_headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await client.get(f"/api/v1/executions/{eid}/artifacts")).status_code == 401


def test_artifact_names_are_checked_whole():
    from registry.errors import InvalidInput
    from registry.services.artifacts import check_name

    assert check_name("shot.png") == "shot.png"
    for bad in ("shot.png\n", "../x", ".hidden", "a/b", "a..b"):
        with pytest.raises(InvalidInput):
            check_name(bad)
