"""autoplat: the SDK module authors import.

A handler is a plain function (sync or async) taking a :class:`JobContext`; in a multi-step job
a step may take a second argument, the previous step's result (also ``ctx.previous``)::

    from autoplat import JobContext, JobError

    def hourly_sync(ctx: JobContext) -> dict:
        ctx.logger.info("syncing from %s", ctx.config["source_url"])
        return {"synced": 0}

Module code imports nothing of the platform but this package.
"""

from typing import TYPE_CHECKING, Any

from autoplat.context import ExecutionInfo, HttpRequest, HttpResponse, JobContext, JobLogger
from autoplat.errors import Cancelled, JobError, RetryableError

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    # The manifest model needs pydantic, which handler processes (and handlers) need not import.
    if name in ("Manifest", "load_manifest"):
        from autoplat import manifest

        return getattr(manifest, name)
    raise AttributeError(f"module 'autoplat' has no attribute {name!r}")
