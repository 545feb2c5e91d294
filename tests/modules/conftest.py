"""Helpers of the module registry tests: module folders written into tmp_path, API shortcuts."""

from __future__ import annotations

import copy
import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from registry.models import AuditLog, Event, Module, ModuleVersion

MODULES = "/api/v1/modules"
EXAMPLE = Path(__file__).resolve().parents[2] / "example_modules" / "data_sync"

HANDLERS = """
def run(ctx):
    return {"ok": True}


def step_two(ctx):
    return {"ok": 2}
"""
#: Handlers that exist (the static check passes) but whose module fails at import.
BROKEN = "import missing_dependency_xyz  # not installed anywhere\n" + HANDLERS


def manifest(name: str = "demo-mod", version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    """A small valid manifest whose handlers live in the package ``<name with _>/jobs.py``."""
    pkg = name.replace("-", "_")
    data: dict[str, Any] = {
        "name": name,
        "version": version,
        "displayName": f"Demo {name}",
        "description": "A module written by the tests",
        "author": "Tests <tests@example.com>",
        "jobs": [
            {
                "name": "sync",
                "description": "Sync things",
                "handler": f"{pkg}.jobs:run",
                "schedule": {"cron": "0 * * * *", "timezone": "Europe/Paris"},
                "timeoutSeconds": 120,
                "retries": {"maxAttempts": 3, "initialIntervalSeconds": 2},
                "overlap": "buffer_one",
                "config": {
                    "type": "object",
                    "properties": {
                        "url": {"type": "string", "default": "http://127.0.0.1/x"},
                        "batch": {"type": "integer", "default": 10, "minimum": 1},
                        "token": {"type": "string", "secret": True},
                    },
                },
            },
            {
                "name": "pipeline",
                "description": "Two steps",
                "steps": [
                    {"name": "first", "handler": f"{pkg}.jobs:run"},
                    {"name": "second", "handler": f"{pkg}.jobs:step_two", "timeoutSeconds": 30},
                ],
            },
        ],
        "events": {"listeners": [{"pattern": "demo.*", "job": "sync"}], "emits": []},
        "config": {
            "type": "object",
            "properties": {
                "region": {"type": "string", "default": "eu", "enum": ["eu", "us"]},
                "api_key": {"type": "string", "secret": True},
                "smtp": {
                    "type": "object",
                    "properties": {
                        "host": {"type": "string", "default": "localhost"},
                        "password": {"type": "string", "secret": True},
                    },
                },
            },
        },
    }
    data.update(extra)
    return data


def write_module(
    root: Path,
    data: dict[str, Any] | None = None,
    *,
    code: str = HANDLERS,
    files: dict[str, str] | None = None,
    **manifest_kw: Any,
) -> Path:
    """Write a module folder (manifest.json + package) under ``root`` and return it."""
    data = copy.deepcopy(data) if data is not None else manifest(**manifest_kw)
    folder = root / f"{data['name']}-{data['version']}"
    pkg = folder / str(data["name"]).replace("-", "_")
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "jobs.py").write_text(textwrap.dedent(code))
    (folder / "manifest.json").write_text(json.dumps(data, indent=2))
    for rel, text in (files or {}).items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return folder


class Api:
    """Shortcuts over the test client for one set of headers."""

    BROKEN = BROKEN
    HANDLERS = HANDLERS

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str], root: Path) -> None:
        self.client, self.headers, self.root = client, headers, root

    def folder(self, data: dict[str, Any] | None = None, *, root: Path | None = None, **kw: Any) -> Path:
        return write_module(root or self.root, data, **kw)

    async def register(self, folder: Path, *, expect: int = 201, **body: Any) -> dict[str, Any]:
        r = await self.client.post(MODULES, json={"path": str(folder), **body}, headers=self.headers)
        assert r.status_code == expect, r.text
        return r.json()

    async def upload(self, data: bytes, filename: str = "bundle.tar.gz", *, url: str = MODULES) -> httpx.Response:
        return await self.client.post(url, files={"bundle": (filename, data)}, headers=self.headers)

    async def act(self, name: str, action: str, *, expect: int = 200) -> dict[str, Any]:
        r = await self.client.post(f"{MODULES}/{name}/{action}", headers=self.headers)
        assert r.status_code == expect, r.text
        return r.json()

    async def get(self, name: str) -> dict[str, Any]:
        r = await self.client.get(f"{MODULES}/{name}", headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()

    async def installed(self, **kw: Any) -> dict[str, Any]:
        """Register and install a module; returns the installed module."""
        module = await self.register(self.folder(**kw))
        return await self.act(module["name"], "install")

    async def enabled(self, **kw: Any) -> dict[str, Any]:
        module = await self.installed(**kw)
        return await self.act(module["name"], "enable")


@pytest.fixture(autouse=True)
def _own_state_dir(settings: Any, tmp_path: Path) -> None:
    # One state folder per test, so "nothing stored under code/" is checked on this test alone.
    settings.state_dir = tmp_path / "state"


# --- fast callers ----------------------------------------------------------------------------------
# These tests are about modules, not logins: their callers are user rows with a hash computed once
# and an access token minted directly (no login request per test).
# Real logins are exercised by tests/api and by test_modules_client.py.


@pytest.fixture(scope="session")
def _password_hash() -> str:
    from registry.security import hash_password

    return hash_password("correct-horse-battery-staple")


@pytest.fixture
def fast_headers(sessions: Any, settings: Any, _password_hash: str, client: httpx.AsyncClient) -> Any:
    from registry.db import unit_of_work
    from registry.models import RefreshSession, User
    from registry.security import encode_token

    async def make(role: str) -> dict[str, str]:
        # A user with a live session (an access token dies with its session), as a login makes.
        family = str(uuid.uuid4())
        async with unit_of_work(sessions) as s:
            user = User(email=f"{role}-{uuid.uuid4().hex[:8]}@example.com", password_hash=_password_hash, role=role)
            s.add(user)
            await s.flush()
            _, refresh = encode_token(settings, subject=user.id, token_type="refresh", family_id=family)
            s.add(RefreshSession(id=refresh.jti, user_id=user.id, family_id=family, expires_at=refresh.expires_at))
        token, _ = encode_token(settings, subject=user.id, token_type="access", role=role, family_id=family)
        return {"Authorization": f"Bearer {token}"}

    return make


@pytest.fixture
async def admin_headers(fast_headers: Any) -> dict[str, str]:
    return await fast_headers("admin")


@pytest.fixture
async def operator_headers(fast_headers: Any) -> dict[str, str]:
    return await fast_headers("operator")


@pytest.fixture
async def viewer_headers(fast_headers: Any) -> dict[str, str]:
    return await fast_headers("viewer")


@pytest.fixture
def api(client: httpx.AsyncClient, admin_headers: dict[str, str], tmp_path: Path) -> Api:
    return Api(client, admin_headers, tmp_path / "src")


@pytest.fixture
def make_folder(tmp_path: Path) -> Any:
    """Write module folders without the API (for tests that need no client)."""

    def make(data: dict[str, Any] | None = None, **kw: Any) -> Path:
        return write_module(tmp_path / "src", data, **kw)

    return make


@pytest.fixture
def example_dir() -> Path:
    return EXAMPLE


@pytest.fixture
def db(sessions: Any) -> Any:
    """Raw reads in a fresh session each time (what is committed, not what a session cached)."""

    class Db:
        async def scalar(self, stmt: Any) -> Any:
            async with sessions() as s:
                return await s.scalar(stmt)

        async def all(self, stmt: Any) -> list[Any]:
            async with sessions() as s:
                return list((await s.execute(stmt)).all())

        async def module(self, name: str) -> Module | None:
            return await self.scalar(select(Module).where(Module.name == name))

        async def counts(self) -> tuple[int, int]:
            modules = await self.scalar(select(func.count()).select_from(Module))
            versions = await self.scalar(select(func.count()).select_from(ModuleVersion))
            return int(modules or 0), int(versions or 0)

        async def events(self, prefix: str = "module.") -> list[tuple[str, dict[str, Any]]]:
            rows = await self.all(
                select(Event.name, Event.payload).where(Event.name.startswith(prefix)).order_by(Event.seq)
            )
            return [(r[0], r[1]) for r in rows]

        async def audit(self, prefix: str = "module.") -> list[tuple[str, str, dict[str, Any] | None]]:
            rows = await self.all(
                select(AuditLog.action, AuditLog.outcome, AuditLog.details)
                .where(AuditLog.action.startswith(prefix))
                .order_by(AuditLog.id)
            )
            return [(r[0], r[1], r[2]) for r in rows]

    return Db()
