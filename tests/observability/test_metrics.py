"""Metrics end to end: real runs through the API and a worker, then both scrapes (the API's
``/metrics`` and the worker's port) count exactly those runs; the ``/metrics`` guard settings."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from registry import metrics
from tests.conftest import api_client, eventually, running_worker
from tests.jobs.helpers import put_module, write_module

CODE = """
from autoplat import JobError

def hello(ctx):
    return {"ok": True}

def boom(ctx):
    raise JobError("bad input")

async def fetch(ctx):
    answer = await ctx.http.get(ctx.config["url"])
    return {"status": answer.status_code}

def flaky(ctx):
    if ctx.attempt < 2:
        raise RuntimeError("transient")
    return {"attempt": ctx.attempt}
"""

JOBS = [
    {"name": "hello", "description": "ok", "handler": "hello"},
    {"name": "boom", "description": "fails", "handler": "boom"},
    {"name": "fetch", "description": "calls a URL", "handler": "fetch"},
    {
        "name": "flaky",
        "description": "fails once",
        "handler": "flaky",
        "retries": {"maxAttempts": 2, "initialIntervalSeconds": 1, "backoffCoefficient": 1},
    },
]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def obs_module(sessions: Any, settings: Any, tmp_path: Any) -> str:
    name = f"obs{uuid.uuid4().hex[:6]}"
    folder = write_module(
        tmp_path,
        name=name,
        code=CODE,
        jobs=JOBS,
        package=name,
        extra={"permissions": {"hosts": ["127.0.0.1"], "services": ["http"]}},
    )
    await put_module(sessions, settings.state_dir, folder)
    return name


@pytest.fixture
def receiver() -> Iterator[int]:
    """A local HTTP server answering 203 (a status no other test's calls get)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(203)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


async def test_runs_are_counted_on_the_api_and_the_worker_port(
    receiver, temporal_settings, temporal_env, engine, obs_module, operator_headers, admin_headers, monkeypatch
):
    from api.routes import metrics as metrics_route

    monkeypatch.setattr(metrics_route, "OUTBOX_CACHE_SECONDS", 0.0)
    settings = temporal_settings
    settings.metrics = "open"
    settings.min_schedule_interval_seconds = 1  # an every-second cron below
    module = obs_module
    url = f"http://127.0.0.1:{receiver}/hook"
    sent_before = (
        REGISTRY.get_sample_value("autoplat_http_client_requests_total", {"host": "127.0.0.1", "status": "203"}) or 0.0
    )
    # The worker's client on a runtime exporting the Temporal SDK's metrics (as `autoplat worker` does).
    runtime = metrics.temporal_runtime(metrics.free_port())
    client = await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace=settings.temporal_namespace,
        data_converter=temporal_env.client.data_converter,
        runtime=runtime,
    )
    server = metrics.serve(0)
    worker_url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        async with running_worker(settings, client), api_client(settings) as api:
            jobs = {}
            for job_type in ("hello", "boom", "flaky", "fetch"):
                r = await api.post(
                    "/api/v1/jobs",
                    json={
                        "module": module,
                        "job_type": job_type,
                        "name": f"{job_type}-job",
                        "schedule": None,
                        "event_triggers": ["obs.ping"] if job_type == "hello" else [],
                        "config": {"url": url} if job_type == "fetch" else {},
                    },
                    headers=operator_headers,
                )
                assert r.status_code == 201, r.text
                jobs[job_type] = r.json()["id"]
            for job_type, runs in (("hello", 2), ("boom", 1), ("flaky", 1), ("fetch", 1)):
                for _ in range(runs):
                    r = await api.post(f"/api/v1/jobs/{jobs[job_type]}/execute?wait=true", headers=operator_headers)
                    assert r.status_code in (200, 502), r.text
            # One more run of hello, triggered by an event.
            r = await api.post("/api/v1/events", json={"name": "obs.ping", "payload": {}}, headers=operator_headers)
            assert r.status_code in (201, 202), r.text

            async def event_run_done() -> bool:
                r = await api.get(f"/api/v1/executions?job_id={jobs['hello']}&trigger=event", headers=admin_headers)
                items = r.json()["items"]
                return bool(items) and items[0]["status"] == "COMPLETED"

            await eventually(event_run_done, timeout=30)

            # And scheduled runs of hello, every second, until one has completed.
            r = await api.post(
                "/api/v1/jobs",
                json={
                    "module": module,
                    "job_type": "hello",
                    "name": "tick",
                    "schedule": "* * * * * *",
                },
                headers=operator_headers,
            )
            assert r.status_code == 201, r.text
            tick = r.json()["id"]

            async def scheduled_run_done() -> bool:
                r = await api.get(f"/api/v1/executions?job_id={tick}&status=COMPLETED", headers=admin_headers)
                return bool(r.json()["items"])

            await eventually(scheduled_run_done, timeout=30, what="a scheduled run")
            assert (await api.delete(f"/api/v1/jobs/{tick}", headers=operator_headers)).status_code == 204

            async def outbox_drained() -> str | None:
                # The runs' own job.* events are in the outbox until the dispatcher's next pass.
                r = await api.get("/metrics")
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
                found = samples(r.text)
                drained = value(found, "autoplat_events_pending") == 0
                return r.text if drained and value(found, "autoplat_events_oldest_pending_age_seconds") == 0 else None

            on_api = samples(await eventually(outbox_drained, timeout=30, what="the outbox gauge at 0"))
            async with httpx.AsyncClient() as plain:
                on_worker = samples((await plain.get(worker_url)).text)
                open_metrics = await plain.get(worker_url, headers={"Accept": "application/openmetrics-text"})
            r_om = await api.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    finally:
        server.shutdown()

    for found in (on_api, on_worker):  # one process here: both scrapes read the same counters
        started = value(found, "autoplat_runs_started_total", module=module, job_type="hello", trigger="manual")
        assert started == 2
        assert value(found, "autoplat_runs_started_total", module=module, job_type="hello", trigger="event") == 1
        assert (
            value(
                found,
                "autoplat_runs_finished_total",
                module=module,
                job_type="hello",
                trigger="manual",
                status="COMPLETED",
            )
            == 2
        )
        assert (
            value(
                found, "autoplat_runs_finished_total", module=module, job_type="boom", trigger="manual", status="FAILED"
            )
            == 1
        )
        assert (
            value(
                found,
                "autoplat_runs_finished_total",
                module=module,
                job_type="flaky",
                trigger="manual",
                status="COMPLETED",
            )
            == 1
        )
        hello = {"module": module, "job_type": "hello"}
        completed = sum(
            value(found, "autoplat_runs_finished_total", **hello, trigger=trigger, status="COMPLETED")
            for trigger in ("manual", "event", "schedule")
        )
        assert completed >= 4  # 2 manual, 1 event, at least 1 scheduled
        assert value(found, "autoplat_run_duration_seconds_count", **hello, status="COMPLETED") == completed
        assert value(found, "autoplat_run_start_lag_seconds_count", **hello, trigger="manual") == 2
        # flaky: a failed attempt, then its retry; boom: one failed attempt, never retried.
        assert value(found, "autoplat_steps_total", module=module, job_type="flaky", outcome="FAILED") == 1
        assert value(found, "autoplat_steps_total", module=module, job_type="flaky", outcome="COMPLETED") == 1
        assert value(found, "autoplat_step_retries_total", module=module, job_type="flaky") == 1
        assert value(found, "autoplat_step_retries_total", module=module, job_type="boom") == 0

    # API requests by route template, never the raw path (no id in any label).
    assert (
        value(on_api, "autoplat_api_requests_total", route="/api/v1/jobs/{job_id}/execute", method="POST", status="200")
        >= 3
    )
    labels = {v for (_, pairs) in on_api for (_, v) in pairs}
    assert not any(job_id in label for job_id in jobs.values() for label in labels)
    # Scheduled runs: each started one has its schedule lag (nominal fire time to start), and it is short.
    scheduled = value(on_api, "autoplat_runs_started_total", module=module, job_type="hello", trigger="schedule")
    assert scheduled >= 1
    lags = value(on_api, "autoplat_schedule_lag_seconds_count", module=module, job_type="hello")
    assert lags == scheduled
    assert value(on_api, "autoplat_schedule_lag_seconds_sum", module=module, job_type="hello") / lags < 30
    # ctx.http's request, counted from the handler process by host and status.
    sent = value(on_api, "autoplat_http_client_requests_total", host="127.0.0.1", status="203")
    assert sent == sent_before + 1
    # Events were dispatched with their lag measured.
    assert value(on_api, "autoplat_event_dispatch_lag_seconds_count") >= 1
    assert value(on_api, "autoplat_events_dispatched_total", outcome="dispatched") >= 1
    assert ("autoplat_db_pool_in_use", frozenset({("role", "api")})) in on_api
    # The worker's port: its pool and handler processes, and the Temporal SDK's own metrics.
    assert ("autoplat_db_pool_in_use", frozenset({("role", "worker")})) in on_worker
    assert value(on_worker, "autoplat_handler_processes_limit", role="worker") == settings.handler_max_processes
    temporal = {name for (name, _) in on_worker if name.startswith("temporal_")}
    assert "temporal_worker_task_slots_available" in temporal, sorted(temporal)[:20]
    assert any(name.startswith("temporal_activity_execution") for name in temporal), sorted(temporal)
    # OpenMetrics when the scraper asks for it.
    for answer in (open_metrics, r_om):
        assert answer.headers["content-type"].startswith("application/openmetrics-text")
        assert answer.text.rstrip().endswith("# EOF")


async def test_metrics_off_and_token(settings, engine):
    settings.metrics = "off"
    async with api_client(settings) as api:
        r = await api.get("/metrics")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    guarded = settings.model_copy(update={"metrics": "token", "metrics_token": "s3cret-scrape-token"})
    from pydantic import SecretStr

    guarded.metrics_token = SecretStr("s3cret-scrape-token")
    async with api_client(guarded) as api:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-scrape-token"}):
            r = await api.get("/metrics", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
        # A module route call to a module that does not exist: counted, but never under the name sent.
        unknown = {"module": "unknown", "status": "404"}
        before = REGISTRY.get_sample_value("autoplat_route_calls_total", unknown) or 0.0
        name = f"nosuch{uuid.uuid4().hex[:8]}"
        assert (await api.get(f"/api/v1/m/{name}/x")).status_code == 404
        r = await api.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape-token"})
        assert r.status_code == 200 and "autoplat_api_requests_total" in r.text
        assert value(samples(r.text), "autoplat_route_calls_total", **unknown) == before + 1
        assert name not in r.text
    # Token mode without a token is refused when the settings are read.
    from pydantic import ValidationError

    from registry.settings import Settings

    with pytest.raises(ValidationError, match="AUTOPLAT_METRICS_TOKEN"):
        Settings(metrics="token")
    assert Settings(dev_mode=True).metrics_mode() == "open"
    assert Settings(dev_mode=False).metrics_mode() == "off"
    assert Settings(metrics_token="x" * 40).metrics_mode() == "token"


async def test_notifications_are_counted_by_channel_type_and_outcome(settings):
    from activities.services.notify import Notifier, Sender
    from autoplat.errors import JobError
    from tests.services.helpers import free_port, http_receiver

    def count(channel: str, outcome: str) -> float:
        return (
            REGISTRY.get_sample_value("autoplat_notifications_total", {"channel": channel, "outcome": outcome}) or 0.0
        )

    before = {key: count(*key) for key in (("webhook", "sent"), ("slack", "failed"), ("email", "failed"))}
    async with httpx.AsyncClient(trust_env=False) as http:
        notifier = Notifier(Sender(settings, http))
        with http_receiver() as hook:
            assert (await notifier.webhook(f"{hook.url}/hook", {"n": 1}))["status"] == 200
        with pytest.raises(Exception, match="slack"):
            await notifier.slack(f"http://127.0.0.1:{free_port()}/hook", "down")  # nobody listens
        with pytest.raises(JobError, match="AUTOPLAT_SMTP_HOST"):
            await notifier.email("ops@example.test", "subject", "text")  # email is not configured
    assert count("webhook", "sent") == before[("webhook", "sent")] + 1
    assert count("slack", "failed") == before[("slack", "failed")] + 1
    assert count("email", "failed") == before[("email", "failed")] + 1
