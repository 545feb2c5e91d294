"""Install does real work: every handler imported in an isolated interpreter; FAILED with a reason,
and the ways out of FAILED; code shared through the database; the example module."""

from __future__ import annotations

import json
import shutil
import textwrap

from registry.manifest import validate_manifest
from registry.services.modules import check_handlers

MODULES = "/api/v1/modules"


async def test_install_failure_is_failed_with_a_reason_then_fixed_by_an_upgrade(api, db):
    await api.register(api.folder(code=api.BROKEN))
    r = await api.client.post(f"{MODULES}/demo-mod/install", headers=api.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "install_failed"
    reason = (
        "handler demo_mod.jobs:run cannot be imported: ModuleNotFoundError: No module named 'missing_dependency_xyz'"
    )
    assert error["message"] == f"cannot install module demo-mod: {reason} (and 1 more handler(s))"
    assert error["details"]["status"] == "FAILED"
    assert set(error["details"]["failures"]) == {"demo_mod.jobs:run", "demo_mod.jobs:step_two"}
    assert error["details"]["allowed_actions"] == ["install", "uninstall", "delete", "upgrade"]

    # The FAILED state was committed although the call answered an error.
    module = await api.get("demo-mod")
    assert module["status"] == "FAILED"
    assert module["status_reason"].startswith(reason)
    assert module["revision"] == 2 and module["installed_at"] is None
    assert [n for n, _ in await db.events()] == ["module.registered", "module.failed"]
    assert (await db.events())[-1][1]["reason"].startswith(reason)
    assert [(a, o) for a, o, _ in await db.audit()] == [("module.register", "success"), ("module.install", "failure")]

    # Retrying with the same code fails the same way (an environment fix would make it pass).
    r = await api.client.post(f"{MODULES}/demo-mod/install", headers=api.headers)
    assert r.status_code == 422
    assert (await api.get("demo-mod"))["revision"] == 3

    # A fixed version: the upgrade leaves FAILED for REGISTERED, then install succeeds.
    r = await api.client.post(
        f"{MODULES}/demo-mod/upgrade", json={"path": str(api.folder(version="1.0.1"))}, headers=api.headers
    )
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["status_reason"], r.json()["version"]) == ("REGISTERED", None, "1.0.1")
    module = await api.act("demo-mod", "install")
    assert (module["status"], module["status_reason"]) == ("INSTALLED", None)


async def test_delete_a_failed_module_and_register_the_fixed_code_again(api):
    await api.register(api.folder(code=api.BROKEN))
    assert (await api.client.post(f"{MODULES}/demo-mod/install", headers=api.headers)).status_code == 422
    assert (await api.client.delete(f"{MODULES}/demo-mod", headers=api.headers)).status_code == 204
    module = await api.register(api.folder(root=api.root / "fixed"))
    assert (module["name"], module["version"]) == ("demo-mod", "1.0.0")
    assert (await api.act("demo-mod", "install"))["status"] == "INSTALLED"


async def test_non_callable_handlers_and_noisy_imports(api):
    code = textwrap.dedent(
        """
        print("noise on stdout at import")
        run = 42

        def step_two(ctx):
            return 2
        """
    )
    await api.register(api.folder(code=code))
    r = await api.client.post(f"{MODULES}/demo-mod/install", headers=api.headers)
    assert r.status_code == 422
    assert r.json()["error"]["details"]["failures"] == {"demo_mod.jobs:run": "run is not callable (a int)"}


async def test_module_code_runs_without_the_platform_environment(api, monkeypatch):
    monkeypatch.setenv("AUTOPLAT_SECRET_KEY", "must-not-leak-into-module-code")
    code = textwrap.dedent(
        """
        import os, sys
        leaked = sorted(k for k in os.environ if k.startswith(("AUTOPLAT_", "PYTHON")))
        if leaked:
            raise ImportError(f"environment leaked: {leaked}")
        if os.getcwd() != os.path.dirname(os.path.dirname(os.path.abspath(__file__))):
            raise ImportError(f"unexpected cwd {os.getcwd()}")

        def run(ctx):
            return 1

        def step_two(ctx):
            return 2
        """
    )
    await api.register(api.folder(code=code))
    module = await api.act("demo-mod", "install")
    assert module["status"] == "INSTALLED"


async def test_install_unpacks_the_code_from_the_database_when_this_host_lacks_it(api, settings):
    module = await api.register(api.folder())
    code_dir = settings.state_dir / "code" / "demo-mod"
    assert (code_dir / f"1.0.0-{module['bundle_sha256'][:12]}" / "manifest.json").is_file()
    shutil.rmtree(code_dir)  # as on another host sharing the database
    assert (await api.act("demo-mod", "install"))["status"] == "INSTALLED"
    assert (code_dir / f"1.0.0-{module['bundle_sha256'][:12]}" / "demo_mod" / "jobs.py").is_file()


async def test_the_import_check_times_out(tmp_path):
    pkg = tmp_path / "slow_mod"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    # A module whose import hangs (the behaviour under test): the check gives up after 0.5 s.
    (pkg / "jobs.py").write_text("import time\ntime.sleep(30)\ndef run(ctx):\n    return 1\n")
    manifest = {"jobs": [{"name": "a", "handler": "slow_mod.jobs:run"}]}
    assert await check_handlers(tmp_path, manifest, timeout=0.5) == {"*": "import check timed out after 0.5 s"}


async def test_the_import_check_honours_code_root(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("def run(ctx):\n    return 1\n")
    manifest = {"python": {"codeRoot": "src"}, "jobs": [{"name": "a", "handler": "pkg:run"}]}
    assert await check_handlers(tmp_path, manifest) == {}
    assert await check_handlers(tmp_path, {"jobs": []}) == {}


async def test_the_example_module_validates_installs_and_enables(temporal_settings, api, example_dir):
    # Temporal: enabling creates the manifest's jobs, and their schedules.
    data = json.loads((example_dir / "manifest.json").read_text())
    report = validate_manifest(data, code_root=example_dir)
    assert report.valid and report.warnings == [], report.to_dict()
    r = await api.client.post(f"{MODULES}/validate", json=data, headers=api.headers)
    assert r.json() == {"valid": True, "errors": [], "warnings": []}

    module = await api.register(example_dir)
    assert (module["name"], module["version"], module["job_types"]) == ("data-sync", "1.2.0", 9)
    assert module["config"] == {"notify_email": "ops@example.com"}
    assert (await api.act("data-sync", "install"))["status"] == "INSTALLED"
    assert (await api.act("data-sync", "enable"))["status"] == "ENABLED"

    r = await api.client.get(f"{MODULES}/data-sync/job-types", headers=api.headers)
    jobs = {j["name"]: j for j in r.json()["items"]}
    assert {n: j["schedule"] for n, j in jobs.items()} == {
        "hourly-sync": "0 * * * *",
        "daily-report": "0 0 * * *",
        "health-check": "*/5 * * * *",
        "notify": None,
        "sync-failed": None,
        "hello": None,
        "echo": None,
        "status": None,
        "source-webhook": None,
    }
    assert jobs["hourly-sync"]["defaults"] == {"source_url": "http://127.0.0.1:8099/records", "batch_size": 100}
    assert jobs["hourly-sync"]["secret_fields"] == ["api_token"]
    assert jobs["daily-report"]["defaults"] == {
        "recipients": [],
        "channel": "webhook",
        "webhook_url": "http://127.0.0.1:8099/inbox",
    }
    assert jobs["health-check"]["defaults"] == {"status_url": "http://127.0.0.1:8099/status", "timeout_seconds": 10}
    assert [lst["pattern"] for lst in jobs["notify"]["listeners"]] == ["health.alert"]
    assert [lst["pattern"] for lst in jobs["daily-report"]["listeners"]] == ["data.synced"]
    assert [lst["pattern"] for lst in jobs["sync-failed"]["listeners"]] == ["job.failed"]
    # Enabling made the jobs the manifest asks for: the scheduled and the listening job types.
    r = await api.client.get("/api/v1/jobs", params={"module": "data-sync", "limit": 50}, headers=api.headers)
    made = {j["job_type"]: j for j in r.json()["items"]}
    assert sorted(made) == ["daily-report", "health-check", "hourly-sync", "notify", "sync-failed"]
    assert {j["origin"] for j in made.values()} == {"manifest"}
    assert made["health-check"]["schedule"] == "*/5 * * * *" and made["notify"]["schedule"] is None
