"""Log lines of the API and the workers: human text or one JSON object per line
(``AUTOPLAT_LOG_FORMAT=json``, docs/observability.md).

A JSON line has ``time``, ``level``, ``logger``, ``message`` and, where known, ``execution_id``,
``job_id``, ``module``, ``job_type``, ``workflow_id``, ``request_id`` and ``trace_id``: bound for the
running step or request (:func:`bind`, context variables, so concurrent steps never mix), taken from
Temporal's activity / workflow log extras, or from the current OpenTelemetry span.

Quiet by default, in both formats: a handler failure is already kept whole in the execution's error
and logs, so the Temporal SDK's "Completing activity as failed" warning for it is one line naming the
error, not a traceback (:class:`QuietActivityFailures`). Unexpected exceptions keep their traceback.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import sys
from datetime import UTC, datetime
from typing import Any

#: Fields bound to the running step / request (:func:`bind`).
_CONTEXT: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("autoplat_log_context", default=None)
CONTEXT_FIELDS = ("execution_id", "job_id", "module", "job_type", "workflow_id", "request_id", "trace_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def bind(**fields: str | None) -> contextvars.Token[dict[str, str] | None]:
    """Add fields to every log line of the current task (and tasks it starts) until :func:`unbind`."""
    current = dict(_CONTEXT.get() or {})
    current.update({k: v for k, v in fields.items() if v})
    return _CONTEXT.set(current)


def unbind(token: contextvars.Token[dict[str, str] | None]) -> None:
    _CONTEXT.reset(token)


def context_fields(record: logging.LogRecord | None = None) -> dict[str, str]:
    fields = dict(_CONTEXT.get() or {})
    if record is not None:
        temporal = getattr(record, "temporal_activity", None) or getattr(record, "temporal_workflow", None)
        if isinstance(temporal, dict) and temporal.get("workflow_id"):
            workflow_id = str(temporal["workflow_id"])
            fields.setdefault("workflow_id", workflow_id)
            kind = temporal.get("activity_type") or temporal.get("workflow_type")
            # A job type (<module>.<job-type>[.<step>]), not one of the platform's own workflows.
            if isinstance(kind, str) and "." in kind and not kind.startswith("autoplat"):
                module, _, job_type = kind.partition(".")
                fields.setdefault("module", module)
                fields.setdefault("job_type", job_type.partition(".")[0])
                fields.setdefault("execution_id", _execution_id(workflow_id))
        for name in CONTEXT_FIELDS:
            if name == "module":
                continue  # LogRecord.module is the Python module's name: never take it for ours
            value = getattr(record, name, None)
            if value:
                fields[name] = str(value)
    if "trace_id" not in fields:
        trace_id = current_trace_id()
        if trace_id:
            fields["trace_id"] = trace_id
    return fields


def _execution_id(workflow_id: str) -> str:
    """The execution id of a job run's workflow id (workflows/control.py, registry/services/runs.py)."""
    for prefix in ("exec-", "call-"):
        if workflow_id.startswith(prefix):
            return workflow_id[len(prefix) :]
    from registry.services.runs import execution_id_for

    return execution_id_for(workflow_id)


def current_trace_id() -> str | None:
    """The current trace id when the platform traces (registry/tracing.py), else None."""
    from registry.tracing import current_trace_id as traced

    return traced()


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(context_fields(record))
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line["error"] = f"{type(exc).__name__}: {exc}"
            line["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["traceback"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class QuietActivityFailures(logging.Filter):
    """The SDK's warning for an activity that failed with an ``ApplicationError`` (how every handler
    failure reaches Temporal) becomes one line naming the error: its traceback is the platform's own
    re-raise, and the handler's traceback is in the execution's error and logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            from temporalio.exceptions import ApplicationError

            exc = record.exc_info[1]
            if isinstance(exc, ApplicationError):
                record.msg = f"{record.getMessage()}: {exc.type or 'Error'}: {exc.message}"
                record.args = ()
                record.exc_info = None
                record.exc_text = None
        return True


_QUIET = QuietActivityFailures()


def logging_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the root logger and uvicorn's loggers (also what
    ``uvicorn.run(log_config=...)`` takes, so every API process formats alike)."""
    formatter: dict[str, Any] = {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"autoplat": formatter},
        "handlers": {
            "autoplat": {"class": "logging.StreamHandler", "formatter": "autoplat", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["autoplat"], "level": level},
        "loggers": {
            name: {"handlers": [], "level": "INFO", "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure(log_format: str, level: str = "INFO") -> None:
    """Set up the process's logging (``autoplat api`` / ``worker``); idempotent."""
    logging.config.dictConfig(logging_config(log_format, level))
    quiet()


def quiet() -> None:
    """Install :class:`QuietActivityFailures` on the Temporal SDK's activity logger."""
    activity_logger = logging.getLogger("temporalio.activity")
    if _QUIET not in activity_logger.filters:
        activity_logger.addFilter(_QUIET)


def stream_handler(log_format: str, stream: Any = None) -> logging.Handler:
    """A handler formatting like :func:`configure` (tests, embedding)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return handler
