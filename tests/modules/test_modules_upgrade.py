"""Upgrades: a strictly greater version, validated and import-checked, the state kept, old versions
kept for the executions pinned to them."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

MODULES = "/api/v1/modules"


class Hooks:
    def __init__(self) -> None:
        self.upgraded: list[tuple[str, str, str]] = []

    async def module_enabled(self, **kw: Any) -> None: ...

    async def module_disabled(self, **kw: Any) -> None: ...

    async def module_uninstalled(self, **kw: Any) -> None: ...

    async def module_upgraded(self, *, session: Any, module: Any, previous_version: str) -> None:
        self.upgraded.append((module.name, previous_version, module.version))


def packed(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


async def upgrade(api: Any, name: str, folder: Path) -> Any:
    return await api.client.post(f"{MODULES}/{name}/upgrade", json={"path": str(folder)}, headers=api.headers)


async def test_upgrade_keeps_the_state_and_every_version(api, db, app_state, settings):
    hooks = Hooks()
    app_state.hooks = hooks
    v1 = await api.enabled()
    r = await upgrade(api, "demo-mod", api.folder(version="1.1.0", description="Second release"))
    assert r.status_code == 200, r.text
    v2 = r.json()
    assert (v2["status"], v2["version"], v2["description"]) == ("ENABLED", "1.1.0", "Second release")
    assert v2["manifest"]["version"] == "1.1.0" and v2["bundle_sha256"] != v1["bundle_sha256"]
    assert v2["revision"] == v1["revision"] + 1 and v2["enabled_at"] == v1["enabled_at"]
    assert hooks.upgraded == [("demo-mod", "1.0.0", "1.1.0")]
    name, payload = (await db.events())[-1]
    assert name == "module.upgraded"
    assert payload == {"name": "demo-mod", "version": "1.1.0", "status": "ENABLED", "previous_version": "1.0.0"}

    # Upload a third version as a bundle.
    r = await api.upload(packed(api.folder(version="2.0.0")), "demo.tar.gz", url=f"{MODULES}/demo-mod/upgrade")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == "2.0.0"

    r = await api.client.get(f"{MODULES}/demo-mod/versions", headers=api.headers)
    body = r.json()
    assert body["total"] == 3
    assert [(v["version"], v["current"]) for v in body["items"]] == [
        ("2.0.0", True),
        ("1.1.0", False),
        ("1.0.0", False),
    ]
    assert body["items"][2]["bundle_sha256"] == v1["bundle_sha256"]
    assert body["items"][0]["source"] == "upload:demo.tar.gz"
    assert body["items"][1]["source"].startswith("path:")
    # The code of the old versions stays on disk for executions that started on them.
    folders = sorted(p.name for p in (settings.state_dir / "code" / "demo-mod").iterdir())
    assert [f.split("-")[0] for f in folders] == ["1.0.0", "1.1.0", "2.0.0"]


async def test_upgrade_needs_a_greater_version_and_the_same_name(api, db):
    await api.installed(version="1.2.0")
    for version in ("1.2.0", "1.1.9", "1.2.0+build.7", "1.2.0-rc.1"):
        r = await upgrade(api, "demo-mod", api.folder(version=version, root=api.root / version))
        assert r.status_code == 409, (version, r.text)
        error = r.json()["error"]
        assert "must be greater than 1.2.0" in error["message"]
        assert error["details"] == {"current_version": "1.2.0", "version": version}
    r = await upgrade(api, "demo-mod", api.folder(name="other-mod", version="9.0.0"))
    assert r.status_code == 422 and "not 'demo-mod'" in r.json()["error"]["message"]
    r = await upgrade(api, "nope", api.folder(version="9.9.9"))
    assert r.status_code == 404
    module = await db.module("demo-mod")
    assert (module.version, module.status, module.revision) == ("1.2.0", "INSTALLED", 2)
    assert await db.counts() == (1, 1)


async def test_an_installed_module_is_not_upgraded_to_code_that_does_not_import(api, db):
    before = await api.enabled()
    r = await upgrade(api, "demo-mod", api.folder(version="1.1.0", code=api.BROKEN))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "install_failed" and "missing_dependency_xyz" in error["message"]
    after = await api.get("demo-mod")
    assert (after["version"], after["status"], after["revision"]) == ("1.0.0", "ENABLED", before["revision"])
    assert await db.counts() == (1, 1)


async def test_a_registered_module_is_upgraded_without_an_import_check(api):
    await api.register(api.folder())
    r = await upgrade(api, "demo-mod", api.folder(version="1.0.1", code=api.BROKEN))
    assert r.status_code == 200 and r.json()["status"] == "REGISTERED"


async def test_upgrade_respects_enabled_dependents_ranges(api):
    await api.enabled(name="base-mod", version="1.0.0")
    await api.enabled(name="app-mod", dependencies={"base-mod": "^1.0.0"})
    r = await upgrade(api, "base-mod", api.folder(name="base-mod", version="2.0.0"))
    assert r.status_code == 409
    assert r.json()["error"]["details"]["dependents"][0]["module"] == "app-mod"
    r = await upgrade(api, "base-mod", api.folder(name="base-mod", version="1.5.0"))
    assert r.status_code == 200, r.text

    # An enabled module's new version must have its own dependencies satisfied.
    r = await upgrade(api, "app-mod", api.folder(name="app-mod", version="1.1.0", dependencies={"ghost-mod": "*"}))
    assert r.status_code == 409 and "ghost-mod" in r.json()["error"]["message"]


async def test_the_bundle_digest_is_the_upload_digest(api):
    data = packed(api.folder())
    r = await api.upload(data)
    assert r.json()["bundle_sha256"] == hashlib.sha256(data).hexdigest()
