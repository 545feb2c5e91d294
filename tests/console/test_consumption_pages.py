"""The consumption monitor's pages in real Chromium: drawn by the console from the module's manifest
``ui`` section (no module JavaScript), bound to its routes and its series. The module runs on a real
worker against the meter simulator; a viewer sees Live (cards with kW, kWh, V, A and status),
Endpoints and History but no Reports, no forms and no actions; an operator tests an endpoint, adds
one through the generated form, sees an overload open an incident and its end resolve it, and
downloads the monthly CSV. Accessible (axe) and text-only."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import expect

from tests.conftest import eventually
from tests.console.conftest import DESKTOP, axe_violations, bearer, no_script_ran, shoot, sign_in
from tests.consumption.helpers import KEY, MODULE, json_endpoint
from tests.routes.route_helpers import MODULES, deploy

BASE = "/api/v1/m/consumption-monitor"


def sim_token() -> str:
    from consumption_monitor.simulator import TOKEN

    return str(TOKEN)


PAGES = "/m/consumption-monitor"


async def _collect(http: httpx.AsyncClient, job_id: str, **override: Any) -> dict[str, Any]:
    body = {"config": override} if override else None
    r = await http.post(f"/api/v1/jobs/{job_id}/execute", params={"wait": "true"}, json=body)
    assert r.status_code in (200, 201), r.text
    execution: dict[str, Any] = r.json()
    assert execution["status"] == "COMPLETED", execution
    return execution


async def _set_up(http: httpx.AsyncClient, sim: Any) -> tuple[list[str], str]:
    await deploy(http, {}, MODULE)
    r = await http.put(
        f"{MODULES}/consumption-monitor/config", json={"config": {"credentials_key": KEY, "failure_threshold": 1}}
    )
    assert r.status_code == 200, r.text
    bodies = [
        json_endpoint(f"{sim.url}/bearer/rack-a.json", auth={"type": "bearer"}, credentials={"token": sim_token()})
        | {"power_threshold_w": 3000},
        {
            **json_endpoint(f"{sim.url}/open/rack-b/metrics", name="rack B", client="beta"),
            "protocol": "prometheus",
            "fields": {
                "total_kwh": {"metric": "pdu_energy_kwh_total", "labels": {"outlet": "1"}},
                "power_w": {"metric": "pdu_power_watts"},
            },
        },
        json_endpoint(f"{sim.url}/open/broken.json", name="broken meter"),
    ]  # fmt: skip
    ids = []
    for body in bodies:
        r = await http.post(f"{BASE}/endpoints", json=body)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    r = await http.get("/api/v1/jobs", params={"module": "consumption-monitor"})
    [job] = [j for j in r.json()["items"] if j["job_type"] == "collect"]
    return ids, job["id"]


async def test_consumption_monitor_pages(stack: str, page: Any, browser: Any, users: Any, tmp_path: Path) -> None:
    # Imported here: tests.consumption.helpers (imported above) puts the module's folder on sys.path.
    from consumption_monitor.simulator import TOKEN, Simulator

    admin, operator, viewer = await users("admin"), await users("operator"), await users("viewer")
    async with (
        Simulator() as sim,
        httpx.AsyncClient(base_url=stack, headers=await bearer(stack, admin.email), timeout=120) as http,
    ):
        ids, job_id = await _set_up(http, sim)
        result = (await _collect(http, job_id))["result"]
        assert (result["read"], result["failed"]) == (2, 1), result

        # A viewer: the module's pages in the navigation, Live first.
        await sign_in(page, stack, viewer.email, PAGES)
        main = page.get_by_role("navigation", name="Main")
        await expect(main.get_by_role("link", name="Consumption monitor")).to_be_visible()
        await expect(page).to_have_url(f"{stack}{PAGES}/live")
        await expect(page.get_by_role("heading", name="Live", exact=True)).to_be_visible()
        tabs = page.get_by_role("navigation", name="Pages of consumption-monitor")
        assert await tabs.get_by_role("link").all_inner_texts() == ["Live", "Endpoints", "History"]
        rack_a = page.get_by_role("listitem", name="rack A")
        await expect(rack_a).to_contain_text("2.15 kW")
        await expect(rack_a).to_contain_text("230.4 V")
        await expect(rack_a.locator(".badge")).to_have_text("online")
        broken = page.get_by_role("listitem", name="broken meter")
        await expect(broken.locator(".badge")).to_have_text("error")
        await expect(broken).to_contain_text("answered 500")
        await expect(page.get_by_role("region", name="Power now")).to_contain_text("2.79 kW")
        await expect(page.get_by_role("region", name="Online")).to_contain_text("2")
        await expect(page.get_by_role("region", name="Power, last 6 hours (W)").get_by_role("img")).to_have_attribute(
            "aria-label", "Power, last 6 hours (W): 2 line(s), 2 point(s)"
        )
        assert await axe_violations(page) == []
        await shoot(page, "consumption-live")

        # Its incidents and the rules it ships, one click away (the markdown panel's links).
        await page.get_by_role("link", name="Alert rules").click()
        await expect(page.get_by_role("heading", name="Alert rules of consumption-monitor")).to_be_visible()
        await expect(page.get_by_role("row").filter(has_text="from module consumption-monitor")).to_have_count(3)
        await page.go_back()

        # Endpoints: the table with health, but neither the form nor the actions for a viewer.
        await tabs.get_by_role("link", name="Endpoints").click()
        table = page.get_by_role("region", name="Endpoints").get_by_role("table")
        await expect(table.get_by_role("row")).to_have_count(4)
        await expect(table.get_by_role("row", name="rack A")).to_contain_text("online")
        assert await table.get_by_role("button").count() == 0
        await expect(page.get_by_role("region", name="Add an endpoint")).to_contain_text(
            "Your role may not use this form"
        )

        # History: the endpoint picker (first endpoint chosen), a chart and the readings.
        await tabs.get_by_role("link", name="History").click()
        # The tab's page first: until it is drawn, "Endpoint" also labels the Endpoints page's panels.
        await expect(page.get_by_role("heading", name="History", exact=True)).to_be_visible()
        endpoint = page.get_by_label("Endpoint", exact=True)
        await expect(endpoint).not_to_have_value("")
        await endpoint.select_option(label="rack A")
        await expect(page).to_have_url(f"{stack}{PAGES}/history?endpoint={ids[0]}")
        readings = page.get_by_role("region", name="Readings").get_by_role("table")
        await expect(readings.get_by_role("row")).to_have_count(2)
        await expect(readings).to_contain_text("2,150.0")
        await expect(page.get_by_role("region", name="Power (W)").get_by_role("img")).to_have_attribute(
            "aria-label", "Power (W): 1 line(s), 1 point(s)"
        )
        await page.goto(f"{stack}{PAGES}/reports")
        await expect(page.get_by_role("alert")).to_contain_text("no page 'reports'")
        await no_script_ran(page)

        # An operator: Test, the form, an overload and its incident, the monthly CSV.
        context = await browser.new_context(viewport=DESKTOP, accept_downloads=True)
        try:
            op = await context.new_page()
            op.errors = []
            op.on("pageerror", lambda exc: op.errors.append(str(exc)))
            await sign_in(op, stack, operator.email, f"{PAGES}/endpoints")
            await op.get_by_role("button", name="Test rack A").click()
            outcome = op.get_by_role("status").filter(has_text="Test: rack A")
            await expect(outcome).to_contain_text('"power_w": 2150')
            assert TOKEN not in await op.content()

            form = op.get_by_role("region", name="Add an endpoint")
            await expect(form.locator("#form-POST-endpoints_credentials_password")).to_have_attribute(
                "type", "password"
            )
            await form.locator("#form-POST-endpoints_name").fill("plug C")
            await form.locator("#form-POST-endpoints_url").fill(f"{sim.url}/open/plug-c.json")
            await form.locator("#form-POST-endpoints_fields_total_kwh_path").fill("$.meter.energy.total_kwh")
            await form.get_by_role("button", name="Add endpoint").click()
            await expect(form.get_by_role("status")).to_contain_text("Done.")
            table = op.get_by_role("region", name="Endpoints").get_by_role("table")
            await expect(table.get_by_role("row", name="plug C")).to_contain_text("pending")

            # A refused body shows the module's message.
            await form.locator("#form-POST-endpoints_name").fill("no url")
            await form.locator("#form-POST-endpoints_url").fill("ftp://x")
            await form.locator("#form-POST-endpoints_fields_total_kwh_path").fill("$.a")
            await form.get_by_role("button", name="Add endpoint").click()
            await expect(form.get_by_role("alert").first).to_contain_text("url")

            # Edit opens a form with the row's values and saves through PATCH; Disable / Enable toggle.
            await table.get_by_role("button", name="Edit rack B").click()
            dialog = op.get_by_role("dialog", name="Edit: rack B")
            await expect(dialog.locator("#edit-PATCH-endpoints-endpoint_id_name")).to_have_value("rack B")
            await expect(dialog.locator("#edit-PATCH-endpoints-endpoint_id_credentials_token")).to_have_value("")
            await dialog.locator("#edit-PATCH-endpoints-endpoint_id_location").fill("DC2 / row 1")
            await dialog.get_by_role("button", name="Save").click()
            await expect(dialog).to_be_hidden()
            await expect(table.get_by_role("row", name="rack B")).to_contain_text("DC2 / row 1")
            broken_row = table.get_by_role("row", name="broken meter")
            await broken_row.get_by_role("button", name="Disable broken meter").click()
            await expect(broken_row).to_contain_text("disabled")
            await broken_row.get_by_role("button", name="Enable broken meter").click()
            await expect(broken_row.get_by_role("button", name="Disable broken meter")).to_be_visible()
            r = await http.get(f"{BASE}/endpoints/{ids[1]}")
            assert r.json()["location"] == "DC2 / row 1" and r.json()["protocol"] == "prometheus", r.text

            # Overload: rack A above its 3 kW limit opens a critical incident; back under, it resolves.
            async with httpx.AsyncClient(base_url=sim.url) as meters:
                assert (await meters.post("/control/rack-a", json={"power_w": 4200})).status_code == 200
            await _collect(http, job_id, read_all=True)
            await op.goto(f"{stack}{PAGES}/live")
            await expect(op.get_by_role("listitem", name="rack A")).to_contain_text("4.20 kW")
            # The banner every page shows for a firing critical incident (the module's rule "power
            # above 3 kW" may fire one more once its window holds two evaluations).
            await expect(op.get_by_role("alert").filter(has_text="firing")).to_contain_text("critical")

            async def incident(status: str) -> list[dict[str, Any]]:
                r = await http.get("/api/v1/alerts/incidents", params={"label": f"endpoint:{ids[0]}"})
                return [i for i in r.json()["items"] if i["status"] == status and i["rule_id"] is None]

            [opened] = await eventually(lambda: incident("firing"), what="the overload incident")
            assert opened["title"] == "Meter rack A draws 4200 W (limit 3000 W)", opened
            await op.goto(f"{stack}/alerts/incidents/{opened['id']}")
            await expect(op.get_by_role("main")).to_contain_text("Meter rack A draws 4200 W")
            async with httpx.AsyncClient(base_url=sim.url) as meters:
                assert (await meters.post("/control/rack-a", json={"power_w": 2000})).status_code == 200
            await _collect(http, job_id, read_all=True)
            [resolved] = await eventually(lambda: incident("resolved"), what="the overload incident to resolve")
            assert resolved["id"] == opened["id"]
            await op.goto(f"{stack}/alerts/incidents/{opened['id']}")
            await expect(op.get_by_role("main")).to_contain_text("resolved")

            # Reports: this month's table and its CSV.
            month = datetime.now(UTC).strftime("%Y-%m")
            await op.goto(f"{stack}{PAGES}/reports?month={month}")
            rows = op.get_by_role("region", name="Per endpoint").get_by_role("table").get_by_role("row")
            await expect(rows.filter(has_text="rack A")).to_have_count(1)
            async with op.expect_download() as info:
                await op.get_by_role("button", name="Download CSV per endpoint").click()
            download = await info.value
            assert download.suggested_filename.endswith(".csv"), download.suggested_filename
            saved = tmp_path / "report.csv"
            await download.save_as(saved)
            lines = saved.read_text().splitlines()
            assert lines[0] == "month,client,endpoint_id,endpoint,location,kwh,readings,peak_power_w", lines
            assert any(",rack A," in line for line in lines[1:]), lines
            assert await axe_violations(op) == []
            await shoot(op, "consumption-reports")
            assert op.errors == [], op.errors
        finally:
            await context.close()
