"""Timeouts end TIMED_OUT and really stop the handler, whichever clock ends the step; a result the
platform cannot store fails its step once, not as an infrastructure failure retried blindly."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually, running_worker
from tests.jobs.helpers import put_module, write_module

CODE = """
import asyncio, os, time
from pathlib import Path


def sleeper(ctx):
    marker = Path(ctx.config["marker"])
    with marker.open("a") as f:
        f.write(f"{os.getpid()}\\n")
    ctx.logger.info("sleeping")
    time.sleep(60)
    return "woke up"


async def stubborn(ctx):
    # Ignores cancellation: only Temporal's own start-to-close timeout ends this step.
    marker = Path(ctx.config["marker"])
    with marker.open("a") as f:
        f.write(f"{ctx.attempt}\\n")
    ctx.logger.info("stubborn starts")
    release = Path(ctx.config["marker"] + ".release")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline and not release.exists():
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass
    return "finished"


class Opaque:
    pass


def opaque(ctx):
    marker = Path(ctx.config["marker"])
    with marker.open("a") as f:
        f.write(f"{ctx.attempt}\\n")
    ctx.logger.info("returning an object")
    return {"value": Opaque()}
"""
CONFIG = {"type": "object", "properties": {"marker": {"type": "string"}}}
JOBS = [
    {"name": "sleeper", "description": "blocked in time.sleep", "handler": "sleeper", "config": CONFIG},
    {"name": "stubborn", "description": "ignores cancellation", "handler": "stubborn", "config": CONFIG},
    {"name": "opaque", "description": "returns a non-JSON value", "handler": "opaque", "config": CONFIG},
]
FAST_RETRY = {"initial_interval_seconds": 0.1, "backoff_coefficient": 1}


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Path) -> Any:
    return await put_module(sessions, settings.state_dir, write_module(tmp_path, name="tmo", code=CODE, jobs=JOBS))


@pytest.fixture
async def inline_worker(temporal_settings: Any, temporal_env: Any, engine: Any) -> AsyncIterator[Any]:
    """A worker running handlers in its own interpreter (``inline``): a handler there can ignore
    cancellation for good, so Temporal's own timeout is what ends its step."""
    temporal_settings.heartbeat_timeout_seconds = 2
    temporal_settings.handler_isolation = "inline"
    async with running_worker(temporal_settings, temporal_env.client) as w:
        yield w


async def _job(client: Any, headers: dict[str, str], job_type: str, **extra: Any) -> dict[str, Any]:
    body = {"module": "tmo", "job_type": job_type, "name": job_type, "schedule": None, **extra}
    r = await client.post("/api/v1/jobs", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def _final(client: Any, headers: dict[str, str], execution_id: str, timeout: float) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        row = (await client.get(f"/api/v1/executions/{execution_id}", headers=headers)).json()
        return row if row["status"] not in ("PENDING", "RUNNING") else None

    return await eventually(probe, timeout=timeout, what=f"execution {execution_id} ended")


async def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_sleeping_sync_handler_times_out_and_its_process_is_killed(
    client, worker, module, operator_headers, tmp_path
):
    from activities.types import STEP_GRACE_SECONDS

    marker = tmp_path / "sleeper"
    job = await _job(client, operator_headers, "sleeper", timeout_seconds=2, config={"marker": str(marker)})
    started = (await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)).json()
    # Within the step's timeout and its grace (the poll's deadline, plus time to start the run).
    row = await _final(client, operator_headers, started["id"], timeout=2 + STEP_GRACE_SECONDS + 5)
    assert row["status"] == "TIMED_OUT", row
    assert row["error"]["type"] == "StepTimeout", row
    assert [(s["status"], s["attempts"]) for s in row["steps"]] == [("TIMED_OUT", 1)], row["steps"]
    pids = [int(line) for line in marker.read_text().split()]
    assert len(pids) == 1, "the handler ran once"
    # The handler's process does not outlive its step.
    await eventually(lambda: _gone(pids[0]), timeout=5, what="the sleeping handler's process killed")
    assert "sleeping" in [e["message"] for e in row["logs"]]


async def test_temporal_timeout_of_a_step_that_ignores_cancellation_is_timed_out(
    client, inline_worker, module, operator_headers, tmp_path
):
    """The step's own clock cannot end this step (the handler swallows every cancellation): Temporal's
    start-to-close timeout does, and the run still ends TIMED_OUT, with the handler run once."""
    from activities.types import STEP_GRACE_SECONDS

    marker = tmp_path / "stubborn"
    job = await _job(
        client,
        operator_headers,
        "stubborn",
        timeout_seconds=1,
        retry_backoff=FAST_RETRY,
        config={"marker": str(marker)},
    )
    started = (await client.post(f"/api/v1/jobs/{job['id']}/execute", headers=operator_headers)).json()
    try:
        row = await _final(client, operator_headers, started["id"], timeout=1 + STEP_GRACE_SECONDS + 15)
    finally:
        Path(f"{marker}.release").write_text("")  # lets the abandoned handler end with the test
    assert row["status"] == "TIMED_OUT", row
    assert row["error"]["type"] in ("StepTimeout", "Timeout.START_TO_CLOSE"), row
    assert marker.read_text().split() == ["1"], "the handler ran once: a timed-out attempt is not re-run"
    assert [(s["status"], s["attempts"]) for s in row["steps"]] == [("TIMED_OUT", 1)], row["steps"]


@pytest.mark.parametrize("isolation", ["process", "inline"])
async def test_a_result_that_cannot_be_stored_fails_the_first_attempt(
    client, temporal_settings, temporal_env, engine, module, operator_headers, tmp_path, isolation
):
    temporal_settings.heartbeat_timeout_seconds = 2
    temporal_settings.handler_isolation = isolation
    marker = tmp_path / f"opaque-{isolation}"
    # Three attempts allowed: a value that cannot be stored would fail every one of them the same way.
    job = await _job(
        client, operator_headers, "opaque", retries=2, retry_backoff=FAST_RETRY, config={"marker": str(marker)}
    )
    async with running_worker(temporal_settings, temporal_env.client):
        r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)
        row = await _final(client, operator_headers, r.json()["id"], timeout=30)
    assert row["status"] == "FAILED", row
    assert row["error"]["type"] == "ResultNotSerializable", row
    assert "Opaque" in row["error"]["message"]
    assert marker.read_text().split() == ["1"], "one attempt"
    assert [(s["status"], s["attempts"]) for s in row["steps"]] == [("FAILED", 1)], row["steps"]
    messages = [e["message"] for e in row["logs"]]
    assert "returning an object" in messages
    assert any("ResultNotSerializable" in m and "Opaque" in m for m in messages), messages


@pytest.mark.parametrize(
    ("timeout_type", "expected"),
    [("START_TO_CLOSE", "TIMED_OUT"), ("SCHEDULE_TO_CLOSE", "TIMED_OUT"), ("HEARTBEAT", "TIMED_OUT")],
)
def test_temporal_ending_a_step_by_its_own_timeout_is_timed_out(timeout_type: str, expected: str) -> None:
    """When Temporal's clock ends a step (an activity timeout, not the step's own StepTimeout: a
    handler that ignores cancellation past the run's deadline), the run is TIMED_OUT, never FAILED.
    The end-to-end tests above reach this path only when the run's deadline cuts retries off."""
    from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutType
    from temporalio.exceptions import TimeoutError as TemporalTimeout

    from workflows.job import classify

    failure = ActivityError(
        "activity timed out",
        scheduled_event_id=5,
        started_event_id=6,
        identity="worker",
        activity_type="m.step",
        activity_id="1",
        retry_state=RetryState.TIMEOUT,
    )
    failure.__cause__ = TemporalTimeout("activity timeout", type=TimeoutType[timeout_type], last_heartbeat_details=[])
    assert classify(failure) == expected
    # A handler's own error stays a failure, and the step's own timeout a timeout.
    failed = ActivityError(
        "activity failed",
        scheduled_event_id=5,
        started_event_id=6,
        identity="worker",
        activity_type="m.step",
        activity_id="1",
        retry_state=RetryState.MAXIMUM_ATTEMPTS_REACHED,
    )
    failed.__cause__ = ApplicationError("boom", type="ValueError")
    assert classify(failed) == "FAILED"
    failed.__cause__ = ApplicationError("step timed out", type="StepTimeout")
    assert classify(failed) == "TIMED_OUT"
