"""Job notifications end to end: API → Temporal → worker → autoplat.notify → real SMTP / webhook."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus

from activities.services.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.conftest import eventually
from tests.jobs.helpers import put_module, write_module
from tests.services.helpers import Receiver, SmtpServer, http_receiver, smtp_server

CODE = """
def always_fails(ctx):
    ctx.logger.info("attempt %d", ctx.attempt)
    raise RuntimeError("source down")

def works(ctx):
    return {"ok": True}

async def slow(ctx):
    import asyncio
    await asyncio.sleep(600)

def undeclared(ctx):
    return ctx.notify.email("a@example.com", "s", text="t")
"""
JOBS = [
    {"name": "always-fails", "description": "fails every attempt", "handler": "always_fails"},
    {"name": "works", "description": "succeeds", "handler": "works"},
    {"name": "slow", "description": "times out", "handler": "slow"},
    {"name": "undeclared", "description": "uses notify without declaring it", "handler": "undeclared"},
]


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with http_receiver() as receiver:
        yield receiver


@pytest.fixture
def notify_settings(temporal_settings: Any, smtp: SmtpServer, hook: Receiver) -> Any:
    """Point the worker at the local SMTP server and a signed webhook channel (before it starts)."""
    temporal_settings.smtp_host = smtp.host
    temporal_settings.smtp_port = smtp.port
    temporal_settings.smtp_tls = "none"
    temporal_settings.smtp_from = "autoplat@ops.test"
    temporal_settings.notify_email_to = ["oncall@ops.test"]
    temporal_settings.notify_channels = {"ops-hook": {"type": "webhook", "url": f"{hook.url}/notify", "secret": "k3y"}}
    return temporal_settings


@pytest.fixture
async def module(sessions: Any, settings: Any, tmp_path: Any) -> Any:
    folder = write_module(tmp_path, name="notifier", code=CODE, jobs=JOBS)
    return await put_module(sessions, settings.state_dir, folder)


async def _run(client: Any, headers: dict[str, str], job_type: str, **extra: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/jobs",
        json={"module": "notifier", "job_type": job_type, "name": job_type, "schedule": None, **extra},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    r = await client.post(f"/api/v1/jobs/{r.json()['id']}/execute?wait=true", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def _closed(temporal_env: Any, workflow_id: str) -> None:
    async def done() -> bool:
        desc = await temporal_env.client.get_workflow_handle(workflow_id).describe()
        return desc.status != WorkflowExecutionStatus.RUNNING

    await eventually(done, what="workflow closed")


async def test_failure_notification_sent_exactly_once_after_the_last_attempt(
    notify_settings, worker, client, module, operator_headers, smtp, hook, temporal_env
):
    body = await _run(
        client,
        operator_headers,
        "always-fails",
        retries=2,
        retry_backoff={"initial_interval_seconds": 0.1, "backoff_coefficient": 1},
        notifications={"on_failure": ["email", "ops-hook"], "on_success": ["email"]},
    )
    assert body["status"] == "FAILED" and body["attempt"] == 3, body
    await _closed(temporal_env, body["workflow_id"])

    # Every attempt ran before the one notification per channel.
    logs = (await client.get(f"/api/v1/executions/{body['id']}/logs", headers=operator_headers)).json()
    assert [e["message"] for e in logs["entries"] if e["message"].startswith("attempt")] == [
        "attempt 1",
        "attempt 2",
        "attempt 3",
    ]
    assert len(smtp.mails) == 1, [m.message["Subject"] for m in smtp.mails]
    mail = smtp.mails[0]
    assert mail.recipients == ["oncall@ops.test"]
    assert mail.message["Subject"] == "[autoplat] notifier.always-fails FAILED"
    text = mail.message.get_body(("plain",)).get_content()
    assert body["id"] in text and "source down" in text

    [req] = hook.requests
    assert verify("k3y", req.headers[TIMESTAMP_HEADER], req.body, req.headers[SIGNATURE_HEADER])
    payload = json.loads(req.body)
    assert payload["data"]["execution_id"] == body["id"] and payload["data"]["status"] == "FAILED"


async def test_success_notifies_on_success_channels_only(
    notify_settings, worker, client, module, operator_headers, smtp, hook, temporal_env
):
    body = await _run(
        client, operator_headers, "works", notifications={"on_failure": ["email"], "on_success": ["ops-hook"]}
    )
    assert body["status"] == "COMPLETED"
    await _closed(temporal_env, body["workflow_id"])
    assert smtp.mails == []
    [req] = hook.requests
    assert json.loads(req.body)["data"]["status"] == "COMPLETED"


async def test_unknown_channel_does_not_fail_the_run(
    notify_settings, worker, client, module, operator_headers, smtp, temporal_env
):
    body = await _run(client, operator_headers, "works", notifications={"on_success": ["nowhere", "email"]})
    assert body["status"] == "COMPLETED"
    await _closed(temporal_env, body["workflow_id"])
    # The unknown channel fails at once (not retried); the next channel is still notified.
    assert len(smtp.mails) == 1


async def test_ctx_notify_needs_the_service_in_the_manifest(
    notify_settings, worker, client, module, operator_headers, smtp
):
    body = await _run(client, operator_headers, "undeclared", retries=2)
    assert body["status"] == "FAILED" and body["attempt"] == 1  # not retried
    assert "ctx.notify needs 'notify' in the manifest's permissions.services" in body["error"]["message"]
    assert smtp.mails == []


async def test_timeout_notifies_on_timeout_channels_once(
    notify_settings, worker, client, module, operator_headers, smtp, hook, temporal_env
):
    body = await _run(
        client,
        operator_headers,
        "slow",
        timeout_seconds=2,
        retries=1,
        retry_backoff={"initial_interval_seconds": 0.1, "backoff_coefficient": 1},
        notifications={"on_timeout": ["email"], "on_failure": ["ops-hook"]},
    )
    assert body["status"] == "TIMED_OUT", body
    await _closed(temporal_env, body["workflow_id"])
    assert [m.message["Subject"] for m in smtp.mails] == ["[autoplat] notifier.slow TIMED_OUT"]
    assert hook.requests == []


async def test_a_waiting_caller_is_answered_while_notifications_are_still_being_sent(
    notify_settings, worker, client, module, operator_headers, hook, temporal_env
):
    import threading

    hook.hold = threading.Event()  # the webhook receiver does not answer until released
    try:
        r = await client.post(
            "/api/v1/jobs",
            json={
                "module": "notifier",
                "job_type": "works",
                "name": "works",
                "schedule": None,
                "notifications": {"on_success": ["ops-hook"]},
            },
            headers=operator_headers,
        )
        assert r.status_code == 201, r.text
        # A wait far beyond the test's own timeout: only an answer that does not wait for the
        # notification (held until released below) lets this test finish.
        r = await client.post(
            f"/api/v1/jobs/{r.json()['id']}/execute?wait=true&wait_timeout=3000", headers=operator_headers
        )
        body = r.json()
        assert r.status_code == 200 and body["status"] == "COMPLETED" and body["result"] == {"ok": True}
        # The run's row is final, but its workflow is still waiting on the webhook.
        desc = await temporal_env.client.get_workflow_handle(body["workflow_id"]).describe()
        assert desc.status == WorkflowExecutionStatus.RUNNING
    finally:
        hook.hold.set()
    await _closed(temporal_env, body["workflow_id"])
    assert len(hook.requests) == 1
