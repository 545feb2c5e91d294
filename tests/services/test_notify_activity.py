"""The autoplat.notify activity on its own: channel lookup, errors, and no second send on retry."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.services.notify import NotifyActivities
from activities.types import NotifyInput
from registry.db import unit_of_work
from registry.models import Module
from registry.settings import Settings
from tests.services.helpers import http_receiver, smtp_server


def activity_env(workflow_id: str, activity_id: str = "1", attempt: int = 1) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = replace(
        env.info, workflow_id=workflow_id, workflow_run_id="run-1", activity_id=activity_id, attempt=attempt
    )
    return env


@pytest.fixture
def make_activities(sessions: Any) -> Any:
    made: list[NotifyActivities] = []

    def make(**kw: Any) -> NotifyActivities:
        settings = Settings(dev_mode=True, http_allow_private="loopback", smtp_tls="none", **kw)
        acts = NotifyActivities(settings, sessions)
        made.append(acts)
        return acts

    yield make


async def test_a_retry_after_a_successful_send_does_not_send_again(make_activities):
    with smtp_server() as smtp:
        acts = make_activities(smtp_host=smtp.host, smtp_port=smtp.port, notify_email_to=["a@example.com"])
        inp = NotifyInput(channel="email", subject="[autoplat] m.j FAILED", body="failed", data={"status": "FAILED"})
        wf = f"wf-{uuid.uuid4().hex}"
        first = await activity_env(wf, attempt=1).run(acts.notify, inp)
        again = await activity_env(wf, attempt=2).run(acts.notify, inp)  # the same activity, retried
        assert again == first and len(smtp.mails) == 1
        assert smtp.mails[0].message["Message-ID"] == first["message_id"]
        # Another notification (another activity) is a new send with its own id.
        other = await activity_env(wf, activity_id="2").run(acts.notify, inp)
        assert len(smtp.mails) == 2 and other["message_id"] != first["message_id"]
        await acts.close()


async def test_retried_webhook_keeps_its_delivery_id(make_activities):
    with http_receiver() as hook:
        hook.statuses = [503, 200]
        acts = make_activities(notify_channels={"h": {"type": "webhook", "url": hook.url}})
        inp = NotifyInput(channel="h", subject="s", body="b")
        wf = f"wf-{uuid.uuid4().hex}"
        with pytest.raises(ApplicationError) as err:
            await activity_env(wf, attempt=1).run(acts.notify, inp)
        assert err.value.type == "NotifyError" and not err.value.non_retryable
        await activity_env(wf, attempt=2).run(acts.notify, inp)
        first, second = hook.requests
        assert first.headers["X-Autoplat-Delivery"] == second.headers["X-Autoplat-Delivery"]
        await acts.close()


async def test_unknown_channel_is_not_retryable(make_activities):
    acts = make_activities()
    with pytest.raises(ApplicationError, match="unknown notification channel 'nope'") as err:
        await activity_env("wf-x").run(acts.notify, NotifyInput(channel="nope", subject="s", body="b"))
    assert err.value.non_retryable
    await acts.close()


async def test_module_config_channels_are_used_for_that_module_only(make_activities, sessions):
    from registry.services.common import Actor
    from registry.services.modules import update_config

    with http_receiver() as hook:
        acts = make_activities(secret_key="k" * 8 + uuid.uuid4().hex)
        schema = {"type": "object", "properties": {"notification_channels": {"type": "object", "secret": True}}}
        async with unit_of_work(sessions) as session:
            session.add(
                Module(
                    name="chan-mod",
                    display_name="c",
                    version="1.0.0",
                    manifest={"name": "chan-mod", "version": "1.0.0", "config": schema},
                    status="ENABLED",
                )
            )
        async with unit_of_work(sessions) as session:
            module = await update_config(
                session=session,
                actor=Actor(user_id=None, email="admin@example.com", role="admin"),
                secret_key=acts.settings.encryption_key(),
                name="chan-mod",
                config={"notification_channels": {"team": {"type": "webhook", "url": hook.url}}},
            )
            # Stored encrypted; the clear column holds only the mask.
            assert module.config["notification_channels"] == "********"
            assert hook.url not in str(module.secrets)
        inp = NotifyInput(channel="team", subject="s", body="b", module="chan-mod")
        result = await activity_env(f"wf-{uuid.uuid4().hex}").run(acts.notify, inp)
        assert result["status"] == 200 and len(hook.requests) == 1
        with pytest.raises(ApplicationError, match="unknown notification channel"):
            await activity_env(f"wf-{uuid.uuid4().hex}").run(acts.notify, replace(inp, module="other-mod"))
        await acts.close()
