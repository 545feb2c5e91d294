"""Exceptions module authors raise (or catch) in handlers."""

from __future__ import annotations

from typing import Any


class JobError(Exception):
    """A business failure: the step fails at once, without retry.

    Args:
        message: What went wrong, shown on the execution.
        details: Optional JSON-serialisable facts kept with the error.
    """

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class RetryableError(Exception):
    """A transient failure: the step is retried under the job's retry policy.

    Any other unexpected exception is treated the same way; raise this one to say so explicitly.
    """


class Cancelled(Exception):
    """Raised by :meth:`JobContext.check_cancelled` once the execution is cancelled or timed out."""
