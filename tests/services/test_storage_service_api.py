"""Operators read a module's storage over REST; viewers cannot."""

from __future__ import annotations

from types import SimpleNamespace

from activities.services.storage import StorageService
from tests.jobs.helpers import put_module, write_module


async def test_operators_page_through_a_modules_documents(
    client, sessions, settings, tmp_path, operator_headers, viewer_headers
):
    for name in ("keeper", "other"):
        folder = write_module(tmp_path, name=name, code="", jobs=[], extra={"permissions": {"services": ["storage"]}})
        await put_module(sessions, settings.state_dir, folder)
    service = StorageService(SimpleNamespace(settings=settings, sessions=sessions))
    await service.module_storage("keeper").put_many({f"rec/{i}": {"i": i} for i in range(5)})
    await service.module_storage("keeper").put("cfg", {"a": 1}, ttl=3600)
    await service.module_storage("other").put("rec/9", {"i": 9})

    r = await client.get("/api/v1/modules/keeper/storage?prefix=rec/&limit=3", headers=operator_headers)
    assert r.status_code == 200, r.text
    page = r.json()
    assert [d["key"] for d in page["items"]] == ["rec/0", "rec/1", "rec/2"] and page["next_after"] == "rec/2"
    r = await client.get(
        f"/api/v1/modules/keeper/storage?prefix=rec/&limit=3&after={page['next_after']}", headers=operator_headers
    )
    assert [d["key"] for d in r.json()["items"]] == ["rec/3", "rec/4"] and r.json()["next_after"] is None

    r = await client.get("/api/v1/modules/keeper/storage/rec/4", headers=operator_headers)
    assert r.status_code == 200 and r.json()["value"] == {"i": 4} and r.json()["expires_at"] is None
    cfg = (await client.get("/api/v1/modules/keeper/storage/cfg", headers=operator_headers)).json()
    assert cfg["expires_at"] is not None
    missing = await client.get("/api/v1/modules/keeper/storage/rec/9", headers=operator_headers)  # other's key
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert (await client.get("/api/v1/modules/nope/storage", headers=operator_headers)).status_code == 404
    assert (await client.get("/api/v1/modules/keeper/storage", headers=viewer_headers)).status_code == 403
    assert (await client.get("/api/v1/modules/keeper/storage?limit=0", headers=operator_headers)).status_code == 422
    for bad in ("/api/v1/modules/keeper/storage?prefix=a%00b", "/api/v1/modules/keeper/storage/a%00b"):
        r = await client.get(bad, headers=operator_headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text
