"""Endpoint routes through the SDK harness: validation, write-only sealed credentials, every protocol
and auth variant read from the meter simulator, and the readable errors of bad meters."""

from __future__ import annotations

import json
from typing import Any

from consumption_monitor import routes
from consumption_monitor.simulator import API_KEY, PASSWORD, TOKEN, USERNAME

from autoplat.testing import arun_job
from tests.consumption.helpers import CONFIG, MODULE, call, json_endpoint, memory


async def _create(services: Any, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    status, answer, _ = await call(services, routes.create_endpoint, "POST", "/endpoints", body=body, **kw)
    assert status == 201, answer
    return dict(answer)


async def test_crud_keeps_credentials_sealed_and_write_only(sim):
    services = memory()
    body = json_endpoint(f"{sim.url}/basic/rack-a.json", auth={"type": "basic"})
    body["credentials"] = {"username": USERNAME, "password": PASSWORD}
    status, created, logs = await call(services, routes.create_endpoint, "POST", "/endpoints", body=body)
    assert status == 201, created
    eid = created["id"]
    assert created["credentials_set"] is True and "credentials" not in created
    assert created["auth"] == {"type": "basic"} and created["health"]["status"] == "pending"
    # Stored: the endpoint without secrets, the credentials as a token only the module's vault opens.
    stored = json.dumps([(d.key, d.value) for d in await services.storage.query("", limit=100)])
    endpoint_doc = await services.storage.get(f"endpoint:{eid}")
    sealed = await services.storage.get(f"cred:{eid}")
    assert PASSWORD not in json.dumps(endpoint_doc) and sealed["sealed"].startswith("apv1:")
    assert await services.vault.open(sealed["sealed"]) == {"username": USERNAME, "password": PASSWORD}
    assert PASSWORD not in stored

    # No route answers them; a PATCH without credentials keeps them, and the endpoint still reads.
    for handler, method, path in [
        (routes.get_endpoint, "GET", f"/endpoints/{eid}"),
        (routes.list_endpoints, "GET", "/endpoints"),
        (routes.test_endpoint, "POST", f"/endpoints/{eid}/test"),
    ]:
        status, answer, logs = await call(services, handler, method, path, params={"endpoint_id": eid})
        assert status == 200, answer
        assert PASSWORD not in json.dumps(answer) and PASSWORD not in json.dumps(logs)
    status, patched, _ = await call(
        services, routes.update_endpoint, "PATCH", f"/endpoints/{eid}", params={"endpoint_id": eid},
        body={"name": "rack A1", "power_threshold_w": 3000},
    )  # fmt: skip
    assert status == 200 and patched["name"] == "rack A1" and patched["credentials_set"] is True, patched
    status, tested, _ = await call(services, routes.test_endpoint, "POST", "/t", params={"endpoint_id": eid})
    assert tested["ok"] is True and tested["values"]["total_kwh"] == 1235.0, tested  # the second reading
    assert tested["values"]["voltage_v"] == 230.4  # "230,4 V": the regex's group, comma decimals

    # Wrong credentials: a readable error that names neither of them.
    status, _, _ = await call(
        services, routes.update_endpoint, "PATCH", "/x", params={"endpoint_id": eid},
        body={"credentials": {"username": USERNAME, "password": "guessed-wrong"}},
    )  # fmt: skip
    status, tested, logs = await call(services, routes.test_endpoint, "POST", "/t", params={"endpoint_id": eid})
    assert tested == {"ok": False, "error": f"{sim.url}/basic/rack-a.json refused the credentials (401)"}
    assert "guessed-wrong" not in json.dumps(logs)

    # Delete: 204, then 404 with the platform's error body; the sealed credentials are gone too.
    status, answer, _ = await call(services, routes.delete_endpoint, "DELETE", "/x", params={"endpoint_id": eid})
    assert status == 204 and answer is None
    assert await services.storage.get(f"cred:{eid}") is None
    status, answer, _ = await call(services, routes.get_endpoint, "GET", "/x", params={"endpoint_id": eid})
    assert status == 404 and answer["error"]["code"] == "not_found"


async def test_bad_endpoints_are_422s_naming_the_field_and_nothing_is_stored(sim):
    services = memory()
    good = json_endpoint(f"{sim.url}/open/rack-a.json")
    cases: list[tuple[dict[str, Any], list[str], str]] = [
        ({**good, "protocol": "snmp"}, ["body", "protocol"], "must be one of json, prometheus, html"),
        ({**good, "url": "ftp://meter/x"}, ["body", "url"], "http(s) URL"),
        ({**good, "url": "http://admin:pw@127.0.0.1/x"}, ["body", "url"], "must not carry credentials"),
        (
            {**good, "fields": {"total_kwh": {"path": "$.x", "regex": "[0-9]+ kWh"}}},
            ["body", "fields", "total_kwh", "regex"],
            "needs a capture group",
        ),
        (
            {**good, "fields": {"total_kwh": {"path": "$.x", "regex": "(["}}},
            ["body", "fields", "total_kwh", "regex"],
            "does not compile",
        ),
        ({**good, "fields": {"energy": {"path": "$.x"}}}, ["body", "fields", "energy"], "is not a field"),
        ({**good, "fields": {}}, ["body", "fields"], "at least one field"),
        ({**good, "steps": [{"action": "click", "selector": "#x"}]}, ["body", "steps"], "for protocol html"),
        ({**good, "auth": {"type": "form", "steps": []}}, ["body", "auth", "type"], "needs protocol html"),
        ({**good, "auth": {"type": "bearer"}}, ["body", "credentials"], "needs token"),
        ({**good, "auth": {"type": "basic", "password": "x"}}, ["body", "auth"], "credentials go in 'credentials'"),
        ({**good, "poll_interval_seconds": 5}, ["body", "poll_interval_seconds"], "from 60 to 86400"),
        ({**good, "colour": "red"}, ["body"], "unknown fields: colour"),
        (
            {**good, "protocol": "html", "fields": {"power_w": {"selector": "#p"}}, "steps": [{"action": "hover"}]},
            ["body", "steps", 0, "action"],
            "goto, click, fill, wait, wait_for_selector, extract",
        ),
    ]
    for body, loc, needle in cases:
        status, answer, _ = await call(services, routes.create_endpoint, "POST", "/endpoints", body=body)
        assert status == 422, (body, answer)
        error = answer["error"]
        assert error["code"] == "validation_error"
        assert any(d["loc"] == loc and needle in d["msg"] for d in error["details"]), (loc, error)
    assert await services.storage.query("", limit=10) == []


async def test_each_protocol_and_auth_variant(sim):
    """JSON (none / basic / bearer / API-key header) and Prometheus (none / bearer) against the
    simulator, through the test route of a stored endpoint and the try-before-saving route."""
    services = memory()
    prom_fields = {
        "total_kwh": {"metric": "pdu_energy_kwh_total", "labels": {"outlet": "1"}},
        "power_w": {"metric": "pdu_power_watts"},
        "voltage_v": {"metric": "pdu_voltage_volts"},
    }
    variants = [
        (json_endpoint(f"{sim.url}/open/rack-b.json"), None),
        (
            json_endpoint(f"{sim.url}/basic/rack-b.json", auth={"type": "basic"}),
            {"username": USERNAME, "password": PASSWORD},
        ),
        (json_endpoint(f"{sim.url}/bearer/rack-b.json", auth={"type": "bearer"}), {"token": TOKEN}),
        (
            json_endpoint(f"{sim.url}/apikey/rack-b.json", auth={"type": "header", "header": "X-API-Key"}),
            {"token": API_KEY},
        ),
        ({**json_endpoint(f"{sim.url}/open/rack-b/metrics"), "protocol": "prometheus", "fields": prom_fields}, None),
        (
            {
                **json_endpoint(f"{sim.url}/bearer/rack-b/metrics"),
                "protocol": "prometheus",
                "fields": prom_fields,
                "auth": {"type": "bearer"},
            },
            {"token": TOKEN},
        ),
    ]
    seen: list[float] = []
    for body, credentials in variants:
        if credentials:
            body = {**body, "credentials": credentials}
        created = await _create(services, body)
        status, tested, logs = await call(
            services, routes.test_endpoint, "POST", "/t", params={"endpoint_id": created["id"]}
        )
        assert status == 200 and tested["ok"] is True, (body["url"], tested)
        values = tested["values"]
        assert values["power_w"] == 640.0 and values["voltage_v"] == 230.4, values
        seen.append(values["total_kwh"])
        for secret in (credentials or {}).values():
            assert secret not in json.dumps(logs) and secret not in json.dumps(tested)
    assert seen == [87.35, 87.45, 87.55, 87.65, 87.75, 87.85]  # one meter, each reading moves it on
    # Not stored: a configuration tried as is (the console's Test button before Save).
    body = {**variants[2][0], "credentials": {"token": "not-the-token"}}
    status, tried, logs = await call(services, routes.test_configuration, "POST", "/endpoints/test", body=body)
    assert tried == {"ok": False, "error": f"{sim.url}/bearer/rack-b.json refused the credentials (401)"}
    assert "not-the-token" not in json.dumps(logs)
    assert len(await services.storage.query("endpoint:", limit=100)) == len(variants)


async def test_html_login_form_steps_comma_decimals_and_a_selector_that_matches_nothing(sim, browser):
    """The login form and the scraper speak one step vocabulary; a selector matching nothing is a
    readable error with a screenshot."""
    services = memory()
    login = [
        {"action": "goto", "url": f"{sim.url}/login"},
        {"action": "fill", "selector": "#username", "value": "{{username}}"},
        {"action": "fill", "selector": "#password", "value": "{{password}}"},
        {"action": "click", "selector": "#submit"},
        {"action": "wait", "seconds": 0.1},
    ]
    body = {
        "name": "rack A (web UI)",
        "type": "pdu",
        "client": "acme",
        "url": f"{sim.url}/html/rack-a",
        "protocol": "html",
        "auth": {"type": "form", "steps": login},
        "credentials": {"username": USERNAME, "password": PASSWORD},
        # Steps run after the login, on the endpoint's page; fields are read from the last page.
        "steps": [
            {
                "action": "extract",
                "field": "total_kwh",
                "selector": "#kwh",
                "regex": r"([\d.,]+)\s*kWh",
                "decimal": "comma",
            },
            {"action": "extract", "field": "power_w", "selector": "#power"},
            {"action": "extract", "field": "voltage_v", "selector": "#voltage"},
            {"action": "click", "selector": "#details"},
            {"action": "wait_for_selector", "selector": "#current"},
        ],
        "fields": {"current_a": {"selector": "#current", "decimal": "comma"}, "power_factor": {"selector": "#pf"}},
    }
    created = await _create(services, body)
    status, tested, logs = await call(
        services, routes.test_endpoint, "POST", "/t", params={"endpoint_id": created["id"]}, browser=browser
    )
    assert tested["ok"] is True, tested
    assert tested["values"] == {
        "total_kwh": 1234.75,  # "1.234,75 kWh"
        "power_w": 2150.0,  # "2.150,0 W"
        "voltage_v": 230.4,
        "current_a": 9.332,  # "9,332 A" on the details page
        "power_factor": 0.97,
    }
    assert PASSWORD not in json.dumps(logs)

    broken = {**body, "name": "wrong selector", "fields": {"total_kwh": {"selector": "#energy-total"}}, "steps": []}
    created = await _create(services, broken)
    status, tested, _ = await call(
        services, routes.test_endpoint, "POST", "/t", params={"endpoint_id": created["id"]}, browser=browser
    )
    assert tested["ok"] is False
    assert tested["error"] == "total_kwh: selector '#energy-total' matched nothing on the page"
    shot = tested["screenshot"]
    assert shot["name"] == f"test-{created['id']}.png" and browser.saved[shot["name"]].startswith(b"\x89PNG")

    # A page that never loads: the endpoint's own timeout (no screenshot of a page still loading).
    never = {**body, "name": "never loads", "url": f"{sim.url}/slow", "auth": {"type": "none"}, "timeout_seconds": 1}
    never.pop("credentials")
    created = await _create(services, never)
    status, tested, _ = await call(
        services, routes.test_endpoint, "POST", "/t", params={"endpoint_id": created["id"]}, browser=browser
    )
    assert tested["ok"] is False and tested["error"] == "no complete reading within 1 s", tested
    assert tested["screenshot"] == {"error": "no screenshot: the page did not load"}

    # The collection job reads the HTML endpoints too (taking turns on the step's browser context).
    result = await arun_job(
        MODULE,
        "collect",
        module_config=CONFIG,
        memory=services,
        allow_private="loopback",
        services={"browser": browser},
    )
    assert result.status == "COMPLETED", result.error
    assert (result.result["read"], result.result["failed"]) == (1, 2), result.result
    [point] = services.series.written("power")
    assert point.values["total_kwh"] > 1235.0 and point.values["current_a"] == 9.332  # read after the tests above
    assert PASSWORD not in json.dumps(result.logs)
