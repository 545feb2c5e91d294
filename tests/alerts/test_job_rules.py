"""Job-outcome rules against PostgreSQL: "failed N times in a row" on job.* events (a success
clears it), "has not succeeded for" on evaluation; the signals they give the incident workflows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from registry.db import unit_of_work
from registry.models import AlertRule, Event, Execution, Job
from registry.services import alerts, alerts_eval
from registry.services.common import Actor
from tests.jobs.helpers import put_module, write_module

ACTOR = Actor(user_id=None, email="ops@example.com", role="operator")


async def _run(sessions: Any, job: Job, status: str, at: datetime) -> Event:
    """A finished run of ``job`` and its job.* event (as the mirror records them)."""
    async with unit_of_work(sessions) as session:
        execution = Execution(
            job_id=job.id, module_name=job.module_name, job_type=job.job_type, workflow_id=f"wf-{at.timestamp()}",
            status=status, trigger="manual", created_at=at, started_at=at, finished_at=at,
            error={"message": "upstream said 503"} if status == "FAILED" else None,
        )  # fmt: skip
        session.add(execution)
        await session.flush()
        name = {"FAILED": "job.failed", "COMPLETED": "job.completed", "TIMED_OUT": "job.timed_out"}[status]
        payload = {"execution_id": execution.id, "job_id": job.id, "module": job.module_name,
                   "job_type": job.job_type, "status": status}  # fmt: skip
        event = Event(name=name, payload=payload, received_at=at, occurred_at=at, execution_id=execution.id)
        session.add(event)
        await session.flush()
        return event


async def test_failures_in_a_row_and_not_succeeded_for(sessions, settings, tmp_path):
    folder = write_module(tmp_path, name="sync", code="def go(ctx):\n    return 1\n",
                          jobs=[{"name": "go", "description": "syncs", "handler": "go"}])  # fmt: skip
    module = await put_module(sessions, settings.state_dir, folder)
    long_ago = datetime.now(UTC) - timedelta(hours=3)
    async with unit_of_work(sessions) as session:
        job = Job(module_id=module.id, module_name="sync", job_type="go", name="nightly", created_at=long_ago)
        session.add(job)
        streak = await alerts.create_rule(
            session=session, actor=ACTOR, default_interval=60,
            data={"name": "sync failing", "source": "job", "severity": "critical",
                  "message": "{{job.module}}.{{job.job_type}} failed {{failures}} times: {{execution.error}}",
                  "condition": {"job": "sync.go", "failures": 2}},
        )  # fmt: skip
        stale = await alerts.create_rule(
            session=session, actor=ACTOR, default_interval=60,
            data={"name": "sync stale", "source": "job", "message": "{{job.name}} quiet for {{value}} min",
                  "condition": {"job": job.id, "not_succeeded_minutes": 60}},
        )  # fmt: skip
        stale.created_at = long_ago

    async def observe(event: Event) -> list[alerts_eval.Signal]:
        async with unit_of_work(sessions) as session:
            return await alerts_eval.on_events(session, [event])

    now = datetime.now(UTC)
    assert await observe(await _run(sessions, job, "FAILED", now - timedelta(minutes=3))) == []
    [fired] = await observe(await _run(sessions, job, "TIMED_OUT", now - timedelta(minutes=2)))
    assert fired.fire is not None and fired.incident.rule_id == streak.id
    assert fired.fire.message == "sync.go failed 2 times: ?"  # the newest run timed out: no error message
    assert fired.incident.labels == {"module": "sync", "job_type": "go", "job_id": job.id}
    assert fired.incident.severity == "critical" and fired.incident.auto_resolve is True
    # Still failing: the incident is open already, nothing new to signal.
    assert await observe(await _run(sessions, job, "FAILED", now - timedelta(minutes=1))) == []
    [cleared] = await observe(await _run(sessions, job, "COMPLETED", now))
    assert cleared.clear is not None and cleared.workflow_id == fired.workflow_id

    # Not succeeded for 60 minutes: the success just recorded keeps it quiet; one three hours old does not.
    async with unit_of_work(sessions) as session:
        assert await alerts_eval.evaluate_due(session) == []
    async with unit_of_work(sessions) as session:
        await session.execute(Execution.__table__.update().values(finished_at=long_ago))
        rule = await session.get(AlertRule, stale.id)
        assert rule is not None
        rule.last_evaluated_at = None
        [quiet] = await alerts_eval.evaluate_due(session)
    assert quiet.fire is not None and quiet.fire.message.startswith("nightly quiet for 18")
    async with unit_of_work(sessions) as session:
        assert await alerts_eval.evaluate_due(session) == []  # not due again before its interval
    async with unit_of_work(sessions) as session:
        await _run(sessions, job, "COMPLETED", datetime.now(UTC))
        [back] = await alerts_eval.evaluate_due(session, now=datetime.now(UTC) + timedelta(seconds=61))
    assert back.clear is not None and back.clear.reason == "the job succeeded"
