"""End to end on the platform: the module registered, installed and enabled through the API (its
collect job made by ``createJob``), endpoints created through its routes, the collection job run on
a real worker (confined handler process, registry storage and series), the live route answering
what it wrote; credentials neither answered nor logged anywhere."""

from __future__ import annotations

import json
from typing import Any

from consumption_monitor.simulator import TOKEN

from tests.conftest import eventually
from tests.consumption.helpers import MODULE, json_endpoint
from tests.routes.route_helpers import MODULES, deploy

BASE = "/api/v1/m/consumption-monitor"


async def test_collection_on_the_platform_feeds_the_live_route(
    worker: Any, client: Any, sim: Any, admin_headers: Any, operator_headers: Any, viewer_headers: Any
) -> None:
    await deploy(client, admin_headers, MODULE)
    # No credentials_key (0.3 seals credentials with the platform's module vault).
    r = await client.put(
        f"{MODULES}/consumption-monitor/config", json={"config": {"failure_threshold": 1}}, headers=admin_headers
    )
    assert r.status_code == 200, r.text

    bodies = [
        json_endpoint(f"{sim.url}/bearer/rack-a.json", auth={"type": "bearer"}, credentials={"token": TOKEN}),
        {
            **json_endpoint(f"{sim.url}/open/rack-b/metrics", name="rack B", client="beta"),
            "protocol": "prometheus",
            "fields": {
                "total_kwh": {"metric": "pdu_energy_kwh_total", "labels": {"outlet": "1"}},
                "power_w": {"metric": "pdu_power_watts"},
            },
        },
        json_endpoint(f"{sim.url}/open/broken.json", name="broken meter"),
    ]
    ids = []
    for body in bodies:
        r = await client.post(f"{BASE}/endpoints", json=body, headers=operator_headers)
        assert r.status_code == 201, r.text
        assert TOKEN not in r.text
        ids.append(r.json()["id"])
    r = await client.post(f"{BASE}/endpoints", json={"name": "x"}, headers=operator_headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text
    r = await client.post(f"{BASE}/endpoints", json=bodies[1], headers=viewer_headers)
    assert r.status_code == 403  # writing endpoints is for operators

    # The job made by createJob, run now (its schedule runs it every minute).
    r = await client.get("/api/v1/jobs", params={"module": "consumption-monitor"}, headers=admin_headers)
    [job] = [j for j in r.json()["items"] if j["job_type"] == "collect"]
    assert job["schedule"] == "* * * * *", job
    r = await client.post(f"/api/v1/jobs/{job['id']}/execute?wait=true", headers=operator_headers)
    assert r.status_code in (200, 201), r.text
    execution = r.json()
    assert execution["status"] == "COMPLETED", execution
    result = execution["result"]
    assert (result["read"], result["failed"]) == (2, 1), result
    assert result["errors"][ids[2]] == f"{sim.url}/open/broken.json answered 500 (after 2 attempts)"

    # A failing meter is an incident of the module (threshold 1 here), labelled with the endpoint.
    async def incident() -> Any:
        r = await client.get("/api/v1/alerts/incidents", params={"label": f"endpoint:{ids[2]}"}, headers=viewer_headers)
        return r.json()["items"]

    [opened] = await eventually(incident, what="the incident of the broken meter")
    assert opened["status"] == "firing" and opened["title"] == "Meter broken meter cannot be read", opened

    r = await client.get(f"{BASE}/live", headers=viewer_headers)
    assert r.status_code == 200, r.text
    live = {item["id"]: item for item in r.json()["items"]}
    assert live[ids[0]]["status"] == "online" and live[ids[0]]["values"]["power_w"] == 2150.0
    assert live[ids[0]]["values"]["voltage_v"] == 230.4 and live[ids[0]]["values"]["total_kwh"] >= 1234.75
    assert live[ids[1]]["status"] == "online" and live[ids[1]]["values"]["power_w"] == 640.0
    assert live[ids[2]]["status"] == "error" and "answered 500" in live[ids[2]]["last_error"]
    assert r.json()["summary"]["power_w"] == 2790.0

    # The platform's own series API sees the module's readings.
    r = await client.get(
        "/api/v1/series/query",
        params={"module": "consumption-monitor", "series": "power", "latest": "true", "label": f"endpoint:{ids[1]}"},
        headers=viewer_headers,
    )
    assert r.status_code == 200 and r.json()["groups"][0]["labels"] == {"endpoint": ids[1], "client": "beta"}, r.text

    # The token is nowhere: not in answers, not in the run's logs, not in module storage as text.
    r = await client.get(f"{BASE}/endpoints", headers=viewer_headers)
    assert r.status_code == 200 and [e["credentials_set"] for e in r.json()["items"]].count(True) == 1
    logs = await client.get(f"/api/v1/executions/{execution['id']}/logs", headers=admin_headers)
    storage = await client.get(f"{MODULES}/consumption-monitor/storage", params={"limit": 100}, headers=admin_headers)
    assert storage.status_code == 200 and any(d["key"].startswith("cred:") for d in storage.json()["items"])
    for text in (r.text, logs.text, storage.text, json.dumps(execution)):
        assert TOKEN not in text
    assert any("rack A:" in e["message"] for e in logs.json()["entries"])

    # Billing needs an operator; the CSV comes back as a download.
    r = await client.get(f"{BASE}/reports/monthly", params={"format": "csv"}, headers=viewer_headers)
    assert r.status_code == 403
    r = await client.get(f"{BASE}/reports/monthly", params={"format": "csv", "by": "client"}, headers=operator_headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    assert r.text.splitlines()[0] == "month,client,endpoints,kwh"
    r = await client.get(f"{BASE}/reports/monthly", params={"month": "2026-13"}, headers=operator_headers)
    assert r.status_code == 422

    # The rules the module ships were made when it was enabled, and the docs' own rule is accepted.
    r = await client.get("/api/v1/alerts/rules", params={"module": "consumption-monitor"}, headers=viewer_headers)
    assert r.status_code == 200, r.text
    shipped = {rule["name"]: rule for rule in r.json()["items"]}
    assert sorted(shipped) == [
        "consumption-monitor: endpoint offline",
        "consumption-monitor: endpoint over 12 MWh in 30 days",
        "consumption-monitor: power above 3 kW",
    ], shipped
    assert {(rule["origin"], rule["modified"]) for rule in shipped.values()} == {("module", False)}
    docs = (MODULE.parents[1] / "docs" / "consumption-monitor.md").read_text()
    rules = [json.loads(block.split("```json\n", 1)[1].split("```", 1)[0]) for block in docs.split("<!-- rule -->")[1:]]
    assert len(rules) == 1
    for rule in rules:
        r = await client.post("/api/v1/alerts/rules", json=rule, headers=operator_headers)
        assert r.status_code == 201, (rule["name"], r.text)
