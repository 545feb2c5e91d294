"""OpenTelemetry traces (docs/observability.md): off unless ``AUTOPLAT_TRACING=on``.

On, one trace follows a run: the API request that starts it (FastAPI's own server span, joining an
incoming ``traceparent``; FastAPI records it whenever a tracer provider is installed), Temporal's
spans for the workflow start, the workflow and each activity (``TracingInterceptor`` on the client,
which the worker inherits), the handler's step, and its ``ctx.http`` requests: a client span each
when the handler runs inline; from a handler process (the default), each request carries the step
span's ``traceparent`` (the process has no tracer of its own). Spans go to the OTLP/HTTP exporter
the standard ``OTEL_EXPORTER_OTLP_*`` variables configure (``OTEL_SERVICE_NAME`` names the service).

Off costs nothing: no provider, no interceptor, no wrapper; the checks are one module-global read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

log = logging.getLogger(__name__)

_enabled = False
TRACER_NAME = "autoplat"


def enabled() -> bool:
    return _enabled


def configure(service: str, *, on: bool, exporter: Any = None) -> bool:
    """Install the process's tracer provider when ``on`` (once: OpenTelemetry's global provider can
    be set only once per process). ``exporter``: a span exporter (tests: the in-memory one), sent
    synchronously; default: OTLP over HTTP, batched."""
    global _enabled
    if not on:
        return False
    if _enabled:
        return True
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def disable() -> None:
    """Stop creating spans (tests); the installed provider stays, unused."""
    global _enabled
    _enabled = False


def client_interceptors() -> list[Any]:
    """Interceptors for ``Client.connect``: Temporal's tracing interceptor when tracing is on (the
    worker built on that client inherits it)."""
    if not _enabled:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


def current_trace_id() -> str | None:
    """The current trace id (32 hex digits) when tracing is on and a span is current."""
    if not _enabled:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


@asynccontextmanager
async def step_span(module: str, job_type: str, step: str | None, execution_id: str) -> AsyncIterator[None]:
    """The span of one step's handler run (inside Temporal's ``RunActivity`` span)."""
    if not _enabled:
        yield
        return
    from opentelemetry import trace

    name = f"handler {module}.{job_type}" + (f".{step}" if step and step != job_type else "")
    with trace.get_tracer(TRACER_NAME).start_as_current_span(
        name, attributes={"autoplat.execution_id": execution_id, "autoplat.module": module}
    ):
        yield


def traceparent() -> str | None:
    """The current span as a W3C ``traceparent`` header value (tracing on and a span current)."""
    if not _enabled:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def continued(traceparent: str | None, name: str) -> Iterator[None]:
    """A span ``name`` continuing the trace of ``traceparent`` (an event's): what starts inside it
    (a workflow, through Temporal's interceptor) joins that trace. Nothing when tracing is off or
    there is no trace to continue."""
    if not _enabled or not traceparent:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    with trace.get_tracer(TRACER_NAME).start_as_current_span(
        name, context=extract({"traceparent": traceparent}), kind=SpanKind.PRODUCER
    ):
        yield


def step_transport(transport: Any) -> Any:
    """``ctx.http``'s transport for one step: each request a client span, child of the step's span
    (captured now: requests may be sent from another task), with ``traceparent`` sent along."""
    if not _enabled:
        return transport
    import httpx
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagate import inject
    from opentelemetry.trace import SpanKind, Status, StatusCode

    parent = otel_context.get_current()

    class TracedTransport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            tracer = trace.get_tracer(TRACER_NAME)
            with tracer.start_as_current_span(
                f"HTTP {request.method}",
                context=parent,
                kind=SpanKind.CLIENT,
                attributes={
                    "http.request.method": request.method,
                    "server.address": request.url.host,
                    # No query string: it may hold a secret.
                    "url.full": f"{request.url.scheme}://{request.url.netloc.decode()}{request.url.path}",
                },
            ) as span:
                carrier: dict[str, str] = {}
                inject(carrier)
                for key, value in carrier.items():
                    request.headers[key] = value
                response = await transport.handle_async_request(request)
                span.set_attribute("http.response.status_code", response.status_code)
                if response.status_code >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                return response

        async def aclose(self) -> None:
            return None  # the worker's shared transport is closed with the worker

    return TracedTransport()
