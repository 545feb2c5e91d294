"""Timeouts, cancellation and logs kept whatever the outcome."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually
from tests.jobs.helpers import put_module, write_module

CODE = """
import asyncio, time
from pathlib import Path

def busy(ctx):
    marker = Path(ctx.config["marker"])
    ctx.logger.info("busy starts")
    try:
        while True:  # a busy handler (the behaviour under test): it stops only when cancelled
            time.sleep(0.02)
            if not ctx.config.get("ignore_cancel") and ctx.is_cancelled():
                break
    finally:
        marker.write_text("stopped")
        ctx.logger.warning("busy stopped")

async def waiter(ctx):
    marker = Path(ctx.config["marker"])
    ctx.logger.info("waiting forever")
    try:
        while True:
            await asyncio.sleep(0.05)
    finally:
        marker.write_text("stopped")
"""

CONFIG = {"type": "object", "properties": {"marker": {"type": "string"}, "ignore_cancel": {"type": "boolean"}}}
JOBS = [
    {"name": "busy", "description": "sync busy loop", "handler": "busy", "config": CONFIG},
    {"name": "waiter", "description": "async wait", "handler": "waiter", "config": CONFIG},
]


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Path) -> Any:
    return await put_module(sessions, settings.state_dir, write_module(tmp_path, name="ctl", code=CODE, jobs=JOBS))


async def _job(client: Any, headers: dict[str, str], job_type: str, **extra: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "ctl", "job_type": job_type, "name": job_type, "schedule": None, **extra},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return r.json()


@pytest.mark.parametrize("ignore_cancel", [False, True], ids=["cooperative", "uncooperative"])
async def test_timeout_ends_timed_out_and_really_stops_the_step(
    client, worker, module, operator_headers, tmp_path, ignore_cancel
):
    marker = tmp_path / f"marker-{ignore_cancel}"
    job = await _job(
        client,
        operator_headers,
        "busy",
        timeout_seconds=2,
        config={"marker": str(marker), "ignore_cancel": ignore_cancel},
    )
    body = (await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)).json()
    assert body["status"] == "TIMED_OUT", body
    assert body["error"]["type"] in ("StepTimeout", "Timeout.START_TO_CLOSE")
    # The handler was stopped (its finally ran), even when it ignores cancellation.
    await eventually(lambda: _exists(marker), what="handler stopped")
    logs = (await client.get(f"/api/v1/executions/{body['id']}/logs", headers=operator_headers)).json()
    messages = [e["message"] for e in logs["entries"]]
    assert "busy starts" in messages and "busy stopped" in messages


async def _exists(path: Path) -> bool:
    return path.exists()


async def test_cancel_reaches_the_running_step(client, worker, module, operator_headers, tmp_path):
    marker = tmp_path / "marker"
    job = await _job(client, operator_headers, "waiter", timeout_seconds=120, config={"marker": str(marker)})
    started = (await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)).json()
    assert started["status"] in ("PENDING", "RUNNING")

    async def running() -> bool:
        row = (await client.get(f"/api/v1/executions/{started['id']}", headers=operator_headers)).json()
        return (
            any(e["message"] == "waiting forever" for e in row["logs"])
            or row["steps"]
            and row["steps"][0].get("status") == "RUNNING"
        )

    await eventually(running, what="step running")
    r = await client.post(f"/api/v1/executions/{started['id']}/cancel", headers=operator_headers)
    assert r.status_code == 202, r.text

    async def cancelled() -> dict[str, Any] | None:
        row = (await client.get(f"/api/v1/executions/{started['id']}", headers=operator_headers)).json()
        return row if row["status"] == "CANCELLED" else None

    row = await eventually(cancelled, timeout=30, what="CANCELLED")
    assert marker.read_text() == "stopped"
    assert any(e["message"] == "waiting forever" for e in row["logs"])
    again = await client.post(f"/api/v1/executions/{started['id']}/cancel", headers=operator_headers)
    assert again.status_code == 409
    assert again.json()["error"]["details"]["current_state"] == "CANCELLED"
