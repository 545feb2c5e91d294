"""Traces: the API request that starts a run, Temporal's workflow and activity spans, the handler's
step and its ``ctx.http`` call form one trace, and the callee receives its ``traceparent``."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client

from registry import tracing
from tests.conftest import api_client, eventually, running_worker
from tests.jobs.helpers import put_module, write_module

CODE = """
async def call(ctx):
    ctx.logger.info("calling")
    answer = await ctx.http.get(ctx.config["url"])
    return {"status": answer.status_code, "trace_id": ctx.trace_id}
"""


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    # OpenTelemetry's provider is process-wide and set once: the first configure() wins.
    assert tracing.configure("autoplat-test", on=True, exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.disable()


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", seen
    finally:
        server.shutdown()


@pytest.mark.parametrize("isolation", ["process", "inline"])
async def test_one_trace_from_the_request_to_the_handlers_http_call(
    isolation, spans, receiver, temporal_settings, temporal_env, engine, sessions, tmp_path, operator_headers
):
    url, seen = receiver
    settings = temporal_settings
    settings.tracing = "on"
    settings.handler_isolation = isolation
    module = f"trace{uuid.uuid4().hex[:6]}"
    folder = write_module(
        tmp_path,
        name=module,
        code=CODE,
        jobs=[{"name": "call", "description": "calls a URL", "handler": "call"}],
        package=module,
        extra={"permissions": {"hosts": ["127.0.0.1"], "services": ["http"]}},
    )
    await put_module(sessions, settings.state_dir, folder)
    # The worker's client as `autoplat worker` builds it with tracing on (the API's connects itself).
    client = await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace=settings.temporal_namespace,
        data_converter=temporal_env.client.data_converter,
        interceptors=tracing.client_interceptors(),
    )
    spans.clear()
    async with api_client(settings) as api, running_worker(settings, client):
        r = await api.post(
            "/api/v1/jobs",
            json={
                "module": module,
                "job_type": "call",
                "name": "call",
                "schedule": None,
                "config": {"url": url},
                "event_triggers": ["trace.ping"],
            },
            headers=operator_headers,
        )
        assert r.status_code == 201, r.text
        r = await api.post(f"/api/v1/jobs/{r.json()['id']}/execute?wait=true", headers=operator_headers)
        assert r.status_code == 200 and r.json()["status"] == "COMPLETED", r.text
        result = r.json()["result"]
        logs = r.json()["logs"]
        row_trace = r.json()["trace_id"]
        job_id = r.json()["job_id"]
        # An event, and the run it triggers: the run joins the trace of the request that sent the event.
        r = await api.post("/api/v1/events", json={"name": "trace.ping", "payload": {}}, headers=operator_headers)
        assert r.status_code in (201, 202), r.text

        async def event_run() -> dict[str, Any] | None:
            r = await api.get(f"/api/v1/executions?job_id={job_id}&trigger=event", headers=operator_headers)
            items = r.json()["items"]
            return items[0] if items and items[0]["status"] == "COMPLETED" else None

        event_run_id = (await eventually(event_run, timeout=30, what="the event's run"))["id"]
        r = await api.get(f"/api/v1/executions/{event_run_id}", headers=operator_headers)
        event_row_trace = r.json()["trace_id"]

    assert result["status"] == 204
    finished = spans.get_finished_spans()
    request = next(s for s in finished if s.name == "POST /api/v1/jobs/{job_id}/execute")
    trace_id = request.context.trace_id
    in_trace = {s.name for s in finished if s.context.trace_id == trace_id}
    assert {"StartWorkflow:" + f"{module}.call", f"RunWorkflow:{module}.call", f"RunActivity:{module}.call"} <= in_trace
    assert f"handler {module}.call" in in_trace, sorted(in_trace)
    assert result["trace_id"] == f"{trace_id:032x}"
    # The handler's log lines name the trace, so the execution page leads to it.
    assert [e.get("trace_id") for e in logs if e["message"] == "calling"] == [f"{trace_id:032x}"], logs
    handler_span = next(s for s in finished if s.name == f"handler {module}.call")
    run_activity = next(s for s in finished if s.name == f"RunActivity:{module}.call")
    assert handler_span.parent is not None and handler_span.parent.span_id == run_activity.context.span_id
    assert row_trace == f"{trace_id:032x}"  # on the execution row too
    # The event's run: in the trace of POST /events, under a dispatch span.
    posted = next(s for s in spans.get_finished_spans() if s.name == "POST /api/v1/events")
    event_trace = posted.context.trace_id
    assert event_row_trace == f"{event_trace:032x}"
    joined = {s.name for s in spans.get_finished_spans() if s.context.trace_id == event_trace}
    assert {f"dispatch {module}.call", f"RunWorkflow:{module}.call", f"handler {module}.call"} <= joined, joined
    # The request span is the root: no other span of the trace lacks a parent.
    roots = [s for s in finished if s.context.trace_id == trace_id and s.parent is None]
    assert [s.name for s in roots] == [request.name]
    # The callee joined the trace: under the HTTP span (inline), under the step's span (handler process).
    assert len(seen) == 2, seen  # the run's call, then the event run's
    assert seen[1]["traceparent"].split("-")[1] == f"{event_trace:032x}"
    _version, got_trace, got_parent, _flags = seen[0]["traceparent"].split("-")
    assert got_trace == f"{trace_id:032x}"
    if isolation == "inline":
        http_span = next(s for s in finished if s.name == "HTTP GET" and s.context.trace_id == trace_id)
        assert http_span.parent is not None and http_span.parent.span_id == handler_span.context.span_id
        assert http_span.attributes["http.response.status_code"] == 204
        assert got_parent == f"{http_span.context.span_id:016x}"
    else:
        assert got_parent == f"{handler_span.context.span_id:016x}"
