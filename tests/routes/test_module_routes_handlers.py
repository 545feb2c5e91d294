"""The example module's route handlers with the SDK harness (no platform): what module authors run."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import pytest

from autoplat import HttpRequest, JobError
from autoplat.testing import arun_step

EXAMPLE = Path(__file__).resolve().parents[2] / "example_modules" / "data_sync"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from data_sync import routes  # noqa: E402 - the module folder is the import root


async def test_hello_and_echo() -> None:
    hello = await arun_step(routes.hello, request=HttpRequest(method="GET", path="/hello", query={"name": "Ada"}))
    assert hello.result["message"] == "Hello, Ada!"
    datetime.fromisoformat(hello.result["timestamp"].replace("Z", "+00:00"))
    anonymous = await arun_step(routes.hello, request=HttpRequest(method="GET", path="/hello"))
    assert anonymous.result["message"] == "Hello, world!"
    echo = await arun_step(routes.echo, request=HttpRequest(method="POST", path="/echo", body={"a": [1, {"b": 2}]}))
    assert echo.result["echo"] == {"a": [1, {"b": 2}]}


async def test_webhook_emits_source_changed_and_refuses_non_objects() -> None:
    step = await arun_step(
        routes.source_webhook,
        request=HttpRequest(method="POST", path="/webhooks/source", body={"source": "crm", "changed": 2}),
    )
    assert step.result["accepted"] is True
    assert [e["name"] for e in step.events] == ["source.changed"]
    assert step.events[0]["payload"]["source"] == "crm" and step.events[0]["payload"]["changed"] == 2
    with pytest.raises(JobError):
        await arun_step(routes.source_webhook, request=HttpRequest(method="POST", path="/webhooks/source", body=[1]))
