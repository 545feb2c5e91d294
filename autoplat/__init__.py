"""autoplat: the SDK module authors import.

A handler is a plain function (sync or async) taking a :class:`JobContext`; in a multi-step job
a step may take a second argument, the previous step's result (also ``ctx.previous``)::

    from autoplat import JobContext, JobError

    def hourly_sync(ctx: JobContext) -> dict:
        ctx.logger.info("syncing from %s", ctx.config["source_url"])
        return {"synced": 0}

Module code imports nothing of the platform but this package.
"""

from autoplat.context import ExecutionInfo, HttpRequest, HttpResponse, JobContext, JobLogger
from autoplat.errors import Cancelled, JobError, RetryableError
from autoplat.manifest import Manifest, load_manifest

__version__ = "0.1.0"

__all__ = [
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
