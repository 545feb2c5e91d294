"""Test helpers: write a module folder and put it in the registry, ready to run."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

from registry import codestore
from registry.db import unit_of_work
from registry.models import Module, ModuleStatus, ModuleVersion


def write_module(
    root: Path,
    *,
    name: str,
    version: str = "1.0.0",
    code: str,
    jobs: list[dict[str, Any]],
    package: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A module folder: manifest.json plus one package ``<package>/handlers.py`` holding ``code``."""
    package = package or name.replace("-", "_")
    folder = root / f"{name}-{version}-{uuid.uuid4().hex[:6]}"
    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text("")
    (folder / package / "handlers.py").write_text(textwrap.dedent(code))
    manifest = {
        "name": name,
        "version": version,
        "displayName": name.title(),
        "description": f"test module {name}",
        "author": "tests",
        "jobs": [
            {
                **job,
                **({"handler": f"{package}.handlers:{job['handler']}"} if "handler" in job else {}),
                **(
                    {"steps": [{**s, "handler": f"{package}.handlers:{s['handler']}"} for s in job["steps"]]}
                    if "steps" in job
                    else {}
                ),
            }
            for job in jobs
        ],
        **(extra or {}),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


async def put_module(sessions: Any, state_dir: Path, folder: Path, *, status: str = "ENABLED") -> Module:
    """Register a module folder straight in the DB (as the registry's install would)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    data, sha = codestore.pack_folder(folder)
    path = codestore.materialize(state_dir, manifest["name"], manifest["version"], sha, data)
    async with unit_of_work(sessions) as session:
        from sqlalchemy import select

        module = await session.scalar(select(Module).where(Module.name == manifest["name"]))
        if module is None:
            module = Module(
                name=manifest["name"],
                display_name=manifest["displayName"],
                version=manifest["version"],
                manifest=manifest,
                status=status,
            )
            session.add(module)
        module.version = manifest["version"]
        module.manifest = manifest
        module.code_path = str(path)
        module.bundle_sha256 = sha
        module.status = status
        await session.flush()
        session.add(
            ModuleVersion(
                module_id=module.id,
                version=manifest["version"],
                manifest=manifest,
                code_path=str(path),
                bundle_sha256=sha,
                bundle=data,
                bundle_size=len(data),
            )
        )
    return module


def enabled() -> str:
    return ModuleStatus.ENABLED.value


def history_payloads(node: Any) -> list[str]:
    """Every payload of a Temporal history (as ``history.to_json_dict()`` gives it, ``data`` in
    base64), decoded: what a search for clear values must look through."""
    import base64

    found: list[str] = []
    if isinstance(node, dict):
        if "data" in node and "metadata" in node and isinstance(node["data"], str):
            found.append(base64.b64decode(node["data"]).decode("utf-8", "replace"))
        for value in node.values():
            found += history_payloads(value)
    elif isinstance(node, list):
        for value in node:
            found += history_payloads(value)
    return found
