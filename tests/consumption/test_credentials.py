"""Endpoint credentials since 0.3: sealed with the platform's module vault (no ``credentials_key``),
their ``password`` / ``token`` sealed by the platform before a route's run starts (never in clear in
Temporal history), and the documents 0.2 sealed with ``credentials_key`` still read after an upgrade."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from consumption_monitor import routes
from consumption_monitor.simulator import PASSWORD, TOKEN, USERNAME
from cryptography.fernet import Fernet

from tests.consumption.helpers import KEY, MODULE, call, json_endpoint, memory
from tests.routes.route_helpers import MODULES, deploy

BASE = "/api/v1/m/consumption-monitor"


def _sealed_by_0_2(credentials: dict[str, str]) -> dict[str, str]:
    """A ``cred:<id>`` document as 0.2 wrote it: Fernet, the key the SHA-256 of ``credentials_key``."""
    fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(KEY.encode("utf-8")).digest()))
    return {"token": fernet.encrypt(json.dumps(credentials, sort_keys=True).encode("utf-8")).decode("ascii")}


async def test_credentials_of_0_2_still_read_after_the_upgrade(sim):
    services = memory()
    body = json_endpoint(f"{sim.url}/basic/rack-a.json", auth={"type": "basic"})
    body["credentials"] = {"username": USERNAME, "password": PASSWORD}
    status, created, _ = await call(services, routes.create_endpoint, "POST", "/endpoints", body=body)
    assert status == 201, created
    eid = created["id"]
    # What 0.2 left in storage for this endpoint.
    await services.storage.put(f"cred:{eid}", _sealed_by_0_2({"username": USERNAME, "password": PASSWORD}))

    legacy = {"credentials_key": KEY}
    test = (routes.test_endpoint, "POST", f"/endpoints/{eid}/test")
    status, tested, logs = await call(services, *test, params={"endpoint_id": eid}, module_config=legacy)
    assert status == 200 and tested["ok"] is True, tested

    # Without the legacy key, a readable error (and nothing of the credentials).
    status, tested, logs = await call(services, *test, params={"endpoint_id": eid})
    assert tested["ok"] is False and "credentials_key" in tested["error"], tested
    assert PASSWORD not in json.dumps([tested, logs])

    # Credentials set again are sealed with the vault; the legacy key is no longer needed.
    status, patched, _ = await call(
        services, routes.update_endpoint, "PATCH", f"/endpoints/{eid}", params={"endpoint_id": eid},
        body={"credentials": {"username": USERNAME, "password": PASSWORD}}, module_config=legacy,
    )  # fmt: skip
    assert status == 200 and patched["credentials_set"] is True, patched
    doc = await services.storage.get(f"cred:{eid}")
    assert set(doc) == {"sealed"} and doc["sealed"].startswith("apv1:")
    status, tested, _ = await call(services, *test, params={"endpoint_id": eid})
    assert status == 200 and tested["ok"] is True, tested


def _payload_texts(node: Any) -> list[str]:
    """Every payload of a history (``to_json_dict``: ``data`` in base64), decoded."""
    if isinstance(node, dict):
        data = node.get("data") if "metadata" in node else None
        found = [base64.b64decode(data).decode("utf-8", "replace")] if isinstance(data, str) else []
        return found + [t for value in node.values() for t in _payload_texts(value)]
    if isinstance(node, list):
        return [t for value in node for t in _payload_texts(value)]
    return []


async def test_credentials_are_sealed_before_the_run_and_never_in_its_history(
    worker: Any, client: Any, sim: Any, admin_headers: Any, operator_headers: Any, temporal_env: Any
) -> None:
    await deploy(client, admin_headers, MODULE)
    runs = []
    body = json_endpoint(f"{sim.url}/bearer/rack-a.json", auth={"type": "bearer"}, credentials={"token": TOKEN})
    r = await client.post(f"{BASE}/endpoints/test", json=body, headers=operator_headers)
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    runs.append(r.headers["X-Execution-ID"])
    r = await client.post(f"{BASE}/endpoints", json=body, headers=operator_headers)
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    runs.append(r.headers["X-Execution-ID"])
    basic = {"auth": {"type": "basic"}, "url": f"{sim.url}/basic/rack-a.json"}
    basic["credentials"] = {"username": USERNAME, "password": PASSWORD}
    r = await client.patch(f"{BASE}/endpoints/{eid}", json=basic, headers=operator_headers)
    assert r.status_code == 200 and r.json()["credentials_set"] is True, r.text
    runs.append(r.headers["X-Execution-ID"])
    # Read with the credentials the vault sealed (in a confined handler process).
    r = await client.post(f"{BASE}/endpoints/{eid}/test", headers=operator_headers)
    assert r.status_code == 200 and r.json()["ok"] is True, r.text

    for execution_id in runs:
        execution = (await client.get(f"/api/v1/executions/{execution_id}", headers=operator_headers)).json()
        history = await temporal_env.client.get_workflow_handle(execution["workflow_id"]).fetch_history()
        payloads = "\n".join(_payload_texts(history.to_json_dict()))
        assert '"credentials"' in payloads and "apv1:" in payloads  # the body is there, sealed
        assert TOKEN not in payloads and PASSWORD not in payloads
        assert TOKEN not in json.dumps(execution) and PASSWORD not in json.dumps(execution)
    assert USERNAME in payloads  # the PATCH's username is not secret: found, as a password would be
    storage = await client.get(f"{MODULES}/consumption-monitor/storage", params={"limit": 100}, headers=admin_headers)
    assert storage.status_code == 200, storage.text
    [cred] = [d for d in storage.json()["items"] if d["key"] == f"cred:{eid}"]
    assert cred["value"]["sealed"].startswith("apv1:") and PASSWORD not in storage.text
