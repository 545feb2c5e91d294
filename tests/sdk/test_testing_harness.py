"""The module authors' harness: run handlers and jobs locally, and on a real dev server."""

from __future__ import annotations

import autoplat
from autoplat.testing import TemporalHarness, arun_step, run_job, run_step
from tests.jobs.helpers import write_module

CODE = """
from autoplat import JobError

def double(ctx):
    ctx.logger.info("doubling %d", ctx.config["n"])
    return ctx.config["n"] * 2

def add_one(ctx, previous):
    return previous + 1

def fails(ctx):
    raise JobError("nope")
"""
JOBS = [
    {
        "name": "calc",
        "description": "two steps",
        "config": {"type": "object", "properties": {"n": {"type": "integer", "default": 4}}},
        "steps": [{"name": "double", "handler": "double"}, {"name": "add-one", "handler": "add_one"}],
    },
    {"name": "fails", "description": "fails", "handler": "fails"},
]


def test_public_surface_is_stable():
    assert sorted(autoplat.__all__) == [
        "Cancelled",
        "ExecutionInfo",
        "HttpRequest",
        "HttpResponse",
        "JobContext",
        "JobError",
        "JobLogger",
        "Manifest",
        "RetryableError",
        "load_manifest",
    ]


def test_run_step_gives_result_logs_and_events():
    async def handler(ctx):
        ctx.logger.info("hi %s", ctx.config["who"])
        await ctx.emit("demo.done", {"who": ctx.config["who"]})
        return {"ok": True}

    result = run_step(handler, config={"who": "ops"})
    assert result.result == {"ok": True}
    assert [e["message"] for e in result.logs] == ["hi ops"]
    assert [(e["name"], e["payload"]) for e in result.events] == [("demo.done", {"who": "ops"})]


async def test_arun_step_passes_previous():
    result = await arun_step(lambda ctx, previous: previous * 3, previous=5)
    assert result.result == 15


def test_run_job_runs_steps_with_defaults(tmp_path):
    folder = write_module(tmp_path, name="calc-mod", code=CODE, jobs=JOBS)
    assert run_job(folder, "calc").result == 9
    assert run_job(folder, "calc", config={"n": 10}).result == 21
    failed = run_job(folder, "fails")
    assert failed.status == "FAILED" and str(failed.steps[0].error) == "nope"


async def test_temporal_harness_runs_on_a_real_dev_server(tmp_path):
    folder = write_module(tmp_path, name="calc-remote", code=CODE, jobs=JOBS, package="calc_remote")
    async with TemporalHarness(tmp_path / "state") as harness:
        execution = await harness.run(folder, "calc", config={"n": 1})
    assert execution["status"] == "COMPLETED"
    assert execution["result"] == 3
