"""``ctx.emit`` from a step that is retried does not emit twice: the n-th event named X that a step
emits has an id derived from the execution, the step, X and n, never from the attempt or the
payload; an event the retry emits under another name is a new event (docs/events.md)."""

from __future__ import annotations

from sqlalchemy import select

from registry.models import Event
from tests.jobs.helpers import put_module, write_module

CODE = """
async def flaky(ctx):
    first = await ctx.emit("flaky.started", {"attempt": ctx.attempt})
    # Only the retry emits this one, before the others: a new event, and it shifts nothing.
    other = await ctx.emit("flaky.retrying", {"attempt": ctx.attempt}) if ctx.attempt > 1 else None
    second = await ctx.emit("flaky.progress", {"attempt": ctx.attempt})
    if ctx.attempt == 1:
        raise RuntimeError("fails once, after emitting")
    third = await ctx.emit("flaky.done", {"attempt": ctx.attempt})
    return {"ids": [first, other, second, third]}
"""
JOBS = [{"name": "flaky", "description": "emits, fails once, emits again", "handler": "flaky"}]


async def test_a_retried_step_emits_each_event_once(client, worker, sessions, settings, tmp_path, operator_headers):
    await put_module(sessions, settings.state_dir, write_module(tmp_path, name="flaky", code=CODE, jobs=JOBS))
    r = await client.post(
        "/api/v1/jobs",
        json={
            "module": "flaky",
            "job_type": "flaky",
            "name": "flaky",
            "schedule": None,
            "retries": 1,
            "retry_backoff": {"initial_interval_seconds": 0.1, "backoff_coefficient": 1},
        },
        headers=operator_headers,
    )
    assert r.status_code == 201, r.text
    body = (await client.post(f"/api/v1/jobs/{r.json()['id']}/execute?wait=true", headers=operator_headers)).json()
    assert body["status"] == "COMPLETED", body
    assert [(s["status"], s["attempts"]) for s in body["steps"]] == [("COMPLETED", 2)]
    async with sessions() as s:
        stored = (await s.scalars(select(Event).where(Event.execution_id == body["id"]).order_by(Event.seq))).all()
    mine = [e for e in stored if e.name.startswith("flaky.")]
    # Two events from the first attempt, the same two again (not stored twice, the first payload
    # stands), and two new ones: the retry's own event did not take the id of "flaky.progress".
    assert [(e.name, e.payload) for e in mine] == [
        ("flaky.started", {"attempt": 1}),
        ("flaky.progress", {"attempt": 1}),
        ("flaky.retrying", {"attempt": 2}),
        ("flaky.done", {"attempt": 2}),
    ]
    by_name = {e.name: e.id for e in mine}
    ids = ["flaky.started", "flaky.retrying", "flaky.progress", "flaky.done"]
    assert body["result"]["ids"] == [by_name[name] for name in ids]
