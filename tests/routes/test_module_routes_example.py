"""The seed's route checks, on the example module, through the real API, Temporal and a worker.

hello / echo / status answer; an unknown route is 404, a known path with another method 405 with
``Allow``; a disabled module answers 503 and serves again once re-enabled; an unregistered module
is 404; every call is an execution with trigger ``http``. The public webhook is HMAC-verified.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType

from tests.conftest import eventually
from tests.routes.route_helpers import EXAMPLE, MODULES, deploy, signed_headers
from tests.services.helpers import http_receiver

BASE = "/api/v1/m/data-sync"
SECRET = "whsec-test-7f3a"


@pytest.fixture
async def example(worker: Any, client: httpx.AsyncClient, admin_headers: dict[str, str]) -> dict[str, Any]:
    return await deploy(client, admin_headers, EXAMPLE)


async def test_hello_greets_the_default_and_the_given_name(example, client, viewer_headers):
    r = await client.get(f"{BASE}/hello", headers=viewer_headers)
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "Hello, world!"
    datetime.fromisoformat(r.json()["timestamp"].replace("Z", "+00:00"))
    r = await client.get(f"{BASE}/hello", params={"name": "Ada"}, headers=viewer_headers)
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "Hello, Ada!"
    assert r.headers["X-Execution-ID"]


async def test_echo_returns_the_nested_body(example, client, operator_headers):
    body = {"a": {"b": [1, 2, {"c": None, "d": "é"}]}, "n": 1.5, "ok": True}
    r = await client.post(f"{BASE}/echo", json=body, headers=operator_headers)
    assert r.status_code == 200, r.text
    assert r.json()["echo"] == body


async def test_status_reports_version_and_uptime(example, client, viewer_headers):
    r = await client.get(f"{BASE}/status", headers=viewer_headers)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["status"] == "ok" and data["module"] == "data-sync" and data["version"] == example["version"]
    assert isinstance(data["uptime_seconds"], float) and data["uptime_seconds"] >= 0
    assert r.headers["Cache-Control"] == "no-store"  # set by the handler through ctx.response


async def test_unknown_route_is_404_and_unregistered_module_is_404(example, client, viewer_headers):
    r = await client.get(f"{BASE}/nope", headers=viewer_headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/api/v1/m/no-such-module/hello", headers=viewer_headers)
    assert r.status_code == 404 and "not registered" in r.json()["error"]["message"]


async def test_wrong_method_is_405_with_allow(example, client, operator_headers):
    r = await client.delete(f"{BASE}/hello", headers=operator_headers)
    assert r.status_code == 405
    assert r.headers["Allow"] == "GET"
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = await client.get(f"{BASE}/echo", headers=operator_headers)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"


async def test_disable_answers_503_and_re_enable_serves_again(example, client, admin_headers, viewer_headers):
    assert (await client.get(f"{BASE}/hello", headers=viewer_headers)).status_code == 200
    r = await client.post(f"{MODULES}/data-sync/disable", headers=admin_headers)
    assert r.status_code == 200, r.text
    r = await client.get(f"{BASE}/hello", headers=viewer_headers)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["details"] == {"module": "data-sync", "status": "DISABLED"}
    r = await client.post(f"{MODULES}/data-sync/enable", headers=admin_headers)
    assert r.status_code == 200, r.text
    r = await client.get(f"{BASE}/hello", params={"name": "again"}, headers=viewer_headers)
    assert r.status_code == 200 and r.json()["message"] == "Hello, again!"


async def test_uninstalled_module_answers_503(example, client, admin_headers, viewer_headers):
    assert (await client.post(f"{MODULES}/data-sync/disable", headers=admin_headers)).status_code == 200
    assert (await client.post(f"{MODULES}/data-sync/uninstall", headers=admin_headers)).status_code == 200
    r = await client.get(f"{BASE}/status", headers=viewer_headers)
    assert r.status_code == 503 and r.json()["error"]["details"]["status"] == "REGISTERED"


async def test_routes_need_a_token_and_the_route_role(example, client, viewer_headers):
    r = await client.get(f"{BASE}/hello")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    r = await client.get(f"{BASE}/hello", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401
    # POST defaults to operator: a viewer may read (GET) but not call POST /echo.
    r = await client.post(f"{BASE}/echo", json={"x": 1}, headers=viewer_headers)
    assert r.status_code == 403 and r.json()["error"]["details"] == {"required_role": "operator"}


async def test_query_validation_is_a_422(example, client, viewer_headers):
    r = await client.get(f"{BASE}/hello", params={"name": "x" * 101}, headers=viewer_headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["loc"] == ["query", "name"]
    r = await client.get(f"{BASE}/hello", params={"unexpected": "1"}, headers=viewer_headers)
    assert r.status_code == 422


async def test_every_call_is_an_http_execution(example, client, viewer_headers, temporal_env):
    r = await client.get(f"{BASE}/hello", params={"name": "mirror"}, headers=viewer_headers)
    execution_id = r.headers["X-Execution-ID"]
    r = await client.get(f"/api/v1/executions/{execution_id}", headers=viewer_headers)
    assert r.status_code == 200, r.text
    row = r.json()
    assert row["trigger"] == "http" and row["status"] == "COMPLETED"
    assert row["module"] == "data-sync" and row["job_type"] == "hello" and row["job_id"] is None
    assert row["workflow_id"] == f"call-{execution_id}" and row["temporal_url"]
    assert row["module_version"] == example["version"] and row["started_at"] and row["duration_ms"] is not None
    assert [(s["name"], s["status"]) for s in row["steps"]] == [("hello", "COMPLETED")]
    # The call carried its plan: its step wrote the row at both ends (no local activity).
    history = await temporal_env.client.get_workflow_handle(row["workflow_id"]).fetch_history()
    assert not [e for e in history.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]
    r = await client.get("/api/v1/executions", params={"trigger": "http"}, headers=viewer_headers)
    assert execution_id in [e["id"] for e in r.json()["items"]]


# --- the public webhook ---------------------------------------------------------------------------


@pytest.fixture
def source() -> Iterator[str]:
    records = json.dumps({"items": [{"id": 1}, {"id": 2}]})
    with http_receiver(records=("application/json", records)) as receiver:
        yield f"{receiver.url}/records"


async def _set_secret(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    r = await client.put(
        f"{MODULES}/data-sync/config", json={"config": {"source_webhook_secret": SECRET}}, headers=headers
    )
    assert r.status_code == 200, r.text


async def test_signed_webhook_starts_the_sync_job(example, source, client, admin_headers, operator_headers):
    await _set_secret(client, admin_headers)
    # The configured sync job the listener starts (source.changed -> hourly-sync).
    r = await client.post(
        "/api/v1/jobs",
        json={
            "module": "data-sync",
            "job_type": "hourly-sync",
            "name": "sync from webhook",
            "schedule": None,
            "config": {"source_url": source},
        },
        headers=operator_headers,
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    body = json.dumps({"source": "crm", "changed": 3}).encode()
    r = await client.post(f"{BASE}/webhooks/source", content=body, headers=signed_headers(SECRET, body))
    assert r.status_code == 202, r.text
    call = r.json()
    assert r.headers["Location"] == f"/api/v1/executions/{call['execution_id']}" == call["location"]

    async def done(execution_id: str) -> dict[str, Any] | None:
        r = await client.get(f"/api/v1/executions/{execution_id}", headers=operator_headers)
        row: dict[str, Any] = r.json()
        return row if row["status"] not in ("PENDING", "RUNNING") else None

    webhook = await eventually(lambda: done(call["execution_id"]), what="the webhook execution")
    assert webhook["status"] == "COMPLETED" and webhook["trigger"] == "http"

    async def sync_done() -> list[dict[str, Any]]:
        r = await client.get(f"/api/v1/jobs/{job_id}/executions", headers=operator_headers)
        return [e for e in r.json()["items"] if e["trigger"] == "event" and e["status"] == "COMPLETED"]

    runs = await eventually(sync_done, what="the sync started by source.changed")
    assert runs[0]["job_type"] == "hourly-sync" and runs[0]["result"]["records"] == 2


async def test_webhook_refuses_bad_old_and_replayed_signatures(example, client, admin_headers):
    await _set_secret(client, admin_headers)
    url = f"{BASE}/webhooks/source"
    body = json.dumps({"source": "crm"}).encode()

    r = await client.post(url, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and "signature" in r.json()["error"]["message"]

    r = await client.post(url, content=body, headers=signed_headers("wrong-secret", body))
    assert r.status_code == 401 and r.json()["error"]["message"] == "the request signature does not match"

    tampered = signed_headers(SECRET, body)
    r = await client.post(url, content=json.dumps({"source": "evil"}).encode(), headers=tampered)
    assert r.status_code == 401

    old = signed_headers(SECRET, body, timestamp=int(datetime.now().timestamp()) - 3600)
    r = await client.post(url, content=body, headers=old)
    assert r.status_code == 401 and "replayed or delayed" in r.json()["error"]["message"]

    fresh = signed_headers(SECRET, body)
    first = await client.post(url, content=body, headers=fresh)
    assert first.status_code == 202, first.text
    again = await client.post(url, content=body, headers=fresh)
    assert again.status_code == 401 and "replay" in again.json()["error"]["message"]

    invalid = json.dumps({"changed": -1}).encode()
    r = await client.post(url, content=invalid, headers=signed_headers(SECRET, invalid))
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == ["body", "changed"]

    # Malformed headers are a 401, never a 500 (non-ASCII digits and non-hex signatures).
    good = signed_headers(SECRET, body)
    for bad in ({"X-Timestamp": "¹²³"}, {"X-Signature": "sha256=é"}, {"X-Signature": "zz"}):
        headers = {k: v.encode("utf-8") for k, v in {**good, **bad}.items()}  # raw bytes on the wire
        r = await client.post(url, content=body, headers=headers)
        assert r.status_code == 401, r.text


async def test_an_encoded_slash_cannot_shift_the_route_path(example, client, viewer_headers):
    r = await client.get("/api/v1/m/data-sync%2Fx/hello", headers=viewer_headers)
    assert r.status_code == 404, r.text


async def test_webhook_without_a_configured_secret_is_503(example, client):
    body = b"{}"
    r = await client.post(f"{BASE}/webhooks/source", content=body, headers=signed_headers("anything", body))
    assert r.status_code == 503 and "secret is not configured" in r.json()["error"]["message"]
