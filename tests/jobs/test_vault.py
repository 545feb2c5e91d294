"""``ctx.vault`` on the platform (real Temporal, a real worker), with handlers in confined processes
(``process``, where the worker answers the calls and the key never enters the handler's process)
and in the worker itself (``inline``): a round trip in sync and async handlers, a module that cannot
open another module's token, a tampered token failing its step at once with the vault's error, and
the size cap."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import running_worker
from tests.jobs.helpers import put_module, write_module

CODE = """
import os
from autoplat import JobError
from autoplat.vault import VaultError


def seal_sync(ctx):
    token = ctx.vault.seal_sync(ctx.config["value"])
    # In a handler process, ctx.vault only forwards calls: the key stays in the worker.
    holds_key = hasattr(ctx.vault, "_fernet")
    return {"token": token, "back": ctx.vault.open_sync(token), "pid": os.getpid(), "holds_key": holds_key}


async def seal_async(ctx):
    token = await ctx.vault.seal(ctx.config["value"])
    other = await ctx.vault.seal(ctx.config["value"])
    return {"token": token, "back": await ctx.vault.open(token), "differs": other != token}


async def open_given(ctx):
    return {"value": await ctx.vault.open(ctx.config["token"])}


def caught(ctx):
    found = {}
    for name, call in (
        ("too_big", lambda: ctx.vault.seal_sync("x" * (70 * 1024))),
        ("not_json", lambda: ctx.vault.seal_sync({1, 2})),
        ("not_token", lambda: ctx.vault.open_sync("plain text")),
    ):
        try:
            call()
            found[name] = "no error"
        except VaultError as exc:
            found[name] = {"message": exc.message, "job_error": isinstance(exc, JobError)}
    return found
"""

CONFIG = {"type": "object", "properties": {"value": {}, "token": {"type": "string"}}}
RETRIES = {"maxAttempts": 3, "initialIntervalSeconds": 0.1, "backoffCoefficient": 1}
JOBS = [
    {"name": name.replace("_", "-"), "description": name, "handler": name, "config": CONFIG, "retries": RETRIES}
    for name in ("seal_sync", "seal_async", "open_given", "caught")
]
VALUE = {"password": "vault-clear-3c9d", "port": 8443, "hosts": ["a", "b"], "nested": {"ok": True, "none": None}}


@pytest.fixture
async def modules(sessions: Any, settings: Any, tmp_path: Path) -> None:
    for name in ("vault-a", "vault-b"):
        folder = write_module(tmp_path, name=name, code=CODE, jobs=JOBS, package="vaultmod")
        await put_module(sessions, settings.state_dir, folder)


async def _run(client: Any, headers: dict[str, str], module: str, job_type: str, config: dict[str, Any]) -> Any:
    body = {"module": module, "job_type": job_type, "name": f"{module}-{job_type}", "schedule": None}
    r = await client.post("/api/v1/jobs", json=body, headers=headers)
    if r.status_code == 409:  # the same job again, in the second part of a test
        jobs = (await client.get("/api/v1/jobs", params={"module": module}, headers=headers)).json()["items"]
        job = next(j for j in jobs if j["name"] == body["name"])
    else:
        assert r.status_code == 201, r.text
        job = r.json()
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", json={"config": config}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _tampered(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]


@pytest.mark.parametrize("isolation", ["process", "inline"])
async def test_vault_round_trip_and_refusals(
    client, modules, operator_headers, temporal_settings, temporal_env, isolation
):
    temporal_settings.handler_isolation = isolation
    temporal_settings.heartbeat_timeout_seconds = 5
    async with running_worker(temporal_settings, temporal_env.client):
        sync = await _run(client, operator_headers, "vault-a", "seal-sync", {"value": VALUE})
        assert sync["status"] == "COMPLETED", sync
        token = sync["result"]["token"]
        assert token.startswith("apv1:") and token.isascii()
        assert "vault-clear-3c9d" not in token
        assert sync["result"]["back"] == VALUE
        assert sync["result"]["holds_key"] is (isolation == "inline")
        assert (sync["result"]["pid"] == os.getpid()) is (isolation == "inline")

        run = await _run(client, operator_headers, "vault-a", "seal-async", {"value": [1, "é", None]})
        assert run["status"] == "COMPLETED", run
        assert run["result"]["back"] == [1, "é", None]
        assert run["result"]["differs"] is True  # a fresh IV per seal

        # A token keeps opening in later runs of the module (the key is derived, not per run).
        opened = await _run(client, operator_headers, "vault-a", "open-given", {"token": token})
        assert opened["status"] == "COMPLETED", opened
        assert opened["result"] == {"value": VALUE}

        # Another module cannot open it: the step fails once, with the vault's message.
        foreign = await _run(client, operator_headers, "vault-b", "open-given", {"token": token})
        assert foreign["status"] == "FAILED", foreign
        assert foreign["error"]["type"] == "JobError", foreign["error"]
        assert "the vault token cannot be opened" in foreign["error"]["message"]
        assert [(s["status"], s["attempts"]) for s in foreign["steps"]] == [("FAILED", 1)], foreign["steps"]

        tampered = await _run(client, operator_headers, "vault-a", "open-given", {"token": _tampered(token)})
        assert tampered["status"] == "FAILED", tampered
        assert tampered["error"]["type"] == "JobError"
        assert tampered["error"]["message"].startswith("the vault token cannot be opened: it was altered")
        assert [(s["status"], s["attempts"]) for s in tampered["steps"]] == [("FAILED", 1)]

        caught = await _run(client, operator_headers, "vault-a", "caught", {})
        assert caught["status"] == "COMPLETED", caught
        found = caught["result"]
        assert found["too_big"] == {
            "message": f"the value to seal is {70 * 1024 + 2} bytes of JSON: at most 65536",
            "job_error": True,
        }
        assert found["not_json"]["message"].startswith("the value to seal is not JSON-serialisable")
        assert found["not_token"]["message"].startswith("not a vault token")
        assert all(f["job_error"] for f in found.values())
