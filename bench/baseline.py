"""The bare-Temporal baseline: one workflow running one trivial activity.

Kept in an importable module (not ``__main__``) because the workflow sandbox re-imports the module
that defines a workflow. Two definitions of the same workflow: in Temporal's sandbox (the SDK's
default, what a user's own workflow gets) and outside it (as the platform's ``JobWorkflow`` runs:
the stricter baseline, about 3.5 ms less CPU per run in the worker process here).
"""

from __future__ import annotations

import time
from datetime import timedelta

from temporalio import activity, workflow

ACTIVITY_NAME = "bench.baseline.noop"


@activity.defn(name=ACTIVITY_NAME)
async def noop_activity() -> float:
    """Return the wall-clock time the activity started at (compared with the trigger time)."""
    return time.time()


@workflow.defn(name="bench.baseline")
class BaselineWorkflow:
    @workflow.run
    async def run(self) -> float:
        return await workflow.execute_activity(noop_activity, start_to_close_timeout=timedelta(seconds=30))


@workflow.defn(name="bench.baseline.unsandboxed", sandboxed=False)
class UnsandboxedBaselineWorkflow:
    @workflow.run
    async def run(self) -> float:
        return await workflow.execute_activity(noop_activity, start_to_close_timeout=timedelta(seconds=30))
