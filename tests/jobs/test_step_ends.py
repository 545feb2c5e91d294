"""A step's end when the registry goes away between running the handler and writing it down.

The step activities are driven directly (``ActivityEnvironment``, handlers ``inline``), with a
session factory that stops reaching PostgreSQL (a closed port: the driver's own connection error)
once the step has been prepared. No server is stopped: ``test_db_outage.py`` does that end to end.

What must hold: a handler that failed is not run again uncounted (a non-retryable failure stays
non-retryable; a retryable one is counted by the next attempt before it runs anything); the
failed run's logs reach the row (through the error the workflow gets, or the heartbeat the next
attempt gets); an end handed on more than once is written once; a failure that cannot be counted
for a reason other than an outage, or a mirror write the database refuses, ends the retries.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import delete
from sqlalchemy import exc as sa_exc
from temporalio.api.failure.v1 import Failure
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.jobs import JobActivities
from activities.types import FinishInput, StepEnd, StepInput, failed_step_end, is_end_detail
from registry.db import create_engine, create_session_factory, is_unavailable, unit_of_work
from registry.models import Execution, ExecutionStatus
from tests.conftest import free_port
from tests.jobs.helpers import put_module, write_module
from workflows.client import DATA_CONVERTER
from workflows.job import _error

CODE = """
from pathlib import Path

from autoplat import JobError


def _ran(ctx):
    with Path(ctx.config["marker"]).open("a") as f:
        f.write(f"{ctx.attempt}\\n")


def refuses(ctx):
    _ran(ctx)
    ctx.logger.info("refusing the input")
    raise JobError("refused on purpose")


def flaky(ctx):
    _ran(ctx)
    ctx.logger.info("about to fail")
    raise RuntimeError("flaky on purpose")


def quick(ctx):
    ctx.logger.info("quick ran")
    return "done"
"""
JOBS = [
    {"name": "refuses", "description": "a business failure", "handler": "refuses"},
    {"name": "flaky", "description": "a retryable failure", "handler": "flaky"},
    {"name": "quick", "description": "succeeds", "handler": "quick"},
]


class Outage:
    """A session factory that reaches the test database until ``broken``, then a closed port."""

    def __init__(self, sessions: Any) -> None:
        self.up = sessions
        self.engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone")
        self.down = create_session_factory(self.engine)
        self.broken = False

    def __call__(self) -> Any:
        return (self.down if self.broken else self.up)()


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Path) -> Any:
    settings.handler_isolation = "inline"
    return await put_module(sessions, settings.state_dir, write_module(tmp_path, name="ends", code=CODE, jobs=JOBS))


@pytest.fixture
async def outage(sessions: Any) -> Any:
    broken = Outage(sessions)
    yield broken
    await broken.engine.dispose()


def _activities(settings: Any, outage: Outage, *, on_services: Any = None) -> JobActivities:
    async def services(inp: StepInput, ctx: Any) -> dict[str, Any]:
        # Called once the step is prepared, right before its handler: the registry goes away here.
        if on_services is not None:
            await on_services(inp)
        outage.broken = True
        return {}

    return JobActivities(settings=settings, sessions=outage, services=services)  # type: ignore[arg-type]


async def _row(sessions: Any, execution_id: str, steps: list[dict[str, Any]]) -> None:
    async with unit_of_work(sessions) as s:
        s.add(
            Execution(
                id=execution_id,
                module_name="ends",
                job_type="flaky",
                workflow_id=execution_id,
                trigger="manual",
                status=ExecutionStatus.RUNNING.value,
                steps=steps,
            )
        )


def _step(module: Any, execution_id: str, job_type: str, *, index: int = 0, **extra: Any) -> StepInput:
    handler = next(j["handler"] for j in module.manifest["jobs"] if j["name"] == job_type)
    return StepInput(
        execution_id=execution_id,
        job_id=None,
        module="ends",
        module_version="1.0.0",
        bundle_sha256=module.bundle_sha256,
        job_type=job_type,
        step=job_type,
        step_index=index,
        handler=handler,
        timeout_seconds=30,
        trigger="manual",
        **{"max_attempts": 1, **extra},
    )


async def _run(acts: JobActivities, inp: StepInput, *, attempt: int = 1, beat: Any = None) -> tuple[Any, list[Any]]:
    """Run one attempt of the step; returns (its result or error, the details of its heartbeats)."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt, heartbeat_details=list(beat or []))
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    payload = DATA_CONVERTER.payload_converter.to_payloads([inp])[0]
    try:
        return await env.run(acts.run_step, [RawValue(payload)]), beats
    except ApplicationError as exc:
        return exc, beats


def _as_the_workflow_sees(error: ApplicationError) -> ApplicationError:
    """``error`` through Temporal's failure converter and back, as the workflow receives it."""
    failure = Failure()
    DATA_CONVERTER.failure_converter.to_failure(error, DATA_CONVERTER.payload_converter, failure)
    seen = DATA_CONVERTER.failure_converter.from_failure(failure, DATA_CONVERTER.payload_converter)
    assert isinstance(seen, ApplicationError), seen
    return seen


async def _read(sessions: Any, execution_id: str) -> Execution:
    async with sessions() as s:
        row = await s.get(Execution, execution_id)
    assert row is not None
    return row


async def test_a_business_failure_during_an_outage_stays_final_and_keeps_its_logs(
    module: Any, settings: Any, sessions: Any, outage: Outage, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    await _row(sessions, "ends-refused", [{"name": "refuses", "status": "PENDING", "attempts": 0, "failures": 0}])
    inp = _step(module, "ends-refused", "refuses", max_attempts=3, config_override={"marker": str(marker)})
    error, _ = await _run(_activities(settings, outage), inp)

    # Not a retryable "registry unavailable": Temporal must not run the handler again.
    assert isinstance(error, ApplicationError), error
    assert (error.type, error.non_retryable, error.message) == ("JobError", True, "refused on purpose")
    error = _as_the_workflow_sees(error)
    end = failed_step_end(error)
    assert end is not None, error.details
    assert (end.step_index, end.status, end.attempt, end.count_failure) == (0, "FAILED", 1, True)
    assert "refusing the input" in end.logs and "JobError: refused on purpose" in end.logs
    # The run's error keeps the handler's details, not the logs.
    assert not any(is_end_detail(d) for d in _error(error).get("details", []))

    # The registry is back: the workflow's mirror_finish writes the end, once however often it runs.
    outage.broken = False
    finish = FinishInput(execution_id="ends-refused", status="FAILED", error=_error(error), step_end=end)
    env = ActivityEnvironment()
    for _ in range(2):
        await env.run(JobActivities(settings=settings, sessions=sessions).mirror_finish, finish)
    row = await _read(sessions, "ends-refused")
    assert row.status == "FAILED" and row.error["message"] == "refused on purpose"
    (step,) = row.steps
    assert (step["status"], step["attempts"], step["failures"]) == ("FAILED", 1, 1), step
    assert row.logs.count("refusing the input") == 1, row.logs
    assert marker.read_text().splitlines() == ["1"]


async def test_a_retryable_failure_during_an_outage_is_counted_by_the_next_attempt(
    module: Any, settings: Any, sessions: Any, outage: Outage, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    await _row(sessions, "ends-flaky", [{"name": "flaky", "status": "PENDING", "attempts": 0, "failures": 0}])
    inp = _step(module, "ends-flaky", "flaky", config_override={"marker": str(marker)})
    error, beats = await _run(_activities(settings, outage), inp)
    assert isinstance(error, ApplicationError), error
    assert (error.type, error.non_retryable) == ("RuntimeError", False)  # Temporal retries it...
    assert beats, "the failed run's end must be in the last heartbeat"
    (beat,) = beats[-1]
    assert beat["end"]["count_failure"] is True and "about to fail" in beat["end"]["logs"]

    # ...and the retry, while the registry is still down, fails before running anything without
    # losing what the first attempt left in its heartbeat.
    retried, beats = await _run(_activities(settings, outage), inp, attempt=2, beat=beats[-1])
    assert isinstance(retried, ApplicationError) and retried.type == "PlatformUnavailable", retried
    assert beats and beats[-1] == (beat,), beats

    # The registry is back: the third attempt counts the failure first, and the job allowed one.
    outage.broken = False
    last, _ = await _run(JobActivities(settings=settings, sessions=sessions), inp, attempt=3, beat=beats[-1])
    assert isinstance(last, ApplicationError), last
    assert (last.type, last.non_retryable) == ("AttemptsExhausted", True)
    assert marker.read_text().splitlines() == ["1"]  # the handler ran once
    row = await _read(sessions, "ends-flaky")
    (step,) = row.steps
    assert (step["status"], step["attempts"], step["failures"]) == ("FAILED", 1, 1), step
    assert row.logs.count("about to fail") == 1, row.logs


async def test_a_step_end_handed_on_again_is_written_once(module: Any, settings: Any, sessions: Any) -> None:
    """Step 0 could not write its end; step 1 gets it with every Temporal attempt, and
    ``mirror_finish`` gets it again when step 1 fails: its logs are written once."""
    await _row(
        sessions,
        "ends-handed",
        [
            {"name": "first", "status": "RUNNING", "attempts": 1, "failures": 0},
            {"name": "quick", "status": "PENDING", "attempts": 0, "failures": 0},
        ],
    )
    pending = StepEnd(step_index=0, status="COMPLETED", attempt=1, logs='{"message": "first ran"}')
    inp = _step(module, "ends-handed", "quick", index=1, pending_end=pending)
    acts = JobActivities(settings=settings, sessions=sessions)
    for attempt in (1, 2):
        result, _ = await _run(acts, inp, attempt=attempt)
        assert result == "done", result
    await ActivityEnvironment().run(
        acts.mirror_finish, FinishInput(execution_id="ends-handed", status="FAILED", step_end=pending)
    )
    row = await _read(sessions, "ends-handed")
    assert [(s["status"], s["attempts"]) for s in row.steps] == [("COMPLETED", 1), ("COMPLETED", 2)]
    assert row.logs.count("first ran") == 1, row.logs
    assert row.logs.count("quick ran") == 2  # its own two runs


async def test_failures_that_cannot_be_counted_or_written_end_the_retries(
    module: Any, settings: Any, sessions: Any, outage: Outage, tmp_path: Path
) -> None:
    """The row is gone when the failure is counted: the attempts are used up, not endless. A
    mirror write the database refuses fails for good instead of retrying until the deadline."""
    marker = tmp_path / "ran"
    await _row(sessions, "ends-gone", [{"name": "flaky", "status": "PENDING", "attempts": 0, "failures": 0}])

    async def delete_row(inp: StepInput) -> None:
        async with unit_of_work(sessions) as s:
            await s.execute(delete(Execution).where(Execution.id == inp.execution_id))

    acts = _activities(settings, outage, on_services=delete_row)
    outage.up = outage.down = sessions  # no outage here: only the row goes
    inp = _step(module, "ends-gone", "flaky", max_attempts=5, config_override={"marker": str(marker)})
    error, _ = await _run(acts, inp)
    assert isinstance(error, ApplicationError), error
    assert (error.type, error.non_retryable) == ("RuntimeError", True)

    await _row(sessions, "ends-refused-write", [])
    refused = FinishInput(execution_id="ends-refused-write", status="FAILED", reason="a NUL \x00 in a text column")
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(JobActivities(settings=settings, sessions=sessions).mirror_finish, refused)
    assert (caught.value.type, caught.value.non_retryable) == ("RegistryError", True), caught.value


def test_deadlocks_and_serialization_failures_are_transient_refusals_are_not() -> None:
    def wrapped(kind: type[sa_exc.DBAPIError], orig: Exception) -> sa_exc.DBAPIError:
        return kind("UPDATE executions", {}, orig)

    assert is_unavailable(wrapped(sa_exc.OperationalError, psycopg.errors.DeadlockDetected("deadlock")))
    assert is_unavailable(wrapped(sa_exc.OperationalError, psycopg.errors.SerializationFailure("conflict")))
    assert is_unavailable(wrapped(sa_exc.OperationalError, psycopg.errors.AdminShutdown("shutting down")))
    assert not is_unavailable(wrapped(sa_exc.OperationalError, psycopg.errors.LockNotAvailable("lock timeout")))
    assert not is_unavailable(wrapped(sa_exc.IntegrityError, psycopg.errors.UniqueViolation("duplicate")))
    assert not is_unavailable(wrapped(sa_exc.ProgrammingError, psycopg.errors.UndefinedTable("no table")))
