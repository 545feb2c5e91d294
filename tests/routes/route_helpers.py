"""Helpers of the module route tests: module folders with routes, deployed through the real API."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import httpx

from registry.services.routes import sign

MODULES = "/api/v1/modules"
EXAMPLE = Path(__file__).resolve().parents[2] / "example_modules" / "data_sync"

__all__ = ["EXAMPLE", "MODULES", "deploy", "route_module", "sign", "signed_headers"]


def route_module(
    root: Path,
    *,
    name: str,
    code: str,
    jobs: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    version: str = "1.0.0",
    config: dict[str, Any] | None = None,
) -> Path:
    """A module folder whose handlers live in ``<package>/handlers.py`` (job ``handler`` is the function name)."""
    package = name.replace("-", "_")
    folder = root / f"{name}-{version}-{uuid.uuid4().hex[:6]}"
    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text("")
    (folder / package / "handlers.py").write_text(textwrap.dedent(code))
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "displayName": name.title(),
        "description": f"route test module {name}",
        "author": "tests",
        "jobs": [
            {
                "description": job["name"],
                **job,
                **({"handler": f"{package}.handlers:{job['handler']}"} if "handler" in job else {}),
                **(
                    {"steps": [{**st, "handler": f"{package}.handlers:{st['handler']}"} for st in job["steps"]]}
                    if "steps" in job
                    else {}
                ),
            }
            for job in jobs
        ],
        "routes": routes,
    }
    if config is not None:
        manifest["config"] = config
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


async def deploy(
    client: httpx.AsyncClient, headers: dict[str, str], folder: Path, *, upgrade: str | None = None
) -> dict[str, Any]:
    """Register (or upgrade ``upgrade``), install and enable a module through the registry API."""
    if upgrade is not None:
        r = await client.post(f"{MODULES}/{upgrade}/upgrade", json={"path": str(folder)}, headers=headers)
        assert r.status_code == 200, r.text
        return dict(r.json())
    r = await client.post(MODULES, json={"path": str(folder)}, headers=headers)
    assert r.status_code == 201, r.text
    name = r.json()["name"]
    r = await client.post(f"{MODULES}/{name}/install", headers=headers)
    assert r.status_code == 200, r.text
    r = await client.post(f"{MODULES}/{name}/enable", headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def signed_headers(secret: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    stamp, signature = sign(secret, body, timestamp)
    return {"Content-Type": "application/json", "X-Timestamp": stamp, "X-Signature": f"sha256={signature}"}
