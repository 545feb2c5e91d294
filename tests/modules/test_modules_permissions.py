"""Installing code is its own permission (``modules:install``): admin-only unless
``AUTOPLAT_MODULE_INSTALL_ROLES`` grants it; operators keep configuring and disabling. Every
install-type audit row names the bundle's sha256."""

from __future__ import annotations

import pytest

from registry.permissions import has_permission, permissions_for
from registry.settings import Settings
from tests.modules.conftest import MODULES, Api
from tests.modules.test_modules_upgrade import packed

#: (method, path, permission) of every module route that changes state. The colleague's role x route
#: table test holds the whole API; this one proves the install split with real calls.
INSTALL_ROUTES = [
    ("POST", ""),
    ("POST", "/demo-mod/install"),
    ("POST", "/demo-mod/enable"),
    ("POST", "/demo-mod/upgrade"),
    ("POST", "/demo-mod/uninstall"),
    ("DELETE", "/demo-mod"),
]


async def test_an_operator_cannot_bring_code_in(api, client, operator_headers, tmp_path):
    await api.enabled()
    folder = api.folder(version="2.0.0")
    for method, path in INSTALL_ROUTES:
        r = await client.request(method, f"{MODULES}{path}", json={"path": str(folder)}, headers=operator_headers)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"] == {
            "code": "forbidden",
            "message": "role operator lacks permission modules:install",
            "details": None,
        }
    # Nor by upload.
    r = await client.post(MODULES, files={"bundle": ("b.tar.gz", packed(folder))}, headers=operator_headers)
    assert r.status_code == 403
    # What stays an operator's: configuring and disabling.
    r = await client.put(f"{MODULES}/demo-mod/config", json={"config": {"region": "us"}}, headers=operator_headers)
    assert r.status_code == 200, r.text
    r = await client.post(f"{MODULES}/demo-mod/disable", headers=operator_headers)
    assert r.status_code == 200 and r.json()["status"] == "DISABLED"
    # Re-enabling runs code again: an install.
    assert (await client.post(f"{MODULES}/demo-mod/enable", headers=operator_headers)).status_code == 403
    assert (await api.get("demo-mod"))["version"] == "1.0.0"


async def test_the_setting_grants_install_to_operators(client, settings, operator_headers, tmp_path):
    settings.module_install_roles = ["admin", "operator"]
    api = Api(client, operator_headers, tmp_path / "src")
    module = await api.enabled()
    assert module["status"] == "ENABLED"
    r = await client.post(
        f"{MODULES}/demo-mod/upgrade", json={"path": str(api.folder(version="1.1.0"))}, headers=operator_headers
    )
    assert r.status_code == 200, r.text
    await api.act("demo-mod", "disable")
    await api.act("demo-mod", "uninstall")
    assert (await client.delete(f"{MODULES}/demo-mod", headers=operator_headers)).status_code == 204


async def test_audit_rows_carry_the_bundle_digest(api, db):
    first = await api.enabled()
    r = await api.upload(packed(api.folder(version="1.1.0")), url=f"{MODULES}/demo-mod/upgrade")
    assert r.status_code == 200, r.text
    second = r.json()
    rows = {action: details for action, _outcome, details in await db.audit()}
    assert rows["module.register"]["bundle_sha256"] == first["bundle_sha256"]
    assert rows["module.install"]["bundle_sha256"] == first["bundle_sha256"]
    assert rows["module.enable"]["bundle_sha256"] == first["bundle_sha256"]
    assert rows["module.upgrade"]["bundle_sha256"] == second["bundle_sha256"] != first["bundle_sha256"]
    assert rows["module.upgrade"]["previous_bundle_sha256"] == first["bundle_sha256"]
    # The digests stay in the audit trail; the public event keeps its shape.
    assert all("previous_bundle_sha256" not in payload for _name, payload in await db.events())


def test_install_roles_are_validated_and_admin_always_holds_it():
    assert Settings(module_install_roles="operator").module_install_roles == ["admin", "operator"]
    assert Settings().module_install_roles == ["admin"]
    with pytest.raises(ValueError, match="unknown role 'root'"):
        Settings(module_install_roles="operator, root")
    assert has_permission("admin", "modules:install")
    assert not has_permission("operator", "modules:install")
    assert has_permission("operator", "modules:install", install_roles=["admin", "operator"])
    assert not has_permission("viewer", "modules:install", install_roles=["admin", "operator"])
    assert "modules:install" not in permissions_for("operator")
