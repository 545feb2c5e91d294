"""JSON logs: one object per line naming the run; a handler failure is one line, not a traceback."""

from __future__ import annotations

import io
import json
import logging
import uuid
from typing import Any

import pytest

from registry import logformat
from tests.conftest import api_client, running_worker
from tests.jobs.helpers import put_module, write_module

CODE = """
from autoplat import JobError

def boom(ctx):
    raise JobError("bad input")

def crash(ctx):
    return {}["missing"]
"""

JOBS = [
    {"name": "boom", "description": "fails", "handler": "boom"},
    {"name": "crash", "description": "raises KeyError", "handler": "crash", "retries": {"maxAttempts": 1}},
]


@pytest.fixture
def captured() -> Any:
    stream = io.StringIO()
    handler = logformat.stream_handler("json", stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_a_handler_failure_is_one_json_line_naming_the_run(
    temporal_settings, temporal_env, engine, sessions, tmp_path, operator_headers, captured
):
    settings = temporal_settings
    module = f"logs{uuid.uuid4().hex[:6]}"
    await put_module(
        sessions, settings.state_dir, write_module(tmp_path, name=module, code=CODE, jobs=JOBS, package=module)
    )
    runs = {}
    async with api_client(settings) as api, running_worker(settings, temporal_env.client):
        for job_type in ("boom", "crash"):
            r = await api.post(
                "/api/v1/jobs",
                json={"module": module, "job_type": job_type, "name": job_type, "schedule": None},
                headers=operator_headers,
            )
            assert r.status_code == 201, r.text
            r = await api.post(f"/api/v1/jobs/{r.json()['id']}/execute?wait=true", headers=operator_headers)
            assert r.status_code == 200 and r.json()["status"] == "FAILED", r.text
            runs[job_type] = r.json()["id"]

    lines = [json.loads(line) for line in captured.getvalue().splitlines()]  # every line is one JSON object
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    failures = [line for line in lines if "Completing activity as failed" in line["message"]]
    by_run = {line.get("execution_id"): line for line in failures}
    assert len(failures) == 2 and set(by_run) == set(runs.values()), failures
    for job_type, execution_id in runs.items():
        line = by_run[execution_id]
        assert line["module"] == module and line["job_type"] == job_type and line["level"] == "WARNING"
        assert "traceback" not in line and "\n" not in line["message"]
    assert "JobError: bad input" in by_run[runs["boom"]]["message"]
    assert "KeyError" in by_run[runs["crash"]]["message"]
    # Nothing else of these runs logged a traceback either.
    assert not [line for line in lines if "traceback" in line and module in json.dumps(line)]


def test_json_lines_carry_bound_fields_and_unexpected_tracebacks():
    stream = io.StringIO()
    logger = logging.getLogger("tests.observability.json")
    logger.propagate = False
    logger.addHandler(logformat.stream_handler("json", stream))
    logger.setLevel(logging.INFO)
    token = logformat.bind(execution_id="e-1", module="m", request_id=None)
    try:
        logger.info("hello %s", "world")
        try:
            raise ValueError("unexpected")
        except ValueError:
            logger.exception("failed")
    finally:
        logformat.unbind(token)
    logger.info("after")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "hello world" and first["execution_id"] == "e-1" and first["module"] == "m"
    assert "request_id" not in first
    assert second["error"] == "ValueError: unexpected" and "Traceback" in second["traceback"]
    assert "execution_id" not in third
