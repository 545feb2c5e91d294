"""Platform services for jobs: HTTP, browser, notifications, module storage / job state, live logs,
time series, the module's vault.

Each service lives in a submodule of this package that defines ``provider(deps)``, returning an
object with:

* ``activities() -> list`` — the Temporal activities the platform's workflows call directly;
* optionally ``async contribute(inp, ctx) -> dict[str, Any]`` — ``JobContext`` members for one
  step (``{"http": ...}``), built when the step starts;
* optionally ``async release(inp, ctx)`` — called once when that step ends, whatever its outcome;
* optionally ``log_sink(execution_id)`` — a callable receiving each log entry of a running step;
* optionally ``close()`` (sync or async) — called when the worker shuts down.

A submodule that is not present is skipped, so each service can land on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from activities.jobs import JobActivities
from activities.types import StepInput
from autoplat.context import JobContext

log = logging.getLogger(__name__)

SUBMODULES = ("http", "storage", "notify", "browser", "logs", "series", "vault")


class Services:
    """The composite provider registered by the worker (see ``workflows.worker``)."""

    def __init__(self, deps: Any) -> None:
        self.deps = deps
        self.providers: list[Any] = []
        for name in SUBMODULES:
            module_name = f"{__name__}.{name}"
            try:
                module = __import__(module_name, fromlist=["provider"])
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue
            provider = module.provider(deps)
            self.providers.append(provider)
            closer = getattr(provider, "close", None)
            if closer is not None:
                deps.closers.append(closer)

    def activities(self) -> list[Callable[..., Any]]:
        return [fn for provider in self.providers for fn in provider.activities()]

    def attach(self, jobs: JobActivities) -> None:
        jobs.services = self.contribute
        jobs.release = self.release
        sinks = [p.log_sink for p in self.providers if hasattr(p, "log_sink")]
        if sinks:
            jobs.log_sink = sinks[0]

    async def contribute(self, inp: StepInput, ctx: JobContext) -> dict[str, Any]:
        members: dict[str, Any] = {}
        for provider in self.providers:
            contribute = getattr(provider, "contribute", None)
            if contribute is not None:
                members.update(await contribute(inp, ctx))
        return members

    async def release(self, inp: StepInput, ctx: JobContext) -> None:
        for provider in reversed(self.providers):
            release = getattr(provider, "release", None)
            if release is None:
                continue
            try:
                await release(inp, ctx)
            except Exception:  # noqa: BLE001 - one service failing to release must not stop the others
                log.exception("releasing %s failed", type(provider).__name__)


def provider(deps: Any) -> Services:
    return Services(deps)
