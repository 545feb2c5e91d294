"""`autoplat worker` as operators run it: its --metrics-port serves the platform's metrics and the
Temporal SDK's (the runtime set up before the client connects), and AUTOPLAT_LOG_FORMAT=json makes
every line it logs one JSON object."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import api_client, eventually, free_port
from tests.jobs.helpers import put_module, write_module

ROOT = Path(__file__).resolve().parents[2]


async def test_the_worker_command_serves_metrics_and_logs_json(
    temporal_settings, temporal_env, engine, sessions, tmp_path, operator_headers
):
    settings = temporal_settings
    module = f"wp{uuid.uuid4().hex[:6]}"
    code = "def hello(ctx):\n    ctx.logger.info('hello')\n    return 1\n"
    folder = write_module(
        tmp_path, name=module, code=code, jobs=[{"name": "hello", "description": "ok", "handler": "hello"}]
    )
    await put_module(sessions, settings.state_dir, folder)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AUTOPLAT_DEV_MODE": "false",
        "AUTOPLAT_DATABASE_URL": settings.effective_database_url,
        "AUTOPLAT_REDIS_URL": settings.redis_url,
        "AUTOPLAT_REDIS_PREFIX": settings.redis_prefix,
        "AUTOPLAT_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "AUTOPLAT_STATE_DIR": str(settings.state_dir),
        "AUTOPLAT_TEMPORAL_ADDRESS": settings.temporal_address,
        "AUTOPLAT_TASK_QUEUE": settings.task_queue,
        "AUTOPLAT_MAINTENANCE_SCHEDULE": "false",
        "AUTOPLAT_HANDLER_POOL_SIZE": "1",
        "AUTOPLAT_LOG_FORMAT": "json",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoplat.cli", "worker", "--metrics-port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        async with httpx.AsyncClient(timeout=10) as http:

            async def polling() -> bool:
                assert proc.poll() is None, log.read_text()[-2000:]
                try:
                    r = await http.get(url)
                except httpx.HTTPError:
                    return False
                return "temporal_num_pollers" in r.text

            await eventually(polling, timeout=60, what="the worker's metrics port with Temporal's pollers")
            async with api_client(settings) as api:
                r = await api.post(
                    "/api/v1/jobs",
                    json={"module": module, "job_type": "hello", "name": "hello", "schedule": None},
                    headers=operator_headers,
                )
                assert r.status_code == 201, r.text
                r = await api.post(f"/api/v1/jobs/{r.json()['id']}/execute?wait=true", headers=operator_headers)
                assert r.status_code == 200 and r.json()["status"] == "COMPLETED", r.text
                execution_id = r.json()["id"]
            text = (await http.get(url)).text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    found: dict[tuple[str, frozenset[tuple[str, str]]], Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    finished = {"module": module, "job_type": "hello", "trigger": "manual", "status": "COMPLETED"}
    assert found[("autoplat_runs_finished_total", frozenset(finished.items()))] == 1
    assert ("autoplat_db_pool_in_use", frozenset({("role", "worker")})) in found
    slots = {dict(labels).get("worker_type") for name, labels in found if name == "temporal_worker_task_slots_used"}
    assert {"WorkflowWorker", "ActivityWorker"} <= slots, slots

    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(r["message"].startswith("worker polling task queue") for r in records), records[:5]
    assert any(r["message"].startswith("worker metrics on") for r in records), records[:5]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert not any("traceback" in r for r in records), [r for r in records if "traceback" in r]
    # The run's lines stay on the execution (the handler ran in a handler process).
    async with api_client(settings) as api:
        r = await api.get(f"/api/v1/executions/{execution_id}/logs", headers=operator_headers)
    assert [e["message"] for e in r.json()["entries"] if e.get("source") != "platform"] == ["hello"], r.text
