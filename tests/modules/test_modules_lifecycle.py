"""The lifecycle state machine through the API: every transition, every illegal one, atomicity,
dependency guards, audit rows and platform events, and concurrent enable/disable."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from registry.errors import ServiceUnavailable
from registry.models import Job, Module, ModuleStatus
from registry.services.modules import TRANSITIONS, Action, allowed_actions

MODULES = "/api/v1/modules"

#: Every (state, action) the API can be asked for, and what the table says.
ALL_ACTIONS = ["install", "enable", "disable", "uninstall", "delete"]


class RecordingHooks:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail_on = fail_on

    async def _hook(self, kind: str, module: Module, extra: str = "") -> None:
        self.calls.append((kind, module.name, module.status if not extra else extra))
        if kind == self.fail_on:
            raise ServiceUnavailable(f"hook {kind} failed")

    async def module_enabled(self, *, session: Any, module: Module) -> None:
        await self._hook("enabled", module)

    async def module_disabled(self, *, session: Any, module: Module) -> None:
        await self._hook("disabled", module)

    async def module_uninstalled(self, *, session: Any, module: Module) -> None:
        await self._hook("uninstalled", module)

    async def module_upgraded(self, *, session: Any, module: Module, previous_version: str) -> None:
        await self._hook("upgraded", module, previous_version)


async def reach(api: Any, state: str, name: str = "demo-mod") -> dict[str, Any]:
    """Register a module and drive it to ``state``."""
    if state == "FAILED":
        module = await api.register(api.folder(name=name, code=api.BROKEN))
        r = await api.client.post(f"{MODULES}/{name}/install", headers=api.headers)
        assert r.status_code == 422, r.text
        return await api.get(name)
    module = await api.register(api.folder(name=name))
    path = {"REGISTERED": [], "INSTALLED": ["install"], "ENABLED": ["install", "enable"],
            "DISABLED": ["install", "enable", "disable"]}[state]  # fmt: skip
    for action in path:
        module = await api.act(name, action)
    assert module["status"] == state
    return module


def test_the_table_is_the_designed_one():
    S = ModuleStatus
    assert allowed_actions(S.REGISTERED) == ["install", "delete", "upgrade"]
    assert allowed_actions(S.INSTALLED) == ["enable", "uninstall", "upgrade"]
    assert allowed_actions(S.ENABLED) == ["disable", "upgrade"]
    assert allowed_actions(S.DISABLED) == ["enable", "uninstall", "upgrade"]
    assert allowed_actions(S.FAILED) == ["install", "uninstall", "delete", "upgrade"]
    assert TRANSITIONS[(S.FAILED, Action.upgrade)] == S.REGISTERED
    assert TRANSITIONS[(S.REGISTERED, Action.delete)] is None


async def test_the_happy_path_with_events_audit_and_hooks(api, db, app_state):
    hooks = RecordingHooks()
    app_state.hooks = hooks
    module = await api.register(api.folder())
    assert (module["status"], module["revision"], module["allowed_actions"]) == (
        "REGISTERED", 1, ["install", "delete", "upgrade"],
    )  # fmt: skip
    assert module["installed_at"] is None and module["enabled_at"] is None
    expected = [
        ("install", "INSTALLED", "installed"),
        ("enable", "ENABLED", "enabled"),
        ("disable", "DISABLED", "disabled"),
        ("enable", "ENABLED", "enabled"),
        ("disable", "DISABLED", "disabled"),
        ("uninstall", "REGISTERED", "uninstalled"),
    ]
    for i, (action, status, _) in enumerate(expected, start=2):
        module = await api.act("demo-mod", action)
        assert module["status"] == status, action
        assert module["revision"] == i
        assert module["allowed_actions"] == allowed_actions(status)
        if status == "INSTALLED":
            assert module["installed_at"] is not None
        if status == "ENABLED":
            assert module["enabled_at"] is not None
    assert module["installed_at"] is None

    r = await api.client.delete(f"{MODULES}/demo-mod", headers=api.headers)
    assert r.status_code == 204, r.text
    assert (await api.client.get(f"{MODULES}/demo-mod", headers=api.headers)).status_code == 404
    assert await db.counts() == (0, 0)

    names = [name for name, _ in await db.events()]
    assert names == ["module.registered", *[f"module.{e}" for *_, e in expected], "module.deleted"]
    payloads = [payload for _, payload in await db.events()]
    assert all(p["name"] == "demo-mod" and p["version"] == "1.0.0" for p in payloads)
    audit = await db.audit()
    assert [a for a, _, _ in audit] == ["module.register", *[f"module.{a}" for a, *_ in expected], "module.delete"]
    assert {outcome for _, outcome, _ in audit} == {"success"}
    assert hooks.calls == [
        ("enabled", "demo-mod", "ENABLED"),
        ("disabled", "demo-mod", "DISABLED"),
        ("enabled", "demo-mod", "ENABLED"),
        ("disabled", "demo-mod", "DISABLED"),
        ("uninstalled", "demo-mod", "REGISTERED"),
    ]


@pytest.mark.parametrize("state", ["REGISTERED", "INSTALLED", "ENABLED", "DISABLED", "FAILED"])
async def test_every_illegal_transition_is_a_409_naming_the_state(api, db, state):
    await reach(api, state)
    before = await db.module("demo-mod")
    events_before = await db.events()
    allowed = allowed_actions(state)
    for action in ALL_ACTIONS:
        if action in allowed:
            continue
        if action == "delete":
            r = await api.client.delete(f"{MODULES}/demo-mod", headers=api.headers)
        else:
            r = await api.client.post(f"{MODULES}/demo-mod/{action}", headers=api.headers)
        assert r.status_code == 409, (state, action, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_transition"
        assert state in error["message"] and action in error["message"]
        assert error["details"] == {"current_state": state, "action": action, "allowed_actions": allowed}
    after = await db.module("demo-mod")
    assert (after.status, after.revision) == (before.status, before.revision)
    assert await db.events() == events_before


async def test_failed_can_be_uninstalled_back_to_registered(api):
    await reach(api, "FAILED")
    module = await api.act("demo-mod", "uninstall")
    assert (module["status"], module["status_reason"]) == ("REGISTERED", None)


async def test_delete_from_failed(api, db):
    await reach(api, "FAILED")
    r = await api.client.delete(f"{MODULES}/demo-mod", headers=api.headers)
    assert r.status_code == 204
    assert await db.counts() == (0, 0)


async def test_unknown_module_is_404_everywhere(api):
    for action in ALL_ACTIONS[:-1]:
        r = await api.client.post(f"{MODULES}/nope/{action}", headers=api.headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await api.client.delete(f"{MODULES}/nope", headers=api.headers)).status_code == 404
    for path in ("", "/versions", "/job-types", "/config"):
        assert (await api.client.get(f"{MODULES}/nope{path}", headers=api.headers)).status_code == 404


HOOK_CASES = [
    ("enabled", ["install", "enable"]),
    ("disabled", ["install", "enable", "disable"]),
    ("uninstalled", ["install", "uninstall"]),
]


@pytest.mark.parametrize("hook,path", HOOK_CASES)
async def test_a_failing_hook_rolls_the_transition_back(api, db, app_state, hook, path):
    await api.register(api.folder())
    for action in path[:-1]:
        await api.act("demo-mod", action)
    before = await db.module("demo-mod")
    events_before, audit_before = await db.events(), await db.audit()
    app_state.hooks = RecordingHooks(fail_on=hook)
    r = await api.client.post(f"{MODULES}/demo-mod/{path[-1]}", headers=api.headers)
    assert r.status_code == 503, r.text
    after = await db.module("demo-mod")
    assert (after.status, after.revision, after.enabled_at) == (before.status, before.revision, before.enabled_at)
    assert await db.events() == events_before
    assert await db.audit() == audit_before


# --- dependencies ----------------------------------------------------------------------------------


async def test_enable_requires_dependencies_enabled_in_range(api, db):
    await api.installed(name="base-mod", version="1.4.0")
    await api.installed(name="app-mod", dependencies={"base-mod": "^1.2.0", "other-mod": "*"})

    r = await api.client.post(f"{MODULES}/app-mod/enable", headers=api.headers)
    assert r.status_code == 409
    error = r.json()["error"]
    assert "base-mod" in error["message"] and "other-mod" in error["message"]
    problems = {p["module"]: p for p in error["details"]["missing_dependencies"]}
    assert problems["base-mod"]["status"] == "INSTALLED" and problems["base-mod"]["problem"] == "is INSTALLED"
    assert problems["other-mod"]["problem"] == "not registered"
    assert (await db.module("app-mod")).status == "INSTALLED"

    await api.act("base-mod", "enable")
    await api.installed(name="other-mod")
    await api.act("other-mod", "enable")
    assert (await api.act("app-mod", "enable"))["status"] == "ENABLED"


async def test_enable_refuses_a_dependency_outside_the_range(api):
    await api.enabled(name="base-mod", version="2.0.0")
    await api.installed(name="app-mod", dependencies={"base-mod": "~1.2"})
    r = await api.client.post(f"{MODULES}/app-mod/enable", headers=api.headers)
    assert r.status_code == 409
    (problem,) = r.json()["error"]["details"]["missing_dependencies"]
    assert problem["problem"] == "version 2.0.0 is outside ~1.2"


async def test_disable_uninstall_and_delete_refuse_while_enabled_dependents_exist(api, db):
    await api.enabled(name="base-mod")
    await api.enabled(name="app-mod", dependencies={"base-mod": ">=1.0.0"})

    r = await api.client.post(f"{MODULES}/base-mod/disable", headers=api.headers)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert "app-mod" in error["message"]
    assert error["details"]["dependents"] == [{"module": "app-mod", "version": "1.0.0", "range": ">=1.0.0"}]
    assert (await db.module("base-mod")).status == "ENABLED"

    # Once the dependent is disabled, the chain can be taken down.
    await api.act("app-mod", "disable")
    await api.act("base-mod", "disable")
    await api.act("base-mod", "uninstall")
    assert (await api.client.delete(f"{MODULES}/base-mod", headers=api.headers)).status_code == 204


async def test_uninstall_and_delete_check_dependents_too(api, db, sessions):
    # Reach a dependent enabled on a REGISTERED dependency only by editing the DB: the guards must
    # still hold on their own, not just through the ordering of the other guards.
    await api.register(api.folder(name="base-mod"))
    await api.enabled(name="app-mod")
    async with sessions() as s, s.begin():
        app = await s.scalar(select(Module).where(Module.name == "app-mod"))
        app.manifest = {**app.manifest, "dependencies": {"base-mod": "*"}}
    r = await api.client.delete(f"{MODULES}/base-mod", headers=api.headers)
    assert r.status_code == 409 and "app-mod" in r.json()["error"]["message"]
    await api.act("base-mod", "install")
    r = await api.client.post(f"{MODULES}/base-mod/uninstall", headers=api.headers)
    assert r.status_code == 409 and "app-mod" in r.json()["error"]["message"]


async def test_delete_refuses_while_jobs_exist(api, db, sessions):
    module = await api.register(api.folder())
    async with sessions() as s, s.begin():
        for i in range(2):
            s.add(Job(module_id=module["id"], module_name="demo-mod", job_type="sync", name=f"job-{i}"))
    r = await api.client.delete(f"{MODULES}/demo-mod", headers=api.headers)
    assert r.status_code == 409
    error = r.json()["error"]
    assert "2 job(s)" in error["message"] and error["details"] == {"jobs": 2}
    assert await db.counts() == (1, 1)


# --- concurrency -----------------------------------------------------------------------------------


async def test_concurrent_enable_disable_end_consistent(api, db):
    await api.installed()
    actions = ["enable", "disable"] * 5
    random.Random(7).shuffle(actions)

    async def call(action: str) -> tuple[str, int]:
        r = await api.client.post(f"{MODULES}/demo-mod/{action}", headers=api.headers)
        assert r.status_code in (200, 409), r.text
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "invalid_transition"
        return action, r.status_code

    results = await asyncio.gather(*(call(a) for a in actions))
    succeeded = [a for a, code in results if code == 200]
    assert succeeded, results

    module = await db.module("demo-mod")
    assert module.status in ("ENABLED", "DISABLED")
    assert module.revision == 2 + len(succeeded)  # register, install, then one per transition

    transitions = [a for a, outcome, _ in await db.audit() if a in ("module.enable", "module.disable")]
    assert len(transitions) == len(succeeded)
    assert sorted(transitions) == sorted(f"module.{a}" for a in succeeded)
    # Serialized by the row lock: the audit trail alternates, starting from INSTALLED with enable.
    assert all(t == ("module.enable" if i % 2 == 0 else "module.disable") for i, t in enumerate(transitions))
    assert module.status == ("ENABLED" if transitions[-1] == "module.enable" else "DISABLED")
    events = [n for n, _ in await db.events() if n in ("module.enabled", "module.disabled")]
    assert events == [t.replace("enable", "enabled").replace("disable", "disabled") for t in transitions]


async def test_concurrent_registration_of_one_name_stores_one_module(api, db):
    folders = [api.folder(name="race-mod", version=f"1.0.{i}") for i in range(4)]
    responses = await asyncio.gather(
        *(api.client.post(MODULES, json={"path": str(f)}, headers=api.headers) for f in folders)
    )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1 and set(codes) == {201, 409}, [r.text for r in responses]
    assert await db.counts() == (1, 1)


# --- permissions -----------------------------------------------------------------------------------


async def test_viewer_reads_but_cannot_mutate(api, client, viewer_headers, operator_headers):
    await api.register(api.folder())
    for path in ("", "/demo-mod", "/demo-mod/versions", "/demo-mod/job-types", "/demo-mod/config",
                 "/manifest-schema"):  # fmt: skip
        r = await client.get(f"{MODULES}{path}", headers=viewer_headers)
        assert r.status_code == 200, (path, r.text)
    r = await client.post(f"{MODULES}/validate", json={}, headers=viewer_headers)
    assert r.status_code == 200
    for method, path in [("POST", ""), ("POST", "/demo-mod/install"), ("POST", "/demo-mod/enable"),
                         ("POST", "/demo-mod/disable"), ("POST", "/demo-mod/uninstall"),
                         ("POST", "/demo-mod/upgrade"), ("DELETE", "/demo-mod"),
                         ("PUT", "/demo-mod/config")]:  # fmt: skip
        r = await client.request(method, f"{MODULES}{path}", json={"config": {}}, headers=viewer_headers)
        assert r.status_code == 403, (method, path, r.text)
        needed = "modules:write" if path in ("/demo-mod/disable", "/demo-mod/config") else "modules:install"
        assert needed in r.json()["error"]["message"], (method, path)
    # An operator configures modules; installing code is an admin's (tests/modules/test_modules_permissions.py).
    r = await client.put(f"{MODULES}/demo-mod/config", json={"config": {}}, headers=operator_headers)
    assert r.status_code == 200, r.text


async def test_anonymous_is_refused(client):
    assert (await client.get(MODULES)).status_code == 401
    assert (await client.post(MODULES, json={"path": f"/tmp/{uuid.uuid4()}"})).status_code == 401
